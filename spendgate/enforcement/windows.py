"""Recurring windows: the one implementation of the period arithmetic.

A recurring limit's windows are anchored at the moment the limit was last configured:
period k is [anchor + k*window, anchor + (k+1)*window). Hours, days and weeks are fixed
lengths; months are calendar months computed from the anchor each time with the day
clamped (anchor Jan 31: Feb 28/29, Mar 31, Apr 30...), never by stepping from the
previous boundary. Every replica computes the same periods from the same anchor.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

Unit = Literal["hour", "day", "week", "month"]

# Bounds: from 1 hour to 12 months.
MAX_EVERY: Final[dict[str, int]] = {"hour": 8760, "day": 365, "week": 52, "month": 12}
_FIXED: Final[dict[str, timedelta]] = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}


class WindowError(ValueError):
    """A window outside 1 hour..12 months, or an unknown unit; `field` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Window:
    every: int
    unit: Unit

    def __post_init__(self) -> None:
        if self.unit not in MAX_EVERY:
            raise WindowError("unit", "must be one of hour, day, week, month")
        if isinstance(self.every, bool) or not isinstance(self.every, int):
            raise WindowError("every", "must be an integer")
        limit = MAX_EVERY[self.unit]
        if not 1 <= self.every <= limit:
            raise WindowError(
                "every", f"must be 1 to {limit} for unit {self.unit} (1 hour to 12 months)"
            )

    def boundary(self, anchor: datetime, k: int) -> datetime:
        """The start of period k: anchor + k windows."""
        if self.unit == "month":
            return add_months(anchor, k * self.every)
        return anchor + k * self.every * _FIXED[self.unit]


@dataclass(frozen=True, slots=True)
class Period:
    index: int
    started_at: datetime
    resets_at: datetime


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` moved by whole calendar months, the day clamped to the month's length."""
    total = moment.year * 12 + (moment.month - 1) + months
    year, month0 = divmod(total, 12)
    day = min(moment.day, calendar.monthrange(year, month0 + 1)[1])
    return moment.replace(year=year, month=month0 + 1, day=day)


def period_at(window: Window, anchor: datetime, now: datetime) -> Period:
    """The period that contains `now` (period 0 when `now` is before the anchor)."""
    if now <= anchor:
        return Period(0, anchor, window.boundary(anchor, 1))
    if window.unit == "month":
        months = (now.year - anchor.year) * 12 + (now.month - anchor.month)
        k = months // window.every
        if window.boundary(anchor, k) > now:
            k -= 1
    else:
        k = (now - anchor) // (window.every * _FIXED[window.unit])
    return Period(k, window.boundary(anchor, k), window.boundary(anchor, k + 1))


def utcnow() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def to_epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch, floored (the resolution Redis works in)."""
    return (moment - _EPOCH) // _MILLISECOND


def from_epoch_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)
