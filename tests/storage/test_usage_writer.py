"""The ledger writer on real Redis and Postgres: exactly one row per event, whatever fails."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis

from spendgate.enforcement.keys import bucket_of
from spendgate.enforcement.windows import from_epoch_ms
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.postgres import create_pool, migrate, postgres_errors
from spendgate.storage.resp import RespClient
from spendgate.storage.usage_events import usage_stream_key
from spendgate.storage.usage_streams import GROUP
from spendgate.storage.usage_writer import TOUCH_EVERY, UsageWriter
from tests.helpers import TcpLink

BUCKETS = 4
T0_MS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z
Event = dict[str, str | int]
MakeWriter = Callable[..., UsageWriter]


def keys_in_distinct_buckets() -> list[str]:
    found: dict[int, str] = {}
    for i in range(100):
        found.setdefault(bucket_of(f"key_{i}", BUCKETS), f"key_{i}")
    return [found[bucket] for bucket in range(BUCKETS)]


KEYS = keys_in_distinct_buckets()


def event(request_id: str, key_id: str = KEYS[0], created_at: int = T0_MS, **fields: Any) -> Event:
    return {
        "request_id": request_id,
        "created_at": created_at,
        "key_id": key_id,
        "project_id": "prj_1",
        "model": "mock/echo-1",
        "provider": "mock",
        "prompt_tokens": 2,
        "completion_tokens": 16,
        "cost": 34_000,
        "status": 200,
        "duration_ms": 12,
        "billing": "credits",
        "stream": "0",
        **fields,
    }


def stream_of(prefix: str, key_id: str) -> str:
    return usage_stream_key(prefix, bucket_of(key_id, BUCKETS))


async def xadd(client: redis.Redis, prefix: str, *events: Event) -> list[bytes]:
    """Append as the settle script does; returns the entry ids."""
    ids = []
    for e in events:
        entry_id = await client.xadd(stream_of(prefix, str(e["key_id"])), e)  # type: ignore[arg-type]
        assert isinstance(entry_id, bytes)
        ids.append(entry_id)
    return ids


async def stream_state(client: redis.Redis, prefix: str) -> tuple[int, int]:
    """(entries left in the streams, entries pending in the group), over every bucket."""
    length = pending = 0
    for bucket in range(BUCKETS):
        stream = usage_stream_key(prefix, bucket)
        length += await client.xlen(stream)
        if await client.exists(stream):
            pending += (await client.xpending(stream, GROUP))["pending"]
    return length, pending


async def count_rows(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM usage_events"))


async def request_ids(db: asyncpg.Connection) -> list[str]:
    return [r["request_id"] for r in await db.fetch("SELECT request_id FROM usage_events")]


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def make_writer(
    redis_url: str, redis_prefix: str, raw_redis: redis.Redis
) -> AsyncIterator[MakeWriter]:
    """Writers on the production Redis client; stopped afterwards."""
    made: list[tuple[UsageWriter, RespClient]] = []

    def make(pool: asyncpg.Pool, consumer: str = "w1", **options: Any) -> UsageWriter:
        client = RespClient(redis_url)
        writer = UsageWriter(
            client, pool, prefix=redis_prefix, buckets=BUCKETS, consumer=consumer, **options
        )
        made.append((writer, client))
        return writer

    yield make
    for writer, client in made:
        await writer.stop(drain_timeout=1)
        await client.aclose()


async def test_events_of_every_bucket_land_once_with_their_values(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    events = [
        event(
            f"req_{i}",
            key_id,
            created_at=T0_MS + i,
            cost=12_345_678_901_234 + i,  # beyond int32: BIGINT all the way
            prompt_tokens=100 + i,
            completion_tokens=200 + i,
            status=502 if i % 2 else 200,
            duration_ms=1000 + i,
            billing="byok" if i % 2 else "credits",
            stream="1" if i % 2 else "0",
        )
        for i, key_id in enumerate(KEYS)
    ]
    # Appended before the group exists: created from id 0, the group still reads them.
    await xadd(raw_redis, redis_prefix, *events)
    writer = make_writer(pool)
    await writer.ensure_groups()
    assert await writer.backlog() == BUCKETS

    assert await writer.run_once() == BUCKETS

    rows = await db.fetch("SELECT * FROM usage_events ORDER BY request_id")
    assert [dict(row) for row in rows] == [
        {
            "request_id": f"req_{i}",
            "created_at": datetime(2026, 1, 1, 0, 0, 0, (123 + i) * 1000, tzinfo=UTC),
            "key_id": key_id,
            "project_id": "prj_1",
            "model": "mock/echo-1",
            "provider": "mock",
            "prompt_tokens": 100 + i,
            "completion_tokens": 200 + i,
            "cost_nano": 12_345_678_901_234 + i,
            "status": 502 if i % 2 else 200,
            "duration_ms": 1000 + i,
            "billing": "byok" if i % 2 else "credits",
            "stream": bool(i % 2),
        }
        for i, key_id in enumerate(KEYS)
    ]
    assert await stream_state(raw_redis, redis_prefix) == (0, 0)
    assert await writer.backlog() == 0
    assert await writer.run_once() == 0


async def test_a_duplicated_event_is_one_row(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    writer = make_writer(pool)
    await writer.ensure_groups()
    retried = event("req_retried")
    await xadd(raw_redis, redis_prefix, retried, event("req_other"), retried)
    assert await writer.run_once() == 2
    await xadd(raw_redis, redis_prefix, retried)  # a settle retried after the write
    assert await writer.run_once() == 0
    assert await count_rows(db) == 2
    assert await stream_state(raw_redis, redis_prefix) == (0, 0)


async def test_last_used_at_moves_forward_only_for_existing_keys(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    await db.execute("INSERT INTO projects (id, name, plan) VALUES ('prj_1', 'p', 'free')")
    earlier = from_epoch_ms(T0_MS) - timedelta(days=1)
    later = from_epoch_ms(T0_MS) + timedelta(days=1)
    for i, (key_id, used_at) in enumerate([(KEYS[0], earlier), (KEYS[1], later)]):
        await db.execute(
            "INSERT INTO api_keys (id, project_id, name, token_hash, preview, status,"
            " last_used_at) VALUES ($1, 'prj_1', 'k', $2, 'sgk_', 'active', $3)",
            key_id,
            bytes([i]) * 32,
            used_at,
        )
    writer = make_writer(pool)
    await writer.ensure_groups()
    await xadd(
        raw_redis,
        redis_prefix,
        event("r1", KEYS[0], created_at=T0_MS + 1000),
        event("r2", KEYS[0], created_at=T0_MS + 5000),
        event("r3", KEYS[0], created_at=T0_MS + 3000),
        event("r4", KEYS[1], created_at=T0_MS),
        event("r5", KEYS[2], created_at=T0_MS),  # a deleted key: its row stays
    )
    assert await writer.run_once() == 5
    rows = await db.fetch("SELECT id, last_used_at FROM api_keys")
    assert {r["id"]: r["last_used_at"] for r in rows} == {
        KEYS[0]: from_epoch_ms(T0_MS + 5000),
        KEYS[1]: later,
    }
    assert await count_rows(db) == 5


class Ticks:
    """A monotonic clock that the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def add_keys(db: asyncpg.Connection, *key_ids: str) -> None:
    await db.execute("INSERT INTO projects (id, name, plan) VALUES ('prj_1', 'p', 'free')")
    for i, key_id in enumerate(key_ids):
        await db.execute(
            "INSERT INTO api_keys (id, project_id, name, token_hash, preview, status)"
            " VALUES ($1, 'prj_1', 'k', $2, 'sgk_', 'active')",
            key_id,
            bytes([i]) * 32,
        )


