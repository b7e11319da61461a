"""Key records in Redis: version ordering, tombstones, counters."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as redis

from spendgate.enforcement.keys import ApiKey, RecurringLimit
from spendgate.enforcement.windows import Window, to_epoch_ms
from spendgate.storage.redis_client import create_redis
from spendgate.storage.redis_keys import KeyRecords

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = ApiKey(
    id="key_test",
    project_id="prj_test",
    name="k",
    preview="sgk_abcd...wxyz",
    status="active",
    usage_limit=None,
    recurring_limit=RecurringLimit(5_000_000_000, Window(1, "day")),
    period_anchor=NOW,
    version=1,
    created_at=NOW,
    last_used_at=None,
    iam_rules=(),
)


@pytest.fixture
async def records(redis_url: str, redis_prefix: str) -> AsyncIterator[KeyRecords]:
    client = create_redis(redis_url)
    yield KeyRecords(client, redis_prefix, 64)
    async for name in client.scan_iter(match=f"{redis_prefix}:*"):
        await client.delete(name)
    await client.aclose()


async def test_an_older_version_never_overwrites_a_newer_one(
    records: KeyRecords, redis_url: str
) -> None:
    assert await records.write(KEY)
    assert await records.write(dataclasses.replace(KEY, status="inactive", version=3))
    assert not await records.write(dataclasses.replace(KEY, status="active", version=2))
    assert not await records.write(dataclasses.replace(KEY, status="active", version=3))
    client = redis.Redis.from_url(redis_url)
    assert await client.hget(records.record_key(KEY.id), "status") == b"inactive"
    await client.aclose()


async def test_a_new_anchor_restarts_the_period_and_keeps_all_time_usage(
    records: KeyRecords, redis_url: str
) -> None:
    await records.write(KEY)
    client = redis.Redis.from_url(redis_url)
    name = records.record_key(KEY.id)
    await client.hset(name, mapping={"used": 900, "p_used": 400})
    await records.write(dataclasses.replace(KEY, usage_limit=10, version=2))
    assert (await records.usage([KEY.id]))[KEY.id].period_used == 400

    later = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
    await records.write(dataclasses.replace(KEY, period_anchor=later, version=3))
    usage = (await records.usage([KEY.id]))[KEY.id]
    assert usage.used == 900 and usage.period_used == 0 and usage.period_start == later
    assert await client.hget(name, "anchor") == str(to_epoch_ms(later)).encode()
    await client.aclose()


async def test_the_tombstone_of_a_deleted_key_refuses_late_writes(
    records: KeyRecords, redis_url: str
) -> None:
    await records.write(KEY, token_hash=b"\x01" * 32)
    await records.delete(KEY, b"\x01" * 32)
    assert not await records.write(KEY)
    client = redis.Redis.from_url(redis_url)
    assert await client.hget(records.record_key(KEY.id), "status") == b"deleted"
    assert await client.get(records.token_key(b"\x01" * 32)) is None
    await client.aclose()


async def test_usage_of_unknown_keys_is_zero(records: KeyRecords) -> None:
    usage = await records.usage(["key_a", "key_b"])
    assert usage["key_a"].used == 0 and usage["key_b"].period_start is None
