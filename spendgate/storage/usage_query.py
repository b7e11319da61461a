"""A key's ledger for the usage endpoint: one page of its requests, and totals over a range.

The page is keyset pagination on (created_at DESC, request_id DESC), the order of the index
`usage_events_key_time`: a page starts after the last row of the previous one, so it costs
the same at any depth, and never OFFSET. Totals over [since, until) read whole UTC hours
from the rollup `usage_hourly` (kept by triggers, migration 0002) and the partial hours at
either edge from the ledger itself, so a range of any length scans at most two hours of
the key's raw rows. Both reads run in one read-only REPEATABLE READ transaction: the page
and the totals see the same ledger. docs/USAGE_QUERIES.md has the plans and timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg

from spendgate.enforcement.errors import NotFound
from spendgate.storage.postgres import postgres_errors
from spendgate.types import Nano

HOUR = timedelta(hours=1)
_UTC_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_KEY_EXISTS = "SELECT 1 FROM api_keys WHERE id = $1"

# ($4, $5) is the last row of the previous page; the first page passes (until, ''), which
# no row reaches: '' sorts before every request id.
_PAGE = """
SELECT request_id, created_at, model, provider, prompt_tokens, completion_tokens, cost_nano,
       status, duration_ms, billing, stream
FROM usage_events
WHERE key_id = $1 AND created_at >= $2 AND created_at < $3
  AND (created_at, request_id) < ($4, $5)
ORDER BY created_at DESC, request_id DESC
LIMIT $6
"""

# [$3, $4) is the whole hours inside [$2, $5); the ledger covers [$2, $3) and [$4, $5).
_GROUPS = """
WITH parts AS (
    SELECT hour AS at, model, requests, cost_nano, prompt_tokens, completion_tokens
    FROM usage_hourly WHERE key_id = $1 AND hour >= $3 AND hour < $4
    UNION ALL
    SELECT created_at, model, 1, cost_nano, prompt_tokens, completion_tokens
    FROM usage_events WHERE key_id = $1 AND created_at >= $2 AND created_at < $3
    UNION ALL
    SELECT created_at, model, 1, cost_nano, prompt_tokens, completion_tokens
    FROM usage_events WHERE key_id = $1 AND created_at >= $4 AND created_at < $5
)
SELECT (at AT TIME ZONE 'UTC')::date AS day, model, sum(requests) AS requests,
       sum(cost_nano) AS cost_nano, sum(prompt_tokens) AS prompt_tokens,
       sum(completion_tokens) AS completion_tokens
FROM parts GROUP BY 1, 2
"""


@dataclass(frozen=True, slots=True)
class Position:
    """A row's place in the page order; the next page starts after it."""

    created_at: datetime
    request_id: str


@dataclass(frozen=True, slots=True)
class UsageRow:
    request_id: str
    created_at: datetime
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cost_nano: Nano
    status: int
    duration_ms: int
    billing: str
    stream: bool

    @property
    def position(self) -> Position:
        return Position(self.created_at, self.request_id)


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int = 0
    cost_nano: Nano = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.requests + other.requests,
            self.cost_nano + other.cost_nano,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, slots=True)
class UsageReport:
    """One page of rows, newest first; `next` is set when more rows follow. The totals
    cover the whole range: by UTC day ascending, by model by cost descending then name."""

    rows: list[UsageRow]
    next: Position | None
    totals: Totals
    by_day: list[tuple[date, Totals]]
    by_model: list[tuple[str, Totals]]


def whole_hours(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """[lo, hi): the whole UTC hours inside [since, until); (until, until) when there is
    none, so that the ledger alone covers the range."""
    try:
        lo = since + (_UTC_EPOCH - since) % HOUR
    except OverflowError:  # within the last hour datetime can hold
        return until, until
    hi = until - (until - _UTC_EPOCH) % HOUR
    if lo >= hi:
        return until, until
    return lo, hi


class UsageQueries:
    """Reads of one key's ledger. Cheap to build: it holds only the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def report(
        self,
        key_id: str,
        since: datetime,
        until: datetime,
        limit: int,
        after: Position | None = None,
    ) -> UsageReport:
        """Rows of [since, until) after `after` (or from the newest), at most `limit`, and
        the totals of the whole range. Raises NotFound if no key has the id: a deleted
        key's rows stay in the ledger, but its usage is no longer served."""
        if "\x00" in key_id:  # Postgres text cannot hold NUL: no key has such an id
            raise NotFound("key", key_id)
        start = after or Position(until, "")
        lo, hi = whole_hours(since, until)
        async with (
            postgres_errors(),
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            if await conn.fetchval(_KEY_EXISTS, key_id) is None:
                raise NotFound("key", key_id)
            page = await conn.fetch(
                _PAGE, key_id, since, until, start.created_at, start.request_id, limit + 1
            )
            groups = await conn.fetch(_GROUPS, key_id, since, lo, hi, until)
        rows = [_row(record) for record in page[:limit]]
        more = len(page) > limit
        return _report(rows, rows[-1].position if more else None, groups)


def _row(record: asyncpg.Record) -> UsageRow:
    return UsageRow(
        request_id=record["request_id"],
        created_at=record["created_at"],
        model=record["model"],
        provider=record["provider"],
        prompt_tokens=record["prompt_tokens"],
        completion_tokens=record["completion_tokens"],
        cost_nano=record["cost_nano"],
        status=record["status"],
        duration_ms=record["duration_ms"],
        billing=record["billing"],
        stream=record["stream"],
    )


def _report(
    rows: list[UsageRow], after: Position | None, groups: list[asyncpg.Record]
) -> UsageReport:
    by_day: dict[date, Totals] = {}
    by_model: dict[str, Totals] = {}
    for group in groups:
        # Sums come back as numeric (sums of BIGINT may pass 2^63): exact integers.
        totals = Totals(
            int(group["requests"]),
            int(group["cost_nano"]),
            int(group["prompt_tokens"]),
            int(group["completion_tokens"]),
        )
        by_day[group["day"]] = by_day.get(group["day"], Totals()) + totals
        by_model[group["model"]] = by_model.get(group["model"], Totals()) + totals
    total = sum(by_day.values(), Totals())
    return UsageReport(
        rows=rows,
        next=after,
        totals=total,
        by_day=sorted(by_day.items()),
        by_model=sorted(by_model.items(), key=lambda item: (-item[1].cost_nano, item[0])),
    )