async def last_used(db: asyncpg.Connection) -> dict[str, datetime | None]:
    return {r["id"]: r["last_used_at"] for r in await db.fetch("SELECT * FROM api_keys")}


async def first_use_written(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> tuple[UsageWriter, Ticks]:
    """Keys KEYS[0] and KEYS[1], and a writer on a test clock that has written one use of
    KEYS[0] (at T0)."""
    await add_keys(db, KEYS[0], KEYS[1])
    ticks = Ticks()
    writer = make_writer(pool, monotonic=ticks)
    await writer.ensure_groups()
    await xadd(raw_redis, redis_prefix, event("r1", KEYS[0], created_at=T0_MS))
    assert await writer.run_once() == 1
    return writer, ticks


async def test_last_used_at_moves_once_a_minute_and_catches_up_without_new_events(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    writer, ticks = await first_use_written(pool, make_writer, raw_redis, redis_prefix, db)
    assert await last_used(db) == {KEYS[0]: from_epoch_ms(T0_MS), KEYS[1]: None}

    # KEYS[0] was updated less than a minute ago: its newer use waits. KEYS[1]'s first
    # use goes at once.
    ticks.now += TOUCH_EVERY - 1
    await xadd(
        raw_redis,
        redis_prefix,
        event("r2", KEYS[0], created_at=T0_MS + 5000),
        event("r3", KEYS[1], created_at=T0_MS + 6000),
    )
    assert await writer.run_once() == 2
    expected = {KEYS[0]: from_epoch_ms(T0_MS), KEYS[1]: from_epoch_ms(T0_MS + 6000)}
    assert await last_used(db) == expected
    assert await writer.run_once() == 0
    assert await last_used(db) == expected

    # A minute after its last update, a round without events writes it.
    ticks.now += 1
    assert await writer.run_once() == 0
    expected[KEYS[0]] = from_epoch_ms(T0_MS + 5000)
    assert await last_used(db) == expected
    assert await count_rows(db) == 3


async def test_a_stopping_writer_writes_the_last_uses_it_holds_back(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    await add_keys(db, KEYS[0])
    writer = make_writer(pool, flush_interval=0.05, monotonic=Ticks())
    await writer.start()
    await xadd(raw_redis, redis_prefix, event("r1", KEYS[0], created_at=T0_MS))
    await wait_until(partial(_rows_are, db, 1))
    await xadd(raw_redis, redis_prefix, event("r2", KEYS[0], created_at=T0_MS + 7000))
    await wait_until(partial(_rows_are, db, 2))
    assert await last_used(db) == {KEYS[0]: from_epoch_ms(T0_MS)}  # held back
    await writer.stop()
    assert await last_used(db) == {KEYS[0]: from_epoch_ms(T0_MS + 7000)}


async def test_a_last_use_whose_write_failed_is_written_with_a_later_round(
    postgres_link: tuple[TcpLink, str],
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    postgres, dsn = postgres_link
    pool = await create_pool(dsn, size=1)
    await migrate(pool)
    writer, ticks = await first_use_written(pool, make_writer, raw_redis, redis_prefix, db)

    ticks.now += TOUCH_EVERY
    await xadd(raw_redis, redis_prefix, event("r2", KEYS[0], created_at=T0_MS + 9000))
    await postgres.cut()
    with pytest.raises(StorageUnavailable):
        await writer.run_once()  # the batch and its update, due now, both fail
    await postgres.restore()
    await xadd(raw_redis, redis_prefix, event("r3", KEYS[1], created_at=T0_MS + 1))
    assert await writer.run_once() == 1  # the failed batch first
    assert await writer.run_once() == 1
    assert await last_used(db) == {
        KEYS[0]: from_epoch_ms(T0_MS + 9000),
        KEYS[1]: from_epoch_ms(T0_MS + 1),
    }
    await pool.close()


async def test_an_idle_writer_spaces_its_rounds_out_and_closes_up_when_events_come(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    writer = make_writer(pool, flush_interval=0.1)
    pauses: list[float] = []
    quiet, events_added, done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def pause(seconds: float) -> None:  # the pause asked for, none taken
        pauses.append(seconds)
        if len(pauses) == 6:
            quiet.set()
            await events_added.wait()
        if len(pauses) >= 8:
            await done.wait()

    async def paused_eight_times() -> bool:
        return len(pauses) >= 8

    writer._pause = pause  # type: ignore[method-assign]
    await writer.start()
    async with asyncio.timeout(5):
        await quiet.wait()
    await xadd(raw_redis, redis_prefix, event("r1"))
    events_added.set()
    await wait_until(paused_eight_times)
    assert pauses == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 0.1, 0.2]
    assert await count_rows(db) == 1
    done.set()
    await writer.stop()


async def test_events_wait_in_redis_while_postgres_is_down_then_land_once(
    postgres_link: tuple[TcpLink, str],
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    postgres, dsn = postgres_link
    pool = await create_pool(dsn, size=1)
    await migrate(pool)
    writer = make_writer(pool, flush_interval=0.05)
    await writer.start()
    await postgres.cut()
    with pytest.raises(StorageUnavailable):
        async with postgres_errors():
            await pool.fetchval("SELECT 1")

    await xadd(raw_redis, redis_prefix, *(event(f"req_{i}", key) for i, key in enumerate(KEYS)))
    await asyncio.sleep(0.8)  # a few failed rounds, backing off
    assert await count_rows(db) == 0
    assert await stream_state(raw_redis, redis_prefix) == (BUCKETS, BUCKETS)
    assert writer.writes_failed >= 2
    assert "postgres is unavailable" in caplog.text

    await postgres.restore()
    await wait_until(partial(_rows_are, db, BUCKETS), timeout=4)
    await wait_until(partial(_streams_empty, raw_redis, redis_prefix))
    await writer.stop()
    assert await count_rows(db) == BUCKETS
    await pool.close()


async def test_stopping_while_postgres_is_down_leaves_events_for_another_writer(
    postgres_link: tuple[TcpLink, str],
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    postgres, dsn = postgres_link
    broken_pool = await create_pool(dsn, size=1)
    leaving = make_writer(broken_pool, consumer="leaving", flush_interval=0.05)
    await leaving.start()
    await postgres.cut()
    await xadd(raw_redis, redis_prefix, event("a", KEYS[0]), event("b", KEYS[1]))
    await asyncio.sleep(0.2)

    started = time.monotonic()
    await leaving.stop(drain_timeout=5)
    assert time.monotonic() - started < 1  # the drain gives up at once, it does not hang
    assert await stream_state(raw_redis, redis_prefix) == (2, 2)

    other = make_writer(pool, consumer="other", claim_idle_ms=50)
    await asyncio.sleep(0.1)
    assert await other.run_once() == 2
    assert await stream_state(raw_redis, redis_prefix) == (0, 0)
    await broken_pool.close()


async def test_redis_going_away_and_back_loses_nothing(
    pool: asyncpg.Pool,
    raw_redis: redis.Redis,
    redis_url: str,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    parts = urlsplit(redis_url)
    assert parts.hostname
    link = TcpLink(parts.hostname, parts.port or 6379)
    await link.restore()
    client = RespClient(urlunsplit(parts._replace(netloc=f"127.0.0.1:{link.port}")))
    writer = UsageWriter(
        client, pool, prefix=redis_prefix, buckets=BUCKETS, consumer="w1", flush_interval=0.05
    )
    await writer.start()
    await xadd(raw_redis, redis_prefix, event("before"))
    await wait_until(partial(_rows_are, db, 1))
    await link.cut()
    await xadd(raw_redis, redis_prefix, *(event(f"during_{i}", key) for i, key in enumerate(KEYS)))
    await asyncio.sleep(0.5)
    assert writer.writes_failed >= 2

    await link.restore()
    await wait_until(partial(_rows_are, db, 1 + BUCKETS), timeout=4)
    await wait_until(partial(_streams_empty, raw_redis, redis_prefix))
    await writer.stop()
    await client.aclose()
    await link.cut()


async def test_a_restarted_writer_writes_what_it_had_read_before(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    writer = make_writer(pool, consumer="replica-1")  # claim_idle_ms stays 30 s
    await writer.ensure_groups()
    await xadd(raw_redis, redis_prefix, event("a", KEYS[0]), event("b", KEYS[1]))
    for key in KEYS[:2]:  # its previous life read them, then was killed
        await raw_redis.xreadgroup(GROUP, "replica-1", {stream_of(redis_prefix, key): ">"})
    await xadd(raw_redis, redis_prefix, event("c", KEYS[0]))
    assert await writer.run_once() == 3
    assert await stream_state(raw_redis, redis_prefix) == (0, 0)


async def test_entries_of_a_dead_consumer_are_claimed_and_written_once(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    writer = make_writer(pool, claim_idle_ms=200)
    await writer.ensure_groups()
    ids = await xadd(
        raw_redis, redis_prefix, event("a", KEYS[0]), event("b", KEYS[0]), event("c", KEYS[1])
    )
    for key in KEYS[:2]:
        await raw_redis.xreadgroup(GROUP, "dead", {stream_of(redis_prefix, key): ">"})
    # The dead consumer's entry that left the stream: XAUTOCLAIM reports it as deleted.
    await raw_redis.xdel(stream_of(redis_prefix, KEYS[0]), ids[1])

    assert await writer.run_once() == 0  # not idle long enough yet, and not new
    # Still pending for "dead" ("b" may already be gone: XAUTOCLAIM drops deleted entries
    # from the pending list whatever their idle time).
    assert (await stream_state(raw_redis, redis_prefix))[0] == 2
    assert await count_rows(db) == 0

    await asyncio.sleep(0.25)
    assert await writer.run_once() == 2
    assert await writer.run_once() == 0
    assert sorted(await request_ids(db)) == ["a", "c"]
    assert await stream_state(raw_redis, redis_prefix) == (0, 0)


async def test_a_lost_group_or_stream_is_recreated(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    writer = make_writer(pool)
    await writer.ensure_groups()
    stream = stream_of(redis_prefix, KEYS[0])
    await xadd(raw_redis, redis_prefix, event("a"))
    assert await writer.run_once() == 1

    await raw_redis.xgroup_destroy(stream, GROUP)
    await xadd(raw_redis, redis_prefix, event("b"))
    assert await writer.run_once() == 1

    await raw_redis.delete(stream)  # Redis restarted without persistence
    await xadd(raw_redis, redis_prefix, event("c"))
    assert await writer.run_once() == 1

    assert await count_rows(db) == 3
    assert await stream_state(raw_redis, redis_prefix) == (0, 0)


async def test_stop_drains_what_was_appended_before_it(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    writer = make_writer(pool, flush_interval=30)  # the task sleeps: only stop() writes
    await writer.start()
    await asyncio.sleep(0.05)
    await xadd(raw_redis, redis_prefix, *(event(f"r{i}", key) for i, key in enumerate(KEYS)))
    assert await count_rows(db) == 0

    started = time.monotonic()
    await writer.stop()
    assert time.monotonic() - started < 1
    assert await count_rows(db) == BUCKETS
    assert await stream_state(raw_redis, redis_prefix) == (0, 0)


async def test_full_batches_are_read_again_at_once(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    await xadd(raw_redis, redis_prefix, *(event(f"r{i}") for i in range(7)))
    writer = make_writer(pool, batch_size=2, flush_interval=30)
    await writer.start()
    await wait_until(partial(_rows_are, db, 7), timeout=1)


async def test_events_are_flushed_within_the_flush_interval(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    writer = make_writer(pool)
    await writer.start()
    await asyncio.sleep(0.1)
    for i in range(3):
        await xadd(raw_redis, redis_prefix, event(f"r{i}"))
        await wait_until(partial(_rows_are, db, i + 1), timeout=0.6)


async def test_a_malformed_event_is_dropped_without_blocking_the_next(
    pool: asyncpg.Pool,
    make_writer: MakeWriter,
    raw_redis: redis.Redis,
    redis_prefix: str,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing_cost = event("bad_1")
    del missing_cost["cost"]
    bad: list[Any] = [
        missing_cost,
        event("bad_2", cost="12secret34"),
        event("bad_3", billing="free"),
        event("bad_4", stream="yes"),
        event("bad_5", created_at=2**62),
        event("bad_6", model="mock/\x00secret"),
        {**event("bad_7"), "provider": b"\xff\xfe"},
        event("bad_8", prompt_tokens=2**31),
        # What int() takes but is not a plain integer.
        event("bad_9", duration_ms=" 12"),
        event("bad_10", status="+200"),
        event("bad_11", completion_tokens="1_0"),
        event("bad_12", cost="-"),
    ]
    writer = make_writer(pool)
    await writer.ensure_groups()
    await xadd(raw_redis, redis_prefix, event("good_1"))
    bad_ids = await xadd(raw_redis, redis_prefix, *bad)
    await xadd(raw_redis, redis_prefix, event("good_2"))

    with caplog.at_level(logging.ERROR, logger="spendgate.storage.usage_writer"):
        assert await writer.run_once() == 2
    assert sorted(await request_ids(db)) == ["good_1", "good_2"]
    assert await stream_state(raw_redis, redis_prefix) == (0, 0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == len(bad)
    for entry_id, message in zip(bad_ids, errors, strict=True):
        assert entry_id.decode() in message
    assert "secret" not in caplog.text


async def _rows_are(db: asyncpg.Connection, expected: int) -> bool:
    return await count_rows(db) == expected


async def _streams_empty(client: redis.Redis, prefix: str) -> bool:
    return await stream_state(client, prefix) == (0, 0)
