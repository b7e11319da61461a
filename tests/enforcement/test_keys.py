from __future__ import annotations

import zlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendgate.enforcement.keys import (
    ApiKey,
    KeyUsage,
    Project,
    RecurringLimit,
    bucket_of,
    key_limit,
    truncate_ms,
)
from spendgate.enforcement.windows import Period, Window

T0 = datetime(2026, 11, 26, 19, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("plan", "custom", "limit"),
    [
        ("free", None, 5),
        ("pro", None, 20),
        ("enterprise", None, 500),
        ("enterprise", 1200, 1200),
        ("enterprise", 3, 3),
        ("free", 1000, 5),
        ("pro", 1000, 20),
    ],
)
def test_key_limit(plan: str, custom: int | None, limit: int) -> None:
    assert key_limit(plan, custom) == limit


def test_project_effective_key_limit_uses_the_plan_rules() -> None:
    pro = Project("prj_1", "p", "pro", key_limit=99, key_count=0, created_at=T0)
    enterprise = Project("prj_2", "e", "enterprise", key_limit=99, key_count=0, created_at=T0)
    assert pro.effective_key_limit == 20
    assert enterprise.effective_key_limit == 99


@given(key_id=st.text(alphabet="0123456789abcdefXYZ_", min_size=1, max_size=40))
def test_bucket_of_is_stable_and_in_range(key_id: str) -> None:
    for buckets in (1, 2, 64, 16384):
        bucket = bucket_of(key_id, buckets)
        assert 0 <= bucket < buckets
        assert bucket == bucket_of(key_id, buckets)
    # A documented, cross-process stable hash (not Python's salted hash()).
    assert bucket_of(key_id, 64) == zlib.crc32(key_id.encode()) % 64


def test_bucket_of_spreads_keys_over_all_buckets() -> None:
    seen = {bucket_of(f"key_{n:020d}", 64) for n in range(2000)}
    assert seen == set(range(64))
    # Pinned: changing the hash would move every key's Redis data to another slot.
    assert bucket_of("key_abc", 64) == 18
    assert bucket_of("key_00000000000000000000", 64) == 14


def test_in_period_counts_only_the_matching_period() -> None:
    period = Period(3, T0, datetime(2026, 11, 27, 19, tzinfo=UTC))
    current = KeyUsage(used=900, period_start=T0, period_used=120)
    stale = KeyUsage(used=900, period_start=datetime(2026, 11, 25, 19, tzinfo=UTC), period_used=120)
    never = KeyUsage(used=900)
    assert current.in_period(period) == 120
    assert stale.in_period(period) == 0
    assert never.in_period(period) == 0


def test_api_key_period_is_none_without_a_recurring_limit() -> None:
    key = _key(recurring_limit=None, period_anchor=None)
    assert key.period_at(T0) is None
    limit = RecurringLimit(10**9, Window(1, "day"))
    assert _key(recurring_limit=limit, period_anchor=None).period_at(T0) is None


def test_api_key_period_follows_its_anchor() -> None:
    limit = RecurringLimit(10**9, Window(1, "day"))
    key = _key(recurring_limit=limit, period_anchor=T0)
    now = datetime(2026, 11, 29, 20, tzinfo=UTC)
    assert key.period_at(now) == Period(
        3, datetime(2026, 11, 29, 19, tzinfo=UTC), datetime(2026, 11, 30, 19, tzinfo=UTC)
    )


def test_truncate_ms_drops_only_sub_millisecond_digits() -> None:
    moment = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert truncate_ms(moment) == datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)
    assert truncate_ms(truncate_ms(moment)) == truncate_ms(moment)


def _key(recurring_limit: RecurringLimit | None, period_anchor: datetime | None) -> ApiKey:
    return ApiKey(
        id="key_1",
        project_id="prj_1",
        name="production",
        preview="sgk_AbCd...wxyz",
        status="active",
        usage_limit=None,
        recurring_limit=recurring_limit,
        period_anchor=period_anchor,
        version=1,
        created_at=T0,
        last_used_at=None,
        iam_rules=(),
    )
