"""The hot path's Redis budget, and Redis losing its scripts or its data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest
import redis.asyncio as redis
from openai.types.chat import ChatCompletionMessageParam

from spendgate.enforcement.money import format_usd
from spendgate.storage.embedded import start_valkey
from tests.proxy.conftest import GatewayFactory, ledger

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
COST = 1 * 1000 + 16 * 2000


async def command_counts(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = await client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A Redis of this test's own, which it may flush."""
    import asyncio

    server = await asyncio.to_thread(start_valkey, tmp_path / "valkey")
    yield server.url
    await asyncio.to_thread(server.stop)


async def test_a_warm_request_costs_two_redis_calls_and_no_lookup(
    make_gateway: GatewayFactory, private_redis: str
) -> None:
    gateway = await make_gateway(redis_url=private_redis)
    key = await gateway.key()
    sdk = gateway.sdk(key["key"])
    await sdk.chat.completions.create(model="mock/echo-1", messages=HI)  # warms the cache
    observer = redis.Redis.from_url(private_redis)
    before = await command_counts(observer)
    for _ in range(5):
        await sdk.chat.completions.create(model="mock/echo-1", messages=HI)
    after = await command_counts(observer)
    await observer.aclose()
    spent = {
        name: after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0)
    }
    # Admission + settle per request (commandstats also counts the commands the scripts
    # run: one HMGET each); no token lookup (GET) and no record read outside them.
    assert spent["cmdstat_evalsha"] == 10
    assert spent["cmdstat_hmget"] == 10
    assert not {"cmdstat_get", "cmdstat_hgetall", "cmdstat_eval"} & set(spent)


async def test_scripts_flushed_from_redis_are_loaded_again(
    make_gateway: GatewayFactory, private_redis: str
) -> None:
    gateway = await make_gateway(redis_url=private_redis)
    key = await gateway.key(usage_limit="1")
    sdk = gateway.sdk(key["key"])
    await sdk.chat.completions.create(model="mock/echo-1", messages=HI)
    observer = redis.Redis.from_url(private_redis)
    await observer.script_flush()
    await observer.aclose()
    await sdk.chat.completions.create(model="mock/echo-1", messages=HI)  # NOSCRIPT handled
    assert (await gateway.get_key(key["id"]))["usage"] == format_usd(2 * COST)


async def test_redis_restarted_empty_rebuilds_keys_and_counters_from_postgres(
    make_gateway: GatewayFactory, private_redis: str, db: asyncpg.Connection
) -> None:
    gateway = await make_gateway(redis_url=private_redis)
    key = await gateway.key(
        usage_limit=format_usd(3 * COST),
        recurring_limit={"amount": "1", "every": 1, "unit": "day"},
    )
    sdk = gateway.sdk(key["key"])
    for _ in range(2):
        await sdk.chat.completions.create(model="mock/echo-1", messages=HI)
    await ledger(db, key["id"], 2)  # written to Postgres before Redis loses everything
    observer = redis.Redis.from_url(private_redis)
    await observer.flushall()
    await observer.aclose()

    # This process still caches the key; the admission finds no record and rebuilds it.
    await sdk.chat.completions.create(model="mock/echo-1", messages=HI)
    got = await gateway.get_key(key["id"])
    assert got["usage"] == format_usd(3 * COST)
    assert got["current_period"]["usage"] == format_usd(3 * COST)
    with pytest.raises(openai.RateLimitError):  # the rebuilt counters still enforce
        await sdk.chat.completions.create(model="mock/echo-1", messages=HI)

    # A second replica that never saw the key finds it through Postgres.
    other = await make_gateway(redis_url=private_redis)
    with pytest.raises(openai.RateLimitError):
        await other.sdk(key["key"]).chat.completions.create(model="mock/echo-1", messages=HI)


async def test_stopping_the_app_writes_the_ledger_first(
    make_gateway: GatewayFactory, db: asyncpg.Connection
) -> None:
    gateway = await make_gateway()
    key = await gateway.key()
    sdk = gateway.sdk(key["key"])
    for _ in range(5):
        await sdk.chat.completions.create(model="mock/echo-1", messages=HI)
    await gateway.close()  # graceful shutdown: the writer drains before the app stops
    count = await db.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", key["id"])
    assert count == 5
