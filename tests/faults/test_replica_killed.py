"""A replica killed mid-request (SIGKILL, no clean-up of any kind): its reservations
expire and stop holding the key's budget, its unfinished requests are never charged, and
the usage events it had settled but not yet written reach the ledger through another
replica's writer (DESIGN.md, "Failure behaviour": "replica killed mid-request")."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp.test_utils import TestServer

from spendgate.config import Settings
from spendgate.enforcement.money import format_usd
from spendgate.storage.postgres import create_pool
from spendgate.storage.resp import RespClient
from spendgate.storage.spend import RESERVATION_TTL
from spendgate.storage.usage_streams import GROUP
from spendgate.storage.usage_writer import UsageWriter
from tests.fakes.upstream import FakeUpstream
from tests.faults.conftest import (
    BUCKETS,
    FAKE_COST,
    HI,
    chat,
    free_port,
    spend_state,
    usage_stream,
)
from tests.gateway_fixtures import providers_toml
from tests.helpers import ADMIN_TOKEN, FakeClock, TcpLink
from tests.proxy.conftest import FakeGatewayFactory, ledger

IN_FLIGHT = 3  # streams running in the replica when it is killed
# Without an output cap a call to fake/m1 reserves 9 input tokens and 4,096 output
# tokens: 9,000 + 8,192,000 nano. Two settled calls and three in flight fill this limit.
RESERVED_EACH = 9_000 + 4096 * 2000
LIMIT = 2 * FAKE_COST + IN_FLIGHT * RESERVED_EACH


class Replica:
    """`spendgate serve --workers 1` in a process tree of its own (the supervisor, its
    worker and its ledger process), killed by the test."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
async def start_replica(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Replica] = []

    async def start(env: dict[str, str]) -> Replica:
        port = free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}
        environ |= env | {"SPENDGATE_PORT": str(port), "SPENDGATE_WORKERS": "1"}
        log = tmp_path / f"replica-{len(started)}.log"
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "spendgate", "serve", env=environ, stderr=sink
            )
        replica = Replica(process, port, log)
        started.append(replica)
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                assert process.returncode is None, replica.output()
                try:
                    async with http.get(replica.url + "/readyz") as ready:
                        if ready.status == 200:
                            return replica
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)

    yield start
    for replica in started:
        if replica.process.returncode is None:
            replica.process.kill()
            await replica.process.wait()


