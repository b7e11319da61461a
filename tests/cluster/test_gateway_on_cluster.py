"""The enforcement suite's core cases on a real three-master Redis Cluster (DESIGN.md,
"Scale-out"): API keys spread over every master, the all-time and recurring limits hold
under concurrent requests through two gateway instances, a disable is refused at once,
and the ledger holds every request exactly once, its sums equal to the counters on every
node."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from redis.crc import key_slot

from spendgate.enforcement.keys import bucket_of
from spendgate.enforcement.money import format_usd
from tests.cluster.servers import Cluster, Server
from tests.faults.conftest import (
    BUCKETS,
    MOCK_COST,
    assert_within_the_bound,
    chat,
    until_answered,
)
from tests.helpers import FakeClock, call
from tests.proxy.conftest import Gateway, GatewayFactory, ledger


@pytest.fixture
def on_cluster(make_gateway: GatewayFactory, cluster: Cluster) -> GatewayFactory:
    """A gateway instance whose Redis is the cluster, all of its nodes as seeds."""

    async def make(**changes: Any) -> Gateway:
        return await make_gateway(redis_mode="cluster", redis_url=cluster.urls, **changes)

    return make


def record_of(cluster: Cluster, prefix: str, key_id: str) -> tuple[Server, dict[bytes, bytes]]:
    """The master holding the key's record, and the record as that node has it."""
    name = f"{prefix}:{{b{bucket_of(key_id, BUCKETS)}}}:key:{key_id}"
    node = cluster.owner(key_slot(name.encode()))
    record: dict[bytes, bytes] = node.client.hgetall(name)  # type: ignore[assignment]
    return node, record


async def test_keys_spread_over_every_master_and_the_ledger_has_each_request_once(
    on_cluster: GatewayFactory, cluster: Cluster, db: asyncpg.Connection, redis_prefix: str
) -> None:
    gateways = [await on_cluster(), await on_cluster()]
    # Keys until their buckets cover the three masters (each has a third of the slots).
    keys: list[dict[str, Any]] = []
    nodes: dict[str, int] = {}
    while len(set(nodes.values())) < 3 or len(keys) < 6:
        assert len(keys) < 40
        key = await gateways[0].key()
        keys.append(key)
        assert (await chat(gateways[len(keys) % 2], key["key"], max_tokens=16))[0] == 200
        nodes[key["id"]] = record_of(cluster, redis_prefix, key["id"])[0].port

    requests = 4  # more per key, from both instances at once
    statuses = await asyncio.gather(
        *(chat(gateways[i % 2], key["key"], max_tokens=16) for key in keys for i in range(requests))
    )
    assert [status for status, _, _ in statuses] == [200] * (len(keys) * requests)

    for key in keys:
        rows = await ledger(db, key["id"], 1 + requests)
        assert len(rows) == 1 + requests == len({row["request_id"] for row in rows})
        charged = sum(row["cost_nano"] for row in rows)
        assert charged == (1 + requests) * MOCK_COST
        node, record = record_of(cluster, redis_prefix, key["id"])
        assert node.port == nodes[key["id"]]
        assert int(record[b"used"]) == charged  # the counter on its master = the ledger
        assert (await gateways[1].get_key(key["id"]))["usage"] == format_usd(charged)
    await asyncio.sleep(0.3)  # a writer round: nothing more may arrive
    total = await db.fetchval("SELECT count(*) FROM usage_events")
    assert total == len(keys) * (1 + requests)
    # Every bucket's stream was read to the end on every master (written events leave).
    for node in cluster.nodes:
        for stream in node.client.scan_iter(match=f"{redis_prefix}:*:usage", count=1000):
            assert node.client.xlen(stream) == 0
    for gateway in gateways:
        response = await gateway.admin.get("/readyz")
        assert response.status == 200, await response.text()


