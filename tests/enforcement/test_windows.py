from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.enforcement.windows import (
    Period,
    Window,
    WindowError,
    from_epoch_ms,
    period_at,
    to_epoch_ms,
)

# The contract's bounds, written out here rather than imported from the module under test.
BOUNDS: Final[dict[str, int]] = {"hour": 8760, "day": 365, "week": 52, "month": 12}
UNIT_MICROSECONDS: Final[dict[str, int]] = {
    "hour": 3600 * 10**6,
    "day": 86400 * 10**6,
    "week": 7 * 86400 * 10**6,
}
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# --- an independent reference for the period arithmetic -------------------------------


def _last_day(year: int, month: int) -> int:
    """Days in a month: the day before the first of the next month."""
    first_of_next = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return (first_of_next - timedelta(days=1)).day


def ref_add_months(moment: datetime, months: int) -> datetime:
    """Calendar-month addition by stepping one month at a time, the day clamped."""
    year, month = moment.year, moment.month
    step = 1 if months >= 0 else -1
    for _ in range(abs(months)):
        month += step
        if month == 13:
            year, month = year + 1, 1
        elif month == 0:
            year, month = year - 1, 12
    day = min(moment.day, _last_day(year, month))
    return datetime.combine(date(year, month, day), moment.timetz())


def _micros(delta: timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds


def ref_boundary(window: Window, anchor: datetime, k: int) -> datetime:
    if window.unit == "month":
        return ref_add_months(anchor, k * window.every)
    return anchor + timedelta(microseconds=k * window.every * UNIT_MICROSECONDS[window.unit])


def ref_fixed_index(window: Window, anchor: datetime, now: datetime) -> int:
    return _micros(now - anchor) // (window.every * UNIT_MICROSECONDS[window.unit])


# --- strategies ------------------------------------------------------------------------

windows = st.sampled_from(sorted(BOUNDS)).flatmap(
    lambda unit: st.builds(Window, st.integers(1, BOUNDS[unit]), st.just(unit))
)
any_moment = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 12, 31, 23, 59, 59, 999999),
    timezones=st.just(UTC),
)


@st.composite
def month_end_moment(draw: st.DrawFn) -> datetime:
    """Anchors on days 28-31 (clamped to the month), with a time of day and microseconds."""
    year = draw(st.integers(2000, 2100))
    month = draw(st.integers(1, 12))
    day = min(draw(st.integers(28, 31)), _last_day(year, month))
    clock = draw(st.times())
    return datetime.combine(date(year, month, day), clock, tzinfo=UTC)


anchors = st.one_of(any_moment, month_end_moment())
offsets = st.one_of(
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=366 * 45)),
)
near_boundary = st.sampled_from(
    [timedelta(microseconds=-1), timedelta(0), timedelta(microseconds=1)]
)


def _check_period(window: Window, anchor: datetime, now: datetime, period: Period) -> None:
    assert period.started_at <= now < period.resets_at
    assert period.started_at >= anchor
    assert period.index >= 0
    if window.unit == "month":
        assert period.started_at == ref_add_months(anchor, period.index * window.every)
        assert period.resets_at == ref_add_months(anchor, (period.index + 1) * window.every)
    else:
        assert period.index == ref_fixed_index(window, anchor, now)
        assert period.started_at == ref_boundary(window, anchor, period.index)
        assert period.resets_at == ref_boundary(window, anchor, period.index + 1)
    assert period.started_at.tzinfo is not None
    assert period.started_at.utcoffset() == timedelta(0)


# --- properties --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(window=windows, anchor=anchors, offset=offsets)
def test_current_period_contains_now_and_is_anchor_plus_k_windows(
    window: Window, anchor: datetime, offset: timedelta
) -> None:
    now = anchor + offset
    _check_period(window, anchor, now, period_at(window, anchor, now))


@settings(max_examples=300, deadline=None)
@given(window=windows, anchor=anchors, k=st.integers(0, 240), nudge=near_boundary)
def test_period_index_flips_exactly_at_each_boundary(
    window: Window, anchor: datetime, k: int, nudge: timedelta
) -> None:
    boundary = ref_boundary(window, anchor, k)
    now = boundary + nudge
    if now < anchor:
        return
    period = period_at(window, anchor, now)
    assert period.index == (k - 1 if nudge < timedelta(0) else k)
    _check_period(window, anchor, now, period)


@settings(max_examples=200, deadline=None)
@given(window=windows, anchor=anchors, offset=offsets)
def test_periods_are_consecutive(window: Window, anchor: datetime, offset: timedelta) -> None:
    current = period_at(window, anchor, anchor + offset)
    following = period_at(window, anchor, current.resets_at)
    assert following.index == current.index + 1
    assert following.started_at == current.resets_at
    assert following.resets_at > following.started_at
    # The last microsecond of a period still belongs to it.
    last = period_at(window, anchor, current.resets_at - timedelta(microseconds=1))
    assert last == current


@settings(max_examples=100, deadline=None)
@given(
    window=windows,
    anchor=anchors,
    before=st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=36500)),
)
def test_before_the_anchor_is_period_zero(
    window: Window, anchor: datetime, before: timedelta
) -> None:
    period = period_at(window, anchor, anchor - before)
    assert period == Period(0, anchor, ref_boundary(window, anchor, 1))


# --- calendar months -----------------------------------------------------------------------


