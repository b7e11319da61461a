"""Projects, keys and their limits as the rest of the code sees them; plan allowances."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

from spendgate.enforcement.iam import Rule
from spendgate.enforcement.windows import Period, Window, period_at
from spendgate.types import JSONObject, Nano

Plan = Literal["free", "pro", "enterprise"]
Status = Literal["active", "inactive"]
PLAN_KEY_LIMITS: Final[dict[str, int]] = {"free": 5, "pro": 20, "enterprise": 500}
NAME_MAX = 255


class Clock(Protocol):
    """The time source; tests inject one they can move."""

    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def truncate_ms(moment: datetime) -> datetime:
    """Anchors are kept to the millisecond, the resolution Redis works in."""
    return moment - timedelta(microseconds=moment.microsecond % 1000)


def key_limit(plan: str, custom: int | None) -> int:
    """How many keys a project may hold: its own limit (enterprise only), else the plan's."""
    if plan == "enterprise" and custom is not None:
        return custom
    return PLAN_KEY_LIMITS[plan]


def bucket_of(key_id: str, buckets: int) -> int:
    """The stable bucket of a key: every Redis key of it shares the hash tag {b<N>}."""
    return zlib.crc32(key_id.encode("ascii")) % buckets


@dataclass(frozen=True, slots=True)
class RecurringLimit:
    amount: Nano
    window: Window


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    plan: Plan
    key_limit: int | None  # the project's own limit (enterprise), else None
    key_count: int
    created_at: datetime

    @property
    def effective_key_limit(self) -> int:
        return key_limit(self.plan, self.key_limit)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    project_id: str
    name: str
    preview: str
    status: Status
    usage_limit: Nano | None
    recurring_limit: RecurringLimit | None
    period_anchor: datetime | None
    version: int
    created_at: datetime
    last_used_at: datetime | None
    iam_rules: tuple[JSONObject, ...]  # as the API shows them, in their stored order

    @property
    def iam_rules_count(self) -> int:
        return len(self.iam_rules)

    def period_at(self, now: datetime) -> Period | None:
        if self.recurring_limit is None or self.period_anchor is None:
            return None
        return period_at(self.recurring_limit.window, self.period_anchor, now)


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """Counters of one key: all-time usage and the usage of the period starting at
    `period_start` (which may be an older period than the current one)."""

    used: Nano = 0
    period_start: datetime | None = None
    period_used: Nano = 0

    def in_period(self, period: Period) -> Nano:
        return self.period_used if self.period_start == period.started_at else 0


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key to create: the token's hash and preview, never the token itself."""

    id: str
    project_id: str
    name: str
    token_hash: bytes
    preview: str
    usage_limit: Nano | None
    recurring_limit: RecurringLimit | None
    period_anchor: datetime | None


# Sentinel for "field not given" in partial updates (None means "remove").
class Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()


@dataclass(frozen=True, slots=True)
class KeyChanges:
    name: str | Unset = UNSET
    status: Status | Unset = UNSET
    usage_limit: Nano | None | Unset = UNSET
    recurring_limit: RecurringLimit | None | Unset = UNSET


@dataclass(frozen=True, slots=True)
class Principal:
    """What the request path knows of a key before admission. Its status and counters
    live in Redis and are checked by the admission script itself."""

    key_id: str
    project_id: str
    window: Window | None
    anchor: datetime | None  # to the millisecond
    rules: tuple[Rule, ...] = ()

    def period_at(self, now: datetime) -> Period | None:
        if self.window is None or self.anchor is None:
            return None
        return period_at(self.window, self.anchor, now)
