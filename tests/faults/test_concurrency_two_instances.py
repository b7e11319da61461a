"""500 concurrent requests on a nearly spent key, shared by two gateway instances on the
same Redis and Postgres: the limit holds across replicas, in both enforcement modes, and
the ledger matches the counters (DESIGN.md, "Limits" and "Scale-out")."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest

from spendgate.enforcement.money import format_usd
from tests.faults.conftest import MOCK_COST, assert_within_the_bound, chat, until_answered
from tests.proxy.conftest import GatewayFactory, ledger

REQUESTS = 500
SPENT_BEFORE = 30  # requests that nearly spent the key before the burst
ROOM = 20 * MOCK_COST + MOCK_COST // 2  # what the burst may still spend


@pytest.mark.parametrize("mode", ["reserve", "hard"])
async def test_five_hundred_requests_across_two_instances_hold_the_limit(
    make_gateway: GatewayFactory, db: asyncpg.Connection, mode: str
) -> None:
    # A few milliseconds per answer keep requests in flight in both instances at once.
    first = await make_gateway(enforcement=mode, mock_latency_ms=5)
    second = await make_gateway(enforcement=mode, mock_latency_ms=5)
    gateways = [first, second]
    limit = SPENT_BEFORE * MOCK_COST + ROOM
    key = await first.key(usage_limit=format_usd(limit))
    for i in range(SPENT_BEFORE):  # both instances know the key by now
        assert (await chat(gateways[i % 2], key["key"], max_tokens=16))[0] == 200

    outcomes = await asyncio.gather(
        *(until_answered(gateways[i % 2], key["key"]) for i in range(REQUESTS))
    )
    served = Counter(i % 2 for i, (request_id, _) in enumerate(outcomes) if request_id)
    assert served[0] > 0 and served[1] > 0, served  # both instances spent from the key
    # Requests did contend: some were told to come back while others' reservations
    # (possibly the other instance's) held the rest of the budget.
    assert sum(retries for _, retries in outcomes) > 0

    total = SPENT_BEFORE + served.total()
    rows = await ledger(db, key["id"], total)
    await asyncio.sleep(0.3)  # a writer round: nothing more may arrive
    rows = await db.fetch(
        "SELECT request_id, cost_nano FROM usage_events WHERE key_id = $1", key["id"]
    )
    assert len(rows) == total == len({r["request_id"] for r in rows})  # each exactly once
    charged = sum(r["cost_nano"] for r in rows)
    assert_within_the_bound(mode, [r["cost_nano"] for r in rows], limit)
    for gateway in gateways:  # both instances read the same counters, equal to the ledger
        assert (await gateway.get_key(key["id"]))["usage"] == format_usd(charged)
