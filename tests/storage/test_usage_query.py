"""The usage queries and the hourly rollup on real Postgres: the rollup always equals the
ledger summed, and a report over any range equals the ledger filtered by hand."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, TypeAlias

import asyncpg
import pytest
import redis.asyncio as redis
from asyncpg.pool import PoolConnectionProxy

from spendgate.enforcement.errors import NotFound
from spendgate.storage.postgres import create_pool, migrate, migrations
from spendgate.storage.resp import RespClient
from spendgate.storage.usage_events import usage_stream_key
from spendgate.storage.usage_query import (
    _PAGE,
    Position,
    Totals,
    UsageQueries,
    UsageRow,
    whole_hours,
)
from spendgate.storage.usage_writer import UsageWriter

T0 = datetime(2026, 1, 10, tzinfo=UTC)
US = timedelta(microseconds=1)
Row = dict[str, Any]
Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy[Any]"


def row(request_id: str, created_at: datetime, key_id: str = "key_a", **fields: Any) -> Row:
    return {
        "request_id": request_id,
        "created_at": created_at,
        "key_id": key_id,
        "project_id": "prj_a",
        "model": "mock/echo-1",
        "provider": "mock",
        "prompt_tokens": 2,
        "completion_tokens": 16,
        "cost_nano": 34_000,
        "status": 200,
        "duration_ms": 12,
        "billing": "credits",
        "stream": False,
        **fields,
    }


async def insert(conn: Conn, rows: Iterable[Row]) -> str:
    """One multi-row INSERT, as the writer does (duplicates skipped); returns its status."""
    rows = list(rows)
    columns = list(row("x", T0))
    values = [[r[c] for r in rows] for c in columns]
    types = [
        "text", "timestamptz", "text", "text", "text", "text",
        "int", "int", "bigint", "int", "int", "text", "bool",
    ]  # fmt: skip
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
    status: str = await conn.execute(
        f"INSERT INTO usage_events ({', '.join(columns)}) SELECT * FROM unnest({arrays})"
        " ON CONFLICT (request_id, created_at) DO NOTHING",
        *values,
    )
    return status


async def assert_rollup_exact(conn: Conn) -> None:
    """usage_hourly holds exactly the ledger summed by key, UTC hour and model."""
    summed = """
        SELECT key_id, date_trunc('hour', created_at, 'UTC') AS hour, model,
               count(*)::bigint AS requests, sum(cost_nano) AS cost_nano,
               sum(prompt_tokens)::bigint AS prompt_tokens,
               sum(completion_tokens)::bigint AS completion_tokens
        FROM usage_events GROUP BY 1, 2, 3"""
    rollup = "SELECT * FROM usage_hourly"
    extra = await conn.fetch(f"({rollup}) EXCEPT ({summed})")
    missing = await conn.fetch(f"({summed}) EXCEPT ({rollup})")
    assert (extra, missing) == ([], [])


@pytest.fixture
async def key_id(pool: asyncpg.Pool) -> str:
    """A key in api_keys (the report serves existing keys only)."""
    kid = "key_" + secrets.token_hex(4)
    await pool.execute(
        "INSERT INTO projects (id, name, plan) VALUES ($1, 'p', 'pro') ON CONFLICT DO NOTHING",
        "prj_a",
    )
    await pool.execute(
        "INSERT INTO api_keys (id, project_id, name, token_hash, preview, status)"
        " VALUES ($1, 'prj_a', 'k', $2, 'sgk_x', 'active')",
        kid,
        secrets.token_bytes(32),
    )
    return kid


# -- the rollup ----------------------------------------------------------------------


async def test_the_rollup_follows_inserts_duplicates_updates_deletes_and_truncate(
    pool: asyncpg.Pool,
) -> None:
    hour = T0 + timedelta(hours=5)
    first = [
        row("r1", hour),
        row("r2", hour + timedelta(minutes=59, seconds=59, microseconds=999_999)),
        row("r3", hour + timedelta(hours=1), model="mock/other", cost_nano=7),
        row("r4", hour, key_id="key_b", prompt_tokens=2**31 - 1),
        row("r5", hour, key_id="key_b", prompt_tokens=2**31 - 1),  # sums beyond int32
    ]
    assert await insert(pool, first) == "INSERT 0 5"
    await assert_rollup_exact(pool)

    # A batch of duplicates and new rows: only the new ones count.
    again = [*first, row("r6", hour, cost_nano=1), row("r6", hour, cost_nano=1)]
    assert await insert(pool, again) == "INSERT 0 1"
    assert await insert(pool, first) == "INSERT 0 0"
    await assert_rollup_exact(pool)
    assert (
        await pool.fetchval(
            "SELECT requests FROM usage_hourly WHERE key_id = 'key_a' AND hour = $1"
            " AND model = 'mock/echo-1'",
            hour,
        )
        == 3
    )

    await pool.execute("UPDATE usage_events SET model = 'mock/other', cost_nano = 5")
    await assert_rollup_exact(pool)
    await pool.execute("UPDATE usage_events SET created_at = created_at + interval '3 hours'")
    await assert_rollup_exact(pool)
    await pool.execute("DELETE FROM usage_events WHERE request_id IN ('r1', 'r4')")
    await assert_rollup_exact(pool)
    await pool.execute("DELETE FROM usage_events WHERE key_id = 'key_b'")
    await assert_rollup_exact(pool)
    assert await pool.fetchval("SELECT count(*) FROM usage_hourly WHERE key_id = 'key_b'") == 0
    await pool.execute("TRUNCATE usage_events")
    assert await pool.fetchval("SELECT count(*) FROM usage_hourly") == 0


async def test_concurrent_writers_of_the_same_rows_count_them_once(pool: asyncpg.Pool) -> None:
    rows = [row(f"r{i}", T0 + timedelta(minutes=i)) for i in range(200)]
    async with pool.acquire() as one, pool.acquire() as two:
        async with one.transaction():
            await insert(one, rows[:150])
            # The second waits on the first's uncommitted rows, then skips them.
            task = asyncio.ensure_future(insert(two, rows[50:]))
            await asyncio.sleep(0.1)
            assert not task.done()
        assert await task == "INSERT 0 50"
    await assert_rollup_exact(pool)
    assert await pool.fetchval("SELECT sum(requests) FROM usage_hourly") == 200


async def test_the_writer_seeing_a_duplicate_event_keeps_the_rollup_exact(
    pool: asyncpg.Pool, redis_url: str, redis_prefix: str, raw_redis: redis.Redis
) -> None:
    client = RespClient(redis_url)
    writer = UsageWriter(client, pool, prefix=redis_prefix, buckets=1, consumer="w1")
    await writer.ensure_groups()
    stream = usage_stream_key(redis_prefix, 0)
    created_ms = int(T0.timestamp() * 1000)

    def event(request_id: str) -> dict[Any, Any]:
        return {
            "request_id": request_id,
            "created_at": created_ms,
            "key_id": "key_a",
            "project_id": "prj_a",
            "model": "mock/echo-1",
            "provider": "mock",
            "prompt_tokens": 2,
            "completion_tokens": 16,
            "cost": 34_000,
            "status": 200,
            "duration_ms": 12,
            "billing": "credits",
            "stream": "0",
        }

    try:
        for request_id in ("r1", "r2", "r1"):  # a settle appended twice
            await raw_redis.xadd(stream, event(request_id))
        assert await writer.run_once() == 2
        await raw_redis.xadd(stream, event("r2"))  # redelivered after the write
        assert await writer.run_once() == 0
        totals = await pool.fetchrow("SELECT requests, cost_nano FROM usage_hourly")
        assert totals is not None and tuple(totals) == (2, 68_000)
        await assert_rollup_exact(pool)
    finally:
        await writer.stop()
        await client.aclose()


async def test_the_migration_backfills_the_rollup_from_an_existing_ledger(
    database_url: str,
) -> None:
    admin = await asyncpg.connect(database_url)
    name = f"spendgate_rollup_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await create_pool(database_url.rsplit("/", 1)[0] + "/" + name, size=1)
        try:
            version, file, sql = migrations()[0]
            await pool.execute(sql)
            await pool.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
                f"INSERT INTO schema_migrations VALUES ({version}, '{file}')"
            )
            await insert(pool, [row(f"r{i}", T0 + timedelta(minutes=7 * i)) for i in range(50)])
            assert await migrate(pool) == ["0002_usage_queries.sql"]
            await assert_rollup_exact(pool)
            assert await pool.fetchval("SELECT sum(requests) FROM usage_hourly") == 50
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


# -- ranges --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        # whole hours only
        ("10:00", "13:00", ("10:00", "13:00")),
        # partial hours at both edges
        ("10:00:00.000001", "12:59:59.999999", ("11:00", "12:00")),
        ("10:30", "13:15", ("11:00", "13:00")),
        # less than one whole hour: the ledger alone
        ("10:30", "11:30", ("11:30", "11:30")),
        ("10:10", "10:50", ("10:50", "10:50")),
        ("10:00", "10:00", ("10:00", "10:00")),
    ],
)
def test_whole_hours_inside_a_range(since: str, until: str, expected: tuple[str, str]) -> None:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(f"2026-01-10T{text}+00:00")

    assert whole_hours(at(since), at(until)) == (at(expected[0]), at(expected[1]))


def test_whole_hours_are_utc_hours_whatever_the_offset() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    since = datetime(2026, 1, 10, 10, 0, tzinfo=india)  # 04:30Z
    until = datetime(2026, 1, 10, 13, 0, tzinfo=india)  # 07:30Z
    lo, hi = whole_hours(since, until)
    assert (lo, hi) == (datetime(2026, 1, 10, 5, tzinfo=UTC), datetime(2026, 1, 10, 7, tzinfo=UTC))


def test_whole_hours_at_the_end_of_time() -> None:
    end = datetime.max.replace(tzinfo=UTC)
    assert whole_hours(end - timedelta(minutes=30), end) == (end, end)


# -- the report ----------------------------------------------------------------------


async def test_the_report_of_any_range_equals_the_ledger_filtered_by_hand(
    pool: asyncpg.Pool, key_id: str
) -> None:
    rng = random.Random(20260110)
    models = ["mock/echo-1", "mock/echo-2", "other/big"]
    rows = [
        row(
            f"req_{i:04d}",
            T0 + timedelta(microseconds=rng.randrange(3 * 86_400_000_000)),
            key_id,
            model=rng.choice(models),
            cost_nano=rng.randrange(1_000_000),
            prompt_tokens=rng.randrange(100),
            completion_tokens=rng.randrange(100),
        )
        for i in range(600)
    ]
    rows.append(row("req_other_key", T0 + timedelta(hours=30), "key_other"))
    await insert(pool, rows)
    mine = [r for r in rows if r["key_id"] == key_id]
    queries = UsageQueries(pool)
    edges = [T0 + timedelta(microseconds=rng.randrange(3 * 86_400_000_000)) for _ in range(12)]
    edges += [T0, T0 + timedelta(hours=25), T0 + timedelta(days=3), mine[7]["created_at"]]
    ranges = [(a, b) for a, b in zip(edges, edges[1:], strict=False) if a <= b]
    ranges += [(T0 - timedelta(days=1), T0 + timedelta(days=4))]
    for since, until in ranges:
        inside = [r for r in mine if since <= r["created_at"] < until]
        report = await queries.report(key_id, since, until, limit=1000)
        assert report.totals == totals_of(inside)
        days = sorted({r["created_at"].date() for r in inside})
        assert report.by_day == [
            (day, totals_of(r for r in inside if r["created_at"].date() == day)) for day in days
        ]
        by_model = [(m, totals_of(r for r in inside if r["model"] == m)) for m in models]
        by_model = [item for item in by_model if item[1].requests]
        assert report.by_model == sorted(by_model, key=lambda i: (-i[1].cost_nano, i[0]))
        newest_first = sorted(inside, key=lambda r: (r["created_at"], r["request_id"]))[::-1]
        assert [r.request_id for r in report.rows] == [r["request_id"] for r in newest_first]
        assert report.next is None


def totals_of(rows: Iterable[Row]) -> Totals:
    total = Totals()
    for r in rows:
        total += Totals(1, r["cost_nano"], r["prompt_tokens"], r["completion_tokens"])
    return total


async def test_pages_follow_each_other_without_gaps_or_repeats(
    pool: asyncpg.Pool, key_id: str
) -> None:
    same = T0 + timedelta(hours=2)
    rows = [row(f"req_{i:02d}", same, key_id) for i in range(7)]  # one instant
    rows += [row(f"req_{i:02d}", same + i * US, key_id) for i in range(7, 25)]  # 1 us apart
    await insert(pool, rows)
    queries = UsageQueries(pool)
    since, until = T0, T0 + timedelta(days=1)
    seen: list[UsageRow] = []
    after: Position | None = None
    sizes = []
    while True:
        report = await queries.report(key_id, since, until, limit=10, after=after)
        sizes.append(len(report.rows))
        seen += report.rows
        assert report.totals.requests == 25  # the whole range on every page
        if report.next is None:
            break
        assert report.next == report.rows[-1].position
        after = report.next
    assert sizes == [10, 10, 5]
    order = sorted(rows, key=lambda r: (r["created_at"], r["request_id"]), reverse=True)
    assert [r.request_id for r in seen] == [r["request_id"] for r in order]
    assert seen[0] == UsageRow(
        request_id="req_24",
        created_at=same + 24 * US,
        model="mock/echo-1",
        provider="mock",
        prompt_tokens=2,
        completion_tokens=16,
        cost_nano=34_000,
        status=200,
        duration_ms=12,
        billing="credits",
        stream=False,
    )


async def test_an_exact_page_has_no_next(pool: asyncpg.Pool, key_id: str) -> None:
    await insert(pool, [row(f"r{i}", T0 + i * US, key_id) for i in range(10)])
    report = await UsageQueries(pool).report(key_id, T0, T0 + timedelta(hours=1), limit=10)
    assert len(report.rows) == 10 and report.next is None


async def test_a_key_without_rows_reports_zeros(pool: asyncpg.Pool, key_id: str) -> None:
    report = await UsageQueries(pool).report(key_id, T0, T0 + timedelta(days=30), limit=100)
    assert (report.rows, report.next, report.totals) == ([], None, Totals())
    assert (report.by_day, report.by_model) == ([], [])


async def test_unknown_and_deleted_keys_are_not_found(pool: asyncpg.Pool, key_id: str) -> None:
    await insert(pool, [row("r1", T0, key_id)])
    queries = UsageQueries(pool)
    with pytest.raises(NotFound):
        await queries.report("key_nope", T0, T0 + timedelta(days=1), limit=10)
    await pool.execute("DELETE FROM api_keys WHERE id = $1", key_id)
    with pytest.raises(NotFound):
        await queries.report(key_id, T0, T0 + timedelta(days=1), limit=10)
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 1  # the ledger stays


async def test_the_page_is_read_in_index_order_without_a_sort(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + _PAGE, "key_a", T0, T0 + timedelta(days=1), T0, "", 101
        )
    text = json.dumps(json.loads(plan))
    assert '"Index Name": "usage_events_key_time"' in text
    assert "Sort" not in text


async def test_big_sums_stay_exact(pool: asyncpg.Pool, key_id: str) -> None:
    big = 2**62
    await insert(pool, [row(f"r{i}", T0 + i * US, key_id, cost_nano=big) for i in range(4)])
    report = await UsageQueries(pool).report(key_id, T0, T0 + timedelta(days=1), limit=1)
    assert report.totals.cost_nano == 4 * big
    assert report.by_day == [(date(2026, 1, 10), Totals(4, 4 * big, 8, 64))]