@pytest.mark.parametrize("mode", ["reserve", "hard"])
async def test_the_all_time_limit_holds_under_concurrent_requests_on_two_instances(
    on_cluster: GatewayFactory, db: asyncpg.Connection, mode: str
) -> None:
    gateways = [
        await on_cluster(enforcement=mode, mock_latency_ms=5),
        await on_cluster(enforcement=mode, mock_latency_ms=5),
    ]
    spent_before = 10
    limit = spent_before * MOCK_COST + 20 * MOCK_COST + MOCK_COST // 2
    key = await gateways[0].key(usage_limit=format_usd(limit))
    for i in range(spent_before):
        assert (await chat(gateways[i % 2], key["key"], max_tokens=16))[0] == 200

    outcomes = await asyncio.gather(
        *(until_answered(gateways[i % 2], key["key"]) for i in range(200))
    )
    served = [request_id for request_id, _ in outcomes if request_id is not None]
    assert sum(retries for _, retries in outcomes) > 0  # requests did contend

    rows = await ledger(db, key["id"], spent_before + len(served))
    await asyncio.sleep(0.3)
    rows = await db.fetch(
        "SELECT request_id, cost_nano FROM usage_events WHERE key_id = $1", key["id"]
    )
    assert len(rows) == spent_before + len(served) == len({r["request_id"] for r in rows})
    assert set(served) <= {r["request_id"] for r in rows}
    assert_within_the_bound(mode, [r["cost_nano"] for r in rows], limit)
    charged = sum(r["cost_nano"] for r in rows)
    for gateway in gateways:
        assert (await gateway.get_key(key["id"]))["usage"] == format_usd(charged)


async def test_a_recurring_limit_holds_under_concurrent_requests(
    on_cluster: GatewayFactory, db: asyncpg.Connection, clock: FakeClock
) -> None:
    gateway = await on_cluster(mock_latency_ms=5)
    amount = 10 * MOCK_COST + MOCK_COST // 2
    key = await gateway.key(
        recurring_limit={"amount": format_usd(amount), "every": 1, "unit": "hour"}
    )

    async def client() -> str:
        while True:
            status, headers, answer = await chat(gateway, key["key"], max_tokens=16)
            if status == 200:
                return "ok"
            assert status == 429 and answer["error"]["code"] == "period_usage_limit_exceeded"
            if headers["Retry-After"] != "1":
                return headers["Retry-After"]
            await asyncio.sleep(0.01)

    outcomes = Counter(await asyncio.gather(*(client() for _ in range(100))))
    # Every call costs MOCK_COST, under its estimate: the 11th starts under the amount.
    assert outcomes == {"ok": 11, str(60 * 60): 89}
    got = await gateway.get_key(key["id"])
    assert got["current_period"]["usage"] == format_usd(11 * MOCK_COST)
    rows = await ledger(db, key["id"], 11)
    assert sum(r["cost_nano"] for r in rows) == 11 * MOCK_COST

    clock.advance(timedelta(hours=1))  # the next window
    assert (await chat(gateway, key["key"], max_tokens=16))[0] == 200
    got = await gateway.get_key(key["id"])
    assert got["current_period"]["usage"] == format_usd(MOCK_COST)
    assert got["usage"] == format_usd(12 * MOCK_COST)


async def test_a_disable_through_one_instance_is_refused_by_the_other_at_once(
    on_cluster: GatewayFactory,
) -> None:
    one, two = await on_cluster(), await on_cluster()
    key = await one.key()
    assert (await chat(two, key["key"], max_tokens=16))[0] == 200  # cached in `two`
    await call(one.admin, "PATCH", f"/keys/{key['id']}", {"status": "inactive"})
    status, _, answer = await chat(two, key["key"], max_tokens=16)
    assert status == 401 and answer["error"]["code"] == "api_key_disabled"
    await call(one.admin, "PATCH", f"/keys/{key['id']}", {"status": "active"})
    assert (await chat(two, key["key"], max_tokens=16))[0] == 200
