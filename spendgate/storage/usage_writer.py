"""The ledger writer: usage events from the Redis streams into Postgres, in batches.

The settle script appends one event per request to the stream of the key's bucket,
`<prefix>:{b<N>}:usage`. Every process runs one UsageWriter, a consumer of the group
"ledger" on every bucket's stream (usage_streams.py reads and acknowledges). A round
fetches what the streams hold, inserts the events in one transaction, and only after
COMMIT acknowledges and deletes them.

Guarantees. Delivery is at least once: an event leaves Redis only after the transaction
that wrote it has committed. Whatever fails in between (Postgres or Redis down, the
process killed, the task cancelled at shutdown) leaves it pending in the group, and it is
written again: by this consumer, which retries a failed batch (backoff capped at 2 s) and
re-reads its own pending entries at start, or by any replica, which claims entries idle
longer than `claim_idle_ms` (XAUTOCLAIM) from a consumer that died or is cut off. The
insert is idempotent on the table's key `(request_id, created_at)` (`ON CONFLICT DO
NOTHING`; a retried settle carries the same admission time), so every redelivery and every
duplicate append lands on the row already written: at-least-once delivery plus an
idempotent insert gives exactly one row per request. Postgres being down only delays the
ledger: requests never wait for this task, and new events wait in the streams, unread,
until the failed batch is written. An event that cannot be stored (a missing or garbled
field) is logged with its entry id and dropped, so it cannot block the events behind it.

A round runs every `flush_interval` (100 ms) while there are events; after rounds that
find none the pause doubles, up to IDLE_PAUSE_MAX (1 s): an idle writer reads the 64
streams once a second instead of ten times.

`api_keys.last_used_at` moves with the batches, at most once a minute per key and writer
(TOUCH_EVERY): a key's latest use reaches it in the first round a minute after the
previous update, with or without new events, and at once when the writer stops. Touched
every round, a busy key's row would take ten updates a second from every replica.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Final

import asyncpg
import orjson

from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.postgres import postgres_errors
from spendgate.storage.resp import RedisCommands
from spendgate.storage.usage_events import MalformedEvent, UsageEvent, parse_entry
from spendgate.storage.usage_streams import StreamEntry, UsageStreams

log = logging.getLogger(__name__)

BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 2.0
# The longest pause between two rounds that found nothing: the first event after a quiet
# spell waits at most this long.
IDLE_PAUSE_MAX: Final = 1.0
# Events parsed between two yields to the event loop (~2 µs each): a round's work must
# not hold up the requests in flight for more than a fraction of a millisecond at a time.
PARSE_SLICE = 16
# Seconds between two updates of one key's last_used_at by one writer.
TOUCH_EVERY = 60.0

# The batch goes as one JSON array of rows ([request_id, created_at, ...], UsageEvent's
# fields), in the order the rows are to be inserted: one parameter to encode instead of 13
# arrays, which asyncpg encodes element by element (it was most of the writer's CPU).
_INSERT = """
INSERT INTO usage_events (request_id, created_at, key_id, project_id, model, provider,
    prompt_tokens, completion_tokens, cost_nano, status, duration_ms, billing, stream)
