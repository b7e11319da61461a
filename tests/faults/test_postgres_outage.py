"""Postgres cut under steady traffic: requests keep flowing, the ledger waits in the Redis
streams and catches up exactly once, admin writes answer 503 (DESIGN.md, "Failure
behaviour")."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import openai
import redis.asyncio as redis
from openai.types.chat import ChatCompletionMessageParam

from spendgate.enforcement.money import format_usd
from tests.faults.conftest import MOCK_COST, spend_state, usage_stream, wait_until
from tests.helpers import TcpLink
from tests.proxy.conftest import Gateway, GatewayFactory, ledger

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
REQUESTS_WHILE_CUT = 40


async def ask(sdk: openai.AsyncOpenAI, stream: bool) -> None:
    if stream:
        chunks = await sdk.chat.completions.create(
            model="mock/echo-1", messages=HI, max_tokens=16, stream=True
        )
        async for _ in chunks:
            pass
    else:
        answer = await sdk.chat.completions.create(model="mock/echo-1", messages=HI, max_tokens=16)
        assert answer.usage is not None and answer.usage.completion_tokens == 16


async def admin_status(gateway: Gateway, method: str, path: str, body: Any) -> tuple[int, str]:
    response = await gateway.admin.request(method, "/admin/v1" + path, json=body)
    answer = await response.json()
    return response.status, answer["error"]["code"] if "error" in answer else ""


async def admin_get(gateway: Gateway, path: str) -> Any:
    """GET once the gateway's pool has replaced the connections the cut broke."""
    for _ in range(20):
        response = await gateway.admin.get("/admin/v1" + path)
        if response.status != 503:
            break
        await asyncio.sleep(0.05)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_requests_flow_while_postgres_is_cut_and_the_ledger_catches_up_once(
    make_gateway: GatewayFactory,
    postgres_link: tuple[TcpLink, str],
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    link, dsn = postgres_link
    gateway = await make_gateway(database_url=dsn)
    key = await gateway.key(usage_limit="1")
    sdk = gateway.sdk(key["key"])
    await ask(sdk, stream=False)

    async def stream_drained() -> bool:
        return await raw_redis.xlen(usage_stream(redis_prefix, key["id"])) == 0

    await ledger(db, key["id"], 1)
    await wait_until(stream_drained)

    await link.cut()
    # Steady traffic: one request after the other, every fourth a stream. The test's own
    # connection (`db`) does not go through the link, so it sees what the gateway wrote.
    outcomes = []
    for i in range(REQUESTS_WHILE_CUT):
        try:
            await ask(sdk, stream=i % 4 == 3)
            outcomes.append("ok")
        except openai.APIError as exc:
            outcomes.append(repr(exc))
    assert outcomes == ["ok"] * REQUESTS_WHILE_CUT
    # Settled in Redis at once, waiting in the stream for Postgres.
    state = await spend_state(raw_redis, redis_prefix, key["id"])
    assert (state.used, state.reserved) == ((1 + REQUESTS_WHILE_CUT) * MOCK_COST, 0)
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 1
    assert await raw_redis.xlen(usage_stream(redis_prefix, key["id"])) == REQUESTS_WHILE_CUT

    # Admin writes need Postgres: 503 storage_unavailable, and nothing half-done.
    writes = [
        ("POST", "/projects", {"name": "p2"}),
        ("POST", f"/projects/{key['project_id']}/keys", {"name": "k2"}),
        ("PATCH", f"/keys/{key['id']}", {"usage_limit": "2"}),
        ("DELETE", f"/keys/{key['id']}", None),
    ]
    for method, path, body in writes:
        assert await admin_status(gateway, method, path, body) == (503, "storage_unavailable")

    await link.restore()
    await ask(sdk, stream=False)  # the key was neither changed nor deleted
    total = 1 + REQUESTS_WHILE_CUT + 1
    await ledger(db, key["id"], total)
    await wait_until(stream_drained)
    await asyncio.sleep(0.3)  # a writer round or more: no late duplicate may follow
    rows = await db.fetch(
        "SELECT request_id, cost_nano FROM usage_events WHERE key_id = $1", key["id"]
    )
    assert len(rows) == total == len({r["request_id"] for r in rows})  # each exactly once
    charged = sum(r["cost_nano"] for r in rows)
    assert charged == total * MOCK_COST
    assert await db.fetchval("SELECT count(*) FROM projects") == 1  # no "p2"
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 1  # no "k2"

    got = await admin_get(gateway, f"/keys/{key['id']}")
    assert got["usage"] == format_usd(charged)
    assert got["usage_limit"] == "1"  # the PATCH while cut changed nothing
    assert got["status"] == "active"  # nor did the DELETE