def _utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def test_monthly_from_january_31_clamps_each_month_from_the_anchor() -> None:
    window = Window(1, "month")
    anchor = _utc(2026, 1, 31, 10, 30, 0, 123456)
    starts = [period_at(window, anchor, _utc(2026, m, 15)).resets_at for m in (2, 3, 4)]
    assert starts == [
        _utc(2026, 2, 28, 10, 30, 0, 123456),
        _utc(2026, 3, 31, 10, 30, 0, 123456),
        _utc(2026, 4, 30, 10, 30, 0, 123456),
    ]
    # Not stepped from the clamped Feb 28: March is back on the 31st.
    march = period_at(window, anchor, _utc(2026, 3, 30))
    assert march == Period(1, _utc(2026, 2, 28, 10, 30, 0, 123456), starts[1])


def test_monthly_in_a_leap_year_lands_on_february_29() -> None:
    window = Window(1, "month")
    anchor = _utc(2028, 1, 31)
    period = period_at(window, anchor, _utc(2028, 2, 29, 12))
    assert period == Period(1, _utc(2028, 2, 29), _utc(2028, 3, 31))


def test_yearly_window_anchored_on_february_29() -> None:
    window = Window(12, "month")
    anchor = _utc(2024, 2, 29, 8)
    assert period_at(window, anchor, _utc(2025, 2, 28, 7)) == Period(
        0, anchor, _utc(2025, 2, 28, 8)
    )
    assert period_at(window, anchor, _utc(2025, 2, 28, 8)) == Period(
        1, _utc(2025, 2, 28, 8), _utc(2026, 2, 28, 8)
    )
    assert period_at(window, anchor, _utc(2028, 3, 1)) == Period(
        4, _utc(2028, 2, 29, 8), _utc(2029, 2, 28, 8)
    )


def test_twelve_month_window_spans_one_calendar_year() -> None:
    window = Window(12, "month")
    anchor = _utc(2026, 3, 15, 9)
    period = period_at(window, anchor, _utc(2030, 1, 1))
    assert period == Period(3, _utc(2029, 3, 15, 9), _utc(2030, 3, 15, 9))


def test_key_idle_for_several_windows_shows_the_current_period() -> None:
    anchor = _utc(2026, 11, 26, 19)
    now = _utc(2026, 11, 29, 20, 15)
    assert period_at(Window(1, "day"), anchor, now) == Period(
        3, _utc(2026, 11, 29, 19), _utc(2026, 11, 30, 19)
    )
    assert period_at(Window(6, "hour"), anchor, now) == Period(
        12, _utc(2026, 11, 29, 19), _utc(2026, 11, 30, 1)
    )
    assert period_at(Window(2, "week"), anchor, _utc(2027, 1, 8)) == Period(
        3, _utc(2027, 1, 7, 19), _utc(2027, 1, 21, 19)
    )


def test_now_equal_to_the_anchor_is_the_start_of_period_zero() -> None:
    anchor = _utc(2026, 5, 31, 23, 59, 59, 999000)
    assert period_at(Window(1, "month"), anchor, anchor) == Period(
        0, anchor, _utc(2026, 6, 30, 23, 59, 59, 999000)
    )


def test_now_before_the_anchor_is_period_zero() -> None:
    anchor = _utc(2026, 1, 10)
    assert period_at(Window(3, "day"), anchor, _utc(2025, 12, 1)) == Period(
        0, anchor, _utc(2026, 1, 13)
    )


# --- bounds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("unit", "largest"), sorted(BOUNDS.items()))
def test_every_allowed_value_is_accepted(unit: Any, largest: int) -> None:
    for every in range(1, largest + 1):
        assert Window(every, unit).every == every


@pytest.mark.parametrize(
    ("every", "unit", "field"),
    [
        (0, "hour", "every"),
        (-1, "day", "every"),
        (8761, "hour", "every"),
        (366, "day", "every"),
        (53, "week", "every"),
        (13, "month", "every"),
        (True, "hour", "every"),
        (False, "day", "every"),
        (1.0, "hour", "every"),
        ("1", "day", "every"),
        (1, "year", "unit"),
        (1, "minute", "unit"),
        (1, "Month", "unit"),
        (1, "", "unit"),
    ],
)
def test_window_out_of_bounds_names_the_field(every: Any, unit: Any, field: str) -> None:
    with pytest.raises(WindowError) as info:
        Window(every, unit)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


# --- epoch milliseconds --------------------------------------------------------------------------


def test_epoch_ms_of_known_moments() -> None:
    assert to_epoch_ms(EPOCH) == 0
    assert to_epoch_ms(_utc(2026, 1, 1)) == 1_767_225_600_000
    assert from_epoch_ms(1_767_225_600_123) == _utc(2026, 1, 1, 0, 0, 0, 123000)
    assert from_epoch_ms(0).utcoffset() == timedelta(0)


def test_epoch_ms_floors_sub_millisecond_parts() -> None:
    assert to_epoch_ms(_utc(1970, 1, 1, 0, 0, 0, 999)) == 0
    assert to_epoch_ms(_utc(2026, 1, 1, 0, 0, 0, 1999)) == 1_767_225_600_001
    assert to_epoch_ms(EPOCH - timedelta(microseconds=1)) == -1


@given(moment=any_moment)
def test_epoch_ms_round_trip_on_millisecond_datetimes(moment: datetime) -> None:
    truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    ms = to_epoch_ms(moment)
    assert ms == to_epoch_ms(truncated)
    assert from_epoch_ms(ms) == truncated
    assert _micros(truncated - EPOCH) == ms * 1000


@given(ms=st.integers(0, 4_102_444_800_000))
def test_epoch_ms_round_trip_on_integers(ms: int) -> None:
    assert to_epoch_ms(from_epoch_ms(ms)) == ms
