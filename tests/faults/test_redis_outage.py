"""Redis stopped under traffic: the gateway fails closed at once (503
enforcement_unavailable, nothing forwarded), and resumes by itself when the same server
comes back with its data (DESIGN.md, "Failure behaviour")."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import redis.asyncio as redis

from spendgate.enforcement.money import format_usd
from tests.faults.conftest import FAKE_COST, RedisServer, chat, spend_state
from tests.proxy.conftest import FakeGatewayFactory, Gateway, ledger

# DESIGN.md: "fail closed". The gateway's Redis client gives up a refused connect within
# 100 ms (storage/redis_client.py CONNECT_TIMEOUT); a stopped server refuses at once.
FAIL_FAST = 0.1
BURST = 40


async def timed(gateway: Gateway, token: str, **body: Any) -> tuple[float, int, str]:
    """Wall time of one round trip through the gateway's test client, status, error code."""
    started = time.monotonic()
    status, _, answer = await chat(gateway, token, model="fake/m1", **body)
    elapsed = time.monotonic() - started
    return elapsed, status, answer["error"]["code"] if status != 200 else ""


async def test_redis_stopped_fails_closed_fast_and_restarted_resumes_with_its_counters(
    via_fake: FakeGatewayFactory,
    redis_server: RedisServer,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    fake, gateway = await via_fake(redis_url=redis_server.url)
    warm = await gateway.key(usage_limit="1")
    cold = await gateway.key(usage_limit="1")  # never used before the outage: not cached
    for _ in range(3):
        assert (await timed(gateway, warm["key"], max_tokens=16))[1] == 200
    await ledger(db, warm["id"], 3)
    forwarded = len(fake.requests)

    await redis_server.stop()
    attempts = []
    for i in range(10):
        attempts.append(await timed(gateway, warm["key"], max_tokens=16, stream=i % 2 == 1))
    attempts.append(await timed(gateway, cold["key"], max_tokens=16))  # the token lookup
    assert [(status, code) for _, status, code in attempts] == [
        (503, "enforcement_unavailable")
    ] * len(attempts)
    slowest = max(elapsed for elapsed, _, _ in attempts)
    assert slowest < FAIL_FAST, f"a refusal took {slowest * 1000:.0f} ms"
    assert len(fake.requests) == forwarded  # nothing went upstream

    await redis_server.start()  # same port, same data directory: the AOF brings all back
    async with asyncio.timeout(10):
        while (await timed(gateway, warm["key"], max_tokens=16))[1] != 200:
            await asyncio.sleep(0.05)
    # Resumed: what comes now is served, however much comes at once. A burst takes many of
    # the Redis pool's connections, not only the one the probe above opened again.
    after = await asyncio.gather(
        *(timed(gateway, warm["key"], max_tokens=16) for _ in range(BURST)),
        timed(gateway, cold["key"], max_tokens=16),
    )
    assert {(status, code) for _, status, code in after} <= {
        (200, ""),
        (503, "enforcement_unavailable"),
    }
    warm_served = 1 + sum(status == 200 for _, status, _ in after[:-1])
    cold_served = int(after[-1][1] == 200)
    assert len(fake.requests) == forwarded + warm_served + cold_served  # 503s go nowhere

    # The counters survived the restart and match the ledger.
    charged = (3 + warm_served) * FAKE_COST
    rows = await ledger(db, warm["id"], 3 + warm_served)
    assert [r["cost_nano"] for r in rows] == [FAKE_COST] * (3 + warm_served)
    assert (await gateway.get_key(warm["id"]))["usage"] == format_usd(charged)
    await ledger(db, cold["id"], cold_served)
    assert (await gateway.get_key(cold["id"]))["usage"] == format_usd(cold_served * FAKE_COST)
    # No reservation of a refused request was left behind.
    observer = redis.Redis.from_url(redis_server.url)
    state = await spend_state(observer, redis_prefix, warm["id"])
    await observer.aclose()
    assert (state.used, state.reserved, state.reservations) == (charged, 0, {})

    refused = [status for _, status, _ in after].count(503)
    assert refused == 0, f"{refused} of {len(after)} requests after the recovery answered 503"