SELECT e->>0, (e->>1)::timestamptz, e->>2, e->>3, e->>4, e->>5, (e->>6)::int, (e->>7)::int,
    (e->>8)::bigint, (e->>9)::int, (e->>10)::int, e->>11, (e->>12)::bool
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS rows (e, n)
ORDER BY n
ON CONFLICT (request_id, created_at) DO NOTHING
"""

# $1: [[key_id, last use], ...], one pair per key. Rows are locked in id order so two
# writers touching the same keys cannot deadlock; NO KEY UPDATE, like a plain UPDATE of a
# non-key column, so inserts referencing a key never wait.
_TOUCH_KEYS = """
WITH used AS (
    SELECT e->>0 AS key_id, (e->>1)::timestamptz AS last
    FROM jsonb_array_elements($1::jsonb) AS rows (e)
), locked AS (
    SELECT k.id, used.last FROM api_keys k JOIN used ON used.key_id = k.id
    WHERE k.last_used_at IS NULL OR k.last_used_at < used.last
    ORDER BY k.id
    FOR NO KEY UPDATE OF k
)
UPDATE api_keys k
SET last_used_at = greatest(coalesce(k.last_used_at, '-infinity'), locked.last)
FROM locked WHERE k.id = locked.id
"""


Touches = list[tuple[str, datetime]]  # (key id, its latest use), for _TOUCH_KEYS


@dataclass(frozen=True, slots=True)
class _Round:
    received: int  # entries that came back from Redis, whatever became of them
    inserted: int  # rows new to the table
    more: bool  # a full batch, or an unfinished scan: go again at once


class UsageWriter:
    """One per process: a consumer in group "ledger" of every bucket's stream, writing the
    events to `usage_events` in batches. `start()` runs one background task; `stop()` drains
    it. `run_once()` is one round, for tests; it raises StorageUnavailable when a backend is
    down, where the task logs, backs off and retries. `batch_size` bounds each read of one
    bucket (XREADGROUP / XAUTOCLAIM COUNT); a round inserts what all its reads returned."""

    def __init__(
        self,
        redis: RedisCommands,
        pool: asyncpg.Pool,
        *,
        prefix: str,
        buckets: int,
        consumer: str,
        flush_interval: float = 0.1,
        batch_size: int = 500,
        claim_idle_ms: int = 30_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._streams = UsageStreams(
            redis,
            prefix=prefix,
            buckets=buckets,
            consumer=consumer,
            batch_size=batch_size,
            claim_idle_ms=claim_idle_ms,
        )
        self._pool = pool
        self._flush_interval = flush_interval
        self._idle_pause_max = max(IDLE_PAUSE_MAX, flush_interval)
        # The entries of a batch whose write failed, retried before anything is read.
        self._unwritten: list[StreamEntry] = []
        # last_used_at: each key's latest use not written yet, and when this writer last
        # wrote the key's (only keys written less than TOUCH_EVERY ago are kept).
        self._monotonic = monotonic
        self._untouched: dict[str, datetime] = {}
        self._touched: dict[str, float] = {}
        self._due_at: list[tuple[float, str]] = []  # heap: when each waiting key is due
        self._prune_at = monotonic() + TOUCH_EVERY
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writes_ok = 0
        self.writes_failed = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Create the groups that are missing and start the background task. A Redis
        that is down now does not fail start-up: the task creates the groups later."""
        if self._task is not None:
            return
        try:
            await self.ensure_groups()
        except StorageUnavailable:
            log.warning("usage writer: redis unavailable at start, will retry")
        self._stopping.clear()
        name = f"usage-writer:{self._streams.consumer}"
        self._task = asyncio.create_task(self._run(), name=name)

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Write what is readable now, then end the task. Whatever is not written by then
        (Postgres down, timeout) stays pending in Redis for this or another consumer."""
        task = self._task
        if task is None:
            return
        self._stopping.set()
        done, _ = await asyncio.wait({task}, timeout=drain_timeout)
        if not done:
            log.warning("usage writer: drain timed out; unwritten events stay in redis")
            task.cancel()
            await asyncio.wait({task})
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("usage writer task failed", exc_info=task.exception())

    async def ensure_groups(self) -> None:
        await self._streams.ensure_groups()

    async def backlog(self) -> int:
        return await self._streams.backlog()

    async def run_once(self) -> int:
        """One round: reclaim stale entries (when due), read every bucket, insert, ack.
        Returns the number of rows new to the table."""
        async with self._lock:
            return (await self._round()).inserted

    # -- the task ----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        pause = self._flush_interval
        while not self._stopping.is_set():
            try:
                async with self._lock:
                    result = await self._round()
            except Exception as exc:
                self.writes_failed += 1
                _log_failure(exc, f"retrying in {backoff:.1f}s")
                await self._pause(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            if result.more:
                continue
            # Idle rounds space out (to IDLE_PAUSE_MAX): every round reads every bucket.
            idle = not result.received
            pause = min(pause * 2, self._idle_pause_max) if idle else self._flush_interval
            await self._pause(pause)
        await self._drain()

    async def _drain(self) -> None:
        while True:
            try:
                async with self._lock:
                    result = await self._round()
            except Exception as exc:
                self.writes_failed += 1
                _log_failure(exc, "drain stopped, unwritten events stay in redis")
                return
            if not result.received and not result.more:
                break
        try:  # the latest uses not written yet, interval or not
            async with self._lock:
                self._due_at.clear()
                await self._touch(list(self._untouched.items()))
        except Exception as exc:
            _log_failure(exc, "last_used_at of some keys not updated")

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    # -- one round ---------------------------------------------------------------------

    async def _round(self) -> _Round:
        if self._unwritten:
            # Retry the failed batch before reading more: new events wait in the streams,
            # unread, and nothing here resets the idle time of the batch's entries, so
            # another replica may claim and write them meanwhile (the insert is idempotent).
            entries = self._unwritten
            inserted = await self._write(entries)
            return _Round(received=len(entries), inserted=inserted, more=True)
        entries, more = await self._streams.fetch()
        if not entries:
            await self._touch(self._due())
            return _Round(received=0, inserted=0, more=more)
        inserted = await self._write(entries)
        return _Round(received=len(entries), inserted=inserted, more=more)

    async def _write(self, entries: list[StreamEntry]) -> int:
        """Insert the entries' rows, then ack and delete them. What is not acknowledged
        when this fails stays in `_unwritten`, for the next round to retry."""
        rows: dict[tuple[str, datetime], UsageEvent] = {}
        written: list[StreamEntry] = []
        dropped: list[StreamEntry] = []
        for index, entry in enumerate(entries):
            if index % PARSE_SLICE == PARSE_SLICE - 1:
                await asyncio.sleep(0)  # let requests run: a batch can be thousands
            flat = entry.fields
            if not flat:  # deleted from the stream while pending
                dropped.append(entry)
                continue
            try:
                event = parse_entry(flat)
            except MalformedEvent as exc:
                log.error(
                    "usage writer: dropping malformed event %s of bucket %d: %s",
                    entry.id.decode(),
                    entry.bucket,
                    exc,
                )
                dropped.append(entry)
                continue
            rows.setdefault((event.request_id, event.created_at), event)
            written.append(entry)
        self._unwritten = entries
        if dropped:  # first, so that a Postgres outage cannot bring them back to the log
            await self._streams.ack(dropped)
            self._unwritten = written
        for event in rows.values():
            self._used(event.key_id, event.created_at)
        inserted = 0
        if rows:
            touches = self._due()
            try:
                inserted = await self._insert(sorted(rows.values(), key=_row_order), touches)
            except BaseException:
                self._requeue(touches)
                raise
            self._touched_now(touches)
        if written:
            await self._streams.ack(written)
        self._unwritten = []
        return inserted

    async def _insert(self, events: Sequence[UsageEvent], touches: Touches) -> int:
        rows = orjson.dumps([tuple(event) for event in events]).decode()
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(_INSERT, rows)
            if touches:
                await conn.execute(_TOUCH_KEYS, orjson.dumps(touches).decode())
        self.writes_ok += 1
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"

    # -- last_used_at ------------------------------------------------------------------

    def _used(self, key_id: str, at: datetime) -> None:
        last = self._untouched.get(key_id)
        if last is None:  # newly waiting: due a minute after the key's last update
            due = self._touched.get(key_id, -TOUCH_EVERY) + TOUCH_EVERY
            heapq.heappush(self._due_at, (due, key_id))
        if last is None or at > last:
            self._untouched[key_id] = at

    def _due(self) -> Touches:
        """The keys waiting whose last update is TOUCH_EVERY old (taken off the queue:
        `_requeue` them if they are not written)."""
        now = self._monotonic()
        if now >= self._prune_at:  # forget updates that no longer hold a key back
            self._touched = {k: t for k, t in self._touched.items() if now - t < TOUCH_EVERY}
            self._prune_at = now + TOUCH_EVERY
        due = []
        while self._due_at and self._due_at[0][0] <= now:
            _, key_id = heapq.heappop(self._due_at)
            due.append((key_id, self._untouched[key_id]))
        return due

    def _requeue(self, touches: Touches) -> None:
        for key_id, _ in touches:
            heapq.heappush(self._due_at, (float("-inf"), key_id))

    async def _touch(self, touches: Touches) -> None:
        """Update these keys' last_used_at on their own (a round without events)."""
        if not touches:
            return
        try:
            async with postgres_errors(), self._pool.acquire() as conn:
                await conn.execute(_TOUCH_KEYS, orjson.dumps(touches).decode())
        except BaseException:
            self._requeue(touches)
            raise
        self._touched_now(touches)

    def _touched_now(self, touches: Touches) -> None:
        now = self._monotonic()
        for key_id, _ in touches:
            del self._untouched[key_id]
            self._touched[key_id] = now


# One order for every writer: two inserting the same rows wait, never deadlock.
_row_order = itemgetter(0, 1)  # request_id, created_at


def _log_failure(exc: Exception, then: str) -> None:
    if isinstance(exc, StorageUnavailable):
        log.warning("usage writer: %s; %s", exc, then)
    else:
        log.error("usage writer: round failed; %s", then, exc_info=exc)
