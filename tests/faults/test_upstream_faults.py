"""Cancellation on the proxy path, beyond tests/proxy/test_proxy_errors.py: clients that
give up at random points never leave a reservation behind, and the key is charged for no
more than the provider produced (DESIGN.md, "The request path" step 6: settle in a
`finally`, on cancellations too)."""

from __future__ import annotations

import asyncio
import random
from contextlib import suppress

import asyncpg
import redis.asyncio as redis

from spendgate.enforcement.money import format_usd
from tests.faults.conftest import FAKE_COST, HI, spend_state, usage_stream, wait_until
from tests.proxy.conftest import FakeGatewayFactory, Gateway

WAVES = 10
WAVE = 20  # clients at once
GIVE_UP_WITHIN = 0.15  # seconds; with 20 at once a call takes ~30 ms, a stream ~110 ms


async def client(gateway: Gateway, token: str, stream: bool) -> int:
    response = await gateway.admin.post(
        "/v1/chat/completions",
        json={"model": "fake/m1", "messages": HI, "stream": stream},
        headers={"Authorization": f"Bearer {token}"},
    )
    await response.read()
    return response.status


async def test_clients_cancelled_at_random_points_leak_no_reservation(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    # The test server cancels a handler whose client left, wherever it is: reading the
    # body, in admission, waiting for the provider, relaying, settling.
    fake, gateway = await via_fake(disconnect_grace=0.2)
    fake.mode, fake.delay = "slow_stream", 0.01
    key = await gateway.key(usage_limit="1")
    rng = random.Random(20261126)
    loop = asyncio.get_running_loop()
    finished = 0
    for _ in range(WAVES):
        wave = [
            asyncio.create_task(client(gateway, key["key"], stream=i % 2 == 0)) for i in range(WAVE)
        ]
        for task in wave:
            loop.call_later(rng.uniform(0, GIVE_UP_WITHIN), task.cancel)
        for task in wave:
            with suppress(asyncio.CancelledError):
                assert await task == 200
                finished += 1
    assert 0 < finished < WAVES * WAVE  # some ran to the end, most were cut somewhere

    # Every settle (inline, deferred, or after reading an abandoned stream for its usage)
    # has run once the streams and the grace are over.
    async def no_reservations() -> bool:
        state = await spend_state(raw_redis, redis_prefix, key["id"])
        return not state.reservations

    with suppress(TimeoutError):
        await wait_until(no_reservations, timeout=3)

    async def ledger_written() -> bool:
        return await raw_redis.xlen(usage_stream(redis_prefix, key["id"])) == 0

    await wait_until(ledger_written)
    rows = await db.fetch(
        "SELECT request_id, cost_nano, status FROM usage_events WHERE key_id = $1", key["id"]
    )
    assert len({r["request_id"] for r in rows}) == len(rows) >= finished
    # No more than the provider produced: at most its reported usage per call, and
    # nothing for a call that never reached it.
    assert all(0 <= r["cost_nano"] <= FAKE_COST for r in rows)
    assert sum(1 for r in rows if r["cost_nano"] > 0) <= len(fake.requests)
    charged = sum(r["cost_nano"] for r in rows)
    assert (await gateway.get_key(key["id"]))["usage"] == format_usd(charged)

    # Nothing is held for calls that are over: a leaked reservation would keep budget
    # (8.2 milli-USD each here: no output cap) from the key for 10 minutes.
    state = await spend_state(raw_redis, redis_prefix, key["id"])
    assert state.used == charged
    assert state.reservations == {}, f"{len(state.reservations)} reservations leaked"
    assert (state.reserved, state.expiries) == (0, 0)
