"""The gateway on a master that Redis Sentinel names (a master, a replica and one Sentinel on
loopback, each with a password): it finds the master through Sentinel, and after a failover
it keeps enforcing on the new master: counters carried over, the ledger complete, a disable
refused at once, the limit held."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from spendgate.enforcement.keys import bucket_of
from spendgate.enforcement.money import format_usd
from tests.cluster.servers import SentinelDeployment
from tests.faults.conftest import (
    BUCKETS,
    MOCK_COST,
    assert_within_the_bound,
    chat,
    until_answered,
)
from tests.helpers import call
from tests.proxy.conftest import Gateway, GatewayFactory, ledger


@pytest.fixture
def on_sentinel(make_gateway: GatewayFactory, sentinel: SentinelDeployment) -> GatewayFactory:
    async def make(**changes: Any) -> Gateway:
        settings: dict[str, Any] = {
            "redis_mode": "sentinel",
            "redis_url": sentinel.url,
            "redis_sentinel_master": sentinel.NAME,
            "redis_sentinel_password": sentinel.sentinel_password,
        }
        return await make_gateway(**(settings | changes))

    return make


def used(sentinel: SentinelDeployment, prefix: str, key_id: str) -> int:
    """The key's settled usage as the current master holds it."""
    name = f"{prefix}:{{b{bucket_of(key_id, BUCKETS)}}}:key:{key_id}"
    value = sentinel.master.client.hget(name, "used")
    return int(value or 0)


async def test_the_gateway_follows_a_failover_and_keeps_enforcing(
    on_sentinel: GatewayFactory,
    sentinel: SentinelDeployment,
    db: asyncpg.Connection,
    redis_prefix: str,
) -> None:
    gateway = await on_sentinel(mock_latency_ms=5)
    limit = 20 * MOCK_COST + MOCK_COST // 2
    key = await gateway.key(usage_limit=format_usd(limit))
    for _ in range(3):
        assert (await chat(gateway, key["key"], max_tokens=16))[0] == 200
    assert used(sentinel, redis_prefix, key["id"]) == 3 * MOCK_COST

    old, new = await asyncio.to_thread(sentinel.failover)  # once the replica has it all

    for _ in range(3):  # admission and settle on the new master, through Sentinel
        assert (await chat(gateway, key["key"], max_tokens=16))[0] == 200
    assert sentinel.master is new and old.client.info("replication")["role"] == "slave"
    assert used(sentinel, redis_prefix, key["id"]) == 6 * MOCK_COST
    rows = await ledger(db, key["id"], 6)  # the ledger writer reads the new master's streams
    assert len({row["request_id"] for row in rows}) == 6

    # A disable is published on the new master and seen by the listener, which reconnected.
    await call(gateway.admin, "PATCH", f"/keys/{key['id']}", {"status": "inactive"})
    status, _, answer = await chat(gateway, key["key"], max_tokens=16)
    assert status == 401 and answer["error"]["code"] == "api_key_disabled"
    await call(gateway.admin, "PATCH", f"/keys/{key['id']}", {"status": "active"})

    # The rest of the budget, spent by concurrent requests: the limit holds.
    outcomes = await asyncio.gather(*(until_answered(gateway, key["key"]) for _ in range(60)))
    served = sum(1 for request_id, _ in outcomes if request_id is not None)
    rows = await ledger(db, key["id"], 6 + served)
    await asyncio.sleep(0.3)  # a writer round: nothing more may arrive
    rows = await db.fetch(
        "SELECT request_id, cost_nano FROM usage_events WHERE key_id = $1", key["id"]
    )
    assert len(rows) == 6 + served == len({row["request_id"] for row in rows})
    assert_within_the_bound("reserve", [row["cost_nano"] for row in rows], limit)
    charged = sum(row["cost_nano"] for row in rows)
    assert used(sentinel, redis_prefix, key["id"]) == charged
    assert (await gateway.get_key(key["id"]))["usage"] == format_usd(charged)


async def test_the_sentinels_own_password_is_needed_to_find_the_master(
    on_sentinel: GatewayFactory,
) -> None:
    refused = await on_sentinel(redis_sentinel_password="not-the-password")
    response = await refused.admin.get("/readyz")
    assert response.status == 503
    assert (await response.json())["failed"] == {"redis": "unreachable"}
    accepted = await on_sentinel()
    assert (await accepted.admin.get("/readyz")).status == 200