async def test_a_killed_replica_holds_no_budget_charges_nothing_unfinished_and_loses_no_event(
    start_replica: Any,
    fake_upstream: tuple[FakeUpstream, TestServer],
    via_fake: FakeGatewayFactory,
    postgres_link: tuple[TcpLink, str],
    settings: Settings,
    clock: FakeClock,
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    fake, server = fake_upstream
    link, dsn = postgres_link
    providers = tmp_path / "replica-providers.toml"
    providers.write_text(providers_toml(server))
    replica = await start_replica(
        {
            "SPENDGATE_DATABASE_URL": dsn,  # through a link the test cuts
            "SPENDGATE_REDIS_URL": str(settings.redis_url),
            "SPENDGATE_REDIS_PREFIX": redis_prefix,
            "SPENDGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "SPENDGATE_PROVIDERS_FILE": str(providers),
            "SPENDGATE_LOG_LEVEL": "warning",
        }
    )
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(replica.url, headers=admin) as http:
        async with http.post("/admin/v1/projects", json={"name": "p"}) as created:
            project = await created.json()
        async with http.post(
            f"/admin/v1/projects/{project['id']}/keys",
            json={"name": "k", "usage_limit": format_usd(LIMIT)},
        ) as created:
            key = await created.json()
    stream_key = usage_stream(redis_prefix, key["id"])
    auth = {"Authorization": f"Bearer {key['key']}"}

    # The replica's Postgres goes away. Its writer reads the first event it settles, fails
    # to write it, and retries that batch (pending for it) before reading anything else: the
    # second event waits in the stream, unread.
    await link.cut()

    async def pending() -> int:
        summary: dict[str, Any] = await raw_redis.xpending(stream_key, GROUP)
        return int(summary["pending"])

    settled = []
    async with aiohttp.ClientSession(replica.url, headers=auth) as http:
        for _ in range(2):
            async with http.post(
                "/v1/chat/completions", json={"model": "fake/m1", "messages": HI}
            ) as reply:
                assert reply.status == 200, await reply.text()
                settled.append(reply.headers["x-request-id"])
            async with asyncio.timeout(10):
                while await pending() < 1:
                    await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # a few more rounds of the replica's writer
    assert (await raw_redis.xlen(stream_key), await pending()) == (2, 1)

    # Streams in flight, then SIGKILL: no settle, no shutdown, no drain.
    fake.mode, fake.delay = "slow_stream", 30.0
    streams = aiohttp.ClientSession(replica.url, headers=auth)
    killed = []
    flowing: list[aiohttp.ClientResponse] = []
    try:
        for _ in range(IN_FLIGHT):
            reply = await streams.post(
                "/v1/chat/completions", json={"model": "fake/m1", "messages": HI, "stream": True}
            )
            flowing.append(reply)
            assert reply.status == 200
            await reply.content.readuntil(b"\n\n")  # admitted, forwarded, flowing
            killed.append(reply.headers["x-request-id"])
        held = await spend_state(raw_redis, redis_prefix, key["id"])
        assert sorted(held.reservations) == sorted(killed)
        assert held.reserved == IN_FLIGHT * RESERVED_EACH
        replica.process.kill()  # the supervisor: its worker and ledger process die with it
        assert await replica.process.wait() == -9
        async with asyncio.timeout(5):
            for reply in flowing:  # cut off, not left running by an orphaned worker
                with pytest.raises(aiohttp.ClientPayloadError):
                    await reply.read()
    finally:
        for reply in flowing:
            reply.release()
        await streams.close()
    fake.mode = "ok"

    # Another replica, on a Postgres that works. At the time of the kill the dead
    # replica's reservations still fill the limit: refused, "come back in a second".
    clock.current = datetime.now(UTC)
    _, other = await via_fake()  # the same fake upstream
    status, headers, answer = await chat(other, key["key"], model="fake/m1")
    assert (status, answer["error"]["code"]) == (429, "usage_limit_exceeded")
    assert headers["Retry-After"] == "1"

    # Once the reservations' lifetime has passed, the next admission releases them.
    clock.advance(RESERVATION_TTL + timedelta(seconds=1))
    status, headers, answer = await chat(other, key["key"], model="fake/m1")
    assert status == 200, answer
    survivor = headers["x-request-id"]
    state = await spend_state(raw_redis, redis_prefix, key["id"])
    assert state.reserved == 0
    # Tombstones: a late settle of a killed request would still charge it, once.
    assert sorted(state.reservations) == sorted(killed)
    assert all(v.startswith(b"x|") for v in state.reservations.values())
    # The killed requests were never settled: only the three finished calls count.
    assert state.used == 3 * FAKE_COST

    # The other replica's writer writes the event nobody had read at once, but takes the
    # dead replica's pending one only once it has been idle for claim_idle_ms: 30 s in
    # every app (UsageWriter's default, not a setting). Meanwhile the ledger lacks it.
    await ledger(db, key["id"], 2)
    await asyncio.sleep(0.3)
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 2
    assert await pending() == 1

    # A writer like every replica's, but with a short claim idle time, claims it.
    pool = await create_pool(str(settings.database_url), size=1)
    client = RespClient(str(settings.redis_url))
    rescuer = UsageWriter(
        client, pool, prefix=redis_prefix, buckets=BUCKETS, consumer="rescuer", claim_idle_ms=100
    )
    try:
        assert await rescuer.run_once() == 1
        assert await rescuer.run_once() == 0
    finally:
        await client.aclose()
        await pool.close()

    rows = await ledger(db, key["id"], 3)
    assert sorted(r["request_id"] for r in rows) == sorted([*settled, survivor])
    assert [r["cost_nano"] for r in rows] == [FAKE_COST] * 3
    assert (await raw_redis.xlen(stream_key), await pending()) == (0, 0)
    assert (await other.get_key(key["id"]))["usage"] == format_usd(3 * FAKE_COST)
