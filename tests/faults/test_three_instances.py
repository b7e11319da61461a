"""Three gateway instances on one Redis and one Postgres, as deploy/compose.yml runs them
(DESIGN.md, "Scale-out"): a key disabled through one is refused by the other two on their
very next request; 300 concurrent requests spread over the three on one key keep the
overspend bound of "Limits" in both enforcement modes; and every admitted request is in the
ledger exactly once, its sum equal to the Redis counters."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest
import redis.asyncio as redis

from spendgate.enforcement.money import format_usd
from tests.faults.conftest import (
    MOCK_COST,
    assert_within_the_bound,
    chat,
    spend_state,
    until_answered,
)
from tests.helpers import call
from tests.proxy.conftest import Gateway, GatewayFactory, ledger

INSTANCES = 3
REQUESTS = 300
SPENT_BEFORE = 30  # requests that nearly spent the key before the burst
ROOM = 20 * MOCK_COST + MOCK_COST // 2  # what the burst may still spend


async def instances(make_gateway: GatewayFactory, **changes: object) -> list[Gateway]:
    return [await make_gateway(**changes) for _ in range(INSTANCES)]


async def ledger_ids(db: asyncpg.Connection, key_id: str) -> list[str]:
    rows = await db.fetch("SELECT request_id FROM usage_events WHERE key_id = $1", key_id)
    return [row["request_id"] for row in rows]


async def test_a_disable_through_one_instance_is_refused_by_the_others_at_once(
    make_gateway: GatewayFactory,
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    gateways = await instances(make_gateway)
    key = await gateways[0].key()
    answered = []
    for gateway in gateways:  # every instance has the key in its process cache now
        status, headers, _ = await chat(gateway, key["key"], max_tokens=16)
        assert status == 200
        answered.append(headers["x-request-id"])

    await call(gateways[0].admin, "PATCH", f"/keys/{key['id']}", {"status": "inactive"})
    for gateway in gateways:  # no wait: the status lives in Redis, checked at admission
        status, _, answer = await chat(gateway, key["key"], max_tokens=16)
        assert status == 401 and answer["error"]["code"] == "api_key_disabled"
    state = await spend_state(raw_redis, redis_prefix, key["id"])
    assert state.reserved == 0 and state.reservations == {}  # refused: nothing held

    await call(gateways[2].admin, "PATCH", f"/keys/{key['id']}", {"status": "active"})
    for gateway in gateways:
        status, headers, _ = await chat(gateway, key["key"], max_tokens=16)
        assert status == 200
        answered.append(headers["x-request-id"])
    await ledger(db, key["id"], len(answered))
    await asyncio.sleep(0.3)  # a writer round: the refused calls must have written nothing
    assert sorted(await ledger_ids(db, key["id"])) == sorted(answered)


@pytest.mark.parametrize("mode", ["reserve", "hard"])
async def test_three_hundred_requests_across_three_instances_hold_the_limit(
    make_gateway: GatewayFactory,
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
    redis_prefix: str,
    mode: str,
) -> None:
    # A few milliseconds per answer keep requests in flight in every instance at once.
    gateways = await instances(make_gateway, enforcement=mode, mock_latency_ms=5)
    limit = SPENT_BEFORE * MOCK_COST + ROOM
    key = await gateways[0].key(usage_limit=format_usd(limit))
    admitted: list[str] = []
    for i in range(SPENT_BEFORE):  # every instance knows the key by now
        status, headers, _ = await chat(gateways[i % INSTANCES], key["key"], max_tokens=16)
        assert status == 200
        admitted.append(headers["x-request-id"])

    outcomes = await asyncio.gather(
        *(until_answered(gateways[i % INSTANCES], key["key"]) for i in range(REQUESTS))
    )
    served = Counter(i % INSTANCES for i, (request_id, _) in enumerate(outcomes) if request_id)
    assert len(served) == INSTANCES, served  # every instance spent from the key
    # Requests did contend: some were told to come back while reservations (their own
    # instance's or another's) held the rest of the budget.
    assert sum(retries for _, retries in outcomes) > 0
    admitted += [request_id for request_id, _ in outcomes if request_id]
    assert len(set(admitted)) == len(admitted)

    await ledger(db, key["id"], len(admitted))
    await asyncio.sleep(0.3)  # a writer round: nothing more may arrive
    rows = await db.fetch(
        "SELECT request_id, cost_nano FROM usage_events WHERE key_id = $1", key["id"]
    )
    # Each admitted request once, written by whichever instance's writer read it.
    assert sorted(r["request_id"] for r in rows) == sorted(admitted)
    costs = [r["cost_nano"] for r in rows]
    assert_within_the_bound(mode, costs, limit)

    state = await spend_state(raw_redis, redis_prefix, key["id"])
    assert state.used == sum(costs)  # the counter the next admission reads
    assert state.reserved == 0 and state.reservations == {}  # every call settled
    for gateway in gateways:  # every instance reads the same counters
        assert (await gateway.get_key(key["id"]))["usage"] == format_usd(sum(costs))
