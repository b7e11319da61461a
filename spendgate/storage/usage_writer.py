"""The ledger writer: usage events from the Redis streams into Postgres, in batches.

The settle script appends one event per request to the stream of the key's bucket,
`<prefix>:{b<N>}:usage`. Every process runs one UsageWriter, a consumer of the group
"ledger" on every bucket's stream. A round reads each bucket (one XREADGROUP per bucket,
all of them in one pipeline: one round trip, and no command spans two cluster slots),
inserts the events in one transaction, and only after COMMIT acknowledges and deletes them
(XACK + XDEL; never MAXLEN trimming, which could drop unacknowledged events).

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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

import asyncpg

from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.postgres import postgres_errors
from spendgate.storage.redis_client import redis_errors
from spendgate.storage.resp import Command, RedisCommands, ReplyError
from spendgate.storage.usage_events import (
    MalformedEvent,
    UsageEvent,
    parse_event,
    usage_stream_key,
)

log = logging.getLogger(__name__)

GROUP: Final = "ledger"
BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 2.0
# Stale entries of dead consumers are looked for this often at most.
RECLAIM_EVERY_MAX: Final = 5.0

_DONE_CURSOR = b"0-0"
# Events parsed between two yields to the event loop (~6 µs each): a round's work must
# not hold up the requests in flight for more than a fraction of a millisecond at a time.
PARSE_SLICE = 64

_INSERT = """
INSERT INTO usage_events (request_id, created_at, key_id, project_id, model, provider,
    prompt_tokens, completion_tokens, cost_nano, status, duration_ms, billing, stream)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
    $6::text[], $7::int[], $8::int[], $9::bigint[], $10::int[], $11::int[], $12::text[],
    $13::bool[])
ON CONFLICT (request_id, created_at) DO NOTHING
"""

# Rows are locked in id order so two writers touching the same keys cannot deadlock; NO KEY
# UPDATE, like a plain UPDATE of a non-key column, so inserts referencing a key never wait.
_TOUCH_KEYS = """
WITH used AS (
    SELECT key_id, max(created_at) AS last
    FROM unnest($1::text[], $2::timestamptz[]) AS u (key_id, created_at)
    GROUP BY key_id
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


class _Entry(NamedTuple):
    bucket: int
    id: bytes
    # [field, value, ...] as Redis sent them; nil for an entry deleted from the stream while
    # it was pending. Made a dict only where it is parsed, a slice of the batch at a time.
    fields: list[bytes] | None


@dataclass(frozen=True, slots=True)
class _Round:
    received: int  # entries that came back from Redis, whatever became of them
    inserted: int  # rows new to the table
    more: bool  # a full batch, or an unfinished scan: go again at once


def _is_nogroup(reply: object) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOGROUP")


def _entries(bucket: int, found: list[list[Any]]) -> list[_Entry]:
    """Stream entries as Redis sends them, `[id, [field, value, ...]]`."""
    return [_Entry(bucket, id_, flat) for id_, flat in found if id_ is not None]


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
        flush_interval: float = 0.25,
        batch_size: int = 500,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._streams = [usage_stream_key(prefix, bucket) for bucket in range(buckets)]
        self._consumer = consumer
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._claim_idle_ms = claim_idle_ms
        self._reclaim_every = min(RECLAIM_EVERY_MAX, claim_idle_ms / 2000)
        self._next_reclaim = float("-inf")
        self._claim_cursors: dict[int, bytes] = {}
        # Buckets whose entries pending for this consumer are read again (id "0"), next to
        # new ones: all at start (a restart under the same name), all after a read failed.
        self._history: set[int] = set(range(buckets))
        # The entries of a batch whose write failed, retried before anything is read.
        self._unwritten: list[_Entry] = []
        self._broken: set[int] = set()
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
        self._task = asyncio.create_task(self._run(), name=f"usage-writer:{self._consumer}")

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
        """Create the group on every bucket's stream if missing. From id 0, with MKSTREAM:
        events appended before the group existed are read too."""
        await self._create_groups(range(len(self._streams)))

    async def backlog(self) -> int:
        """Events in the streams not yet written: written ones are deleted, so this is
        the sum of the streams' lengths."""
        async with redis_errors():
            lengths = await self._redis.pipeline(
                [(stream, ("XLEN", stream)) for stream in self._streams]
            )
        return sum(int(length) for length in lengths)

    async def run_once(self) -> int:
        """One round: reclaim stale entries (when due), read every bucket, insert, ack.
        Returns the number of rows new to the table."""
        async with self._lock:
            return (await self._round()).inserted

    # -- the task ----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
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
            if not result.more:
                await self._pause(self._flush_interval)
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
                return

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
        try:
            entries, more, history_done = await self._fetch()
        except BaseException:
            # A reply lost on the way may have delivered entries to this consumer.
            self._history.update(range(len(self._streams)))
            raise
        self._history.difference_update(history_done)
        if not entries:
            return _Round(received=0, inserted=0, more=more)
        inserted = await self._write(entries)
        return _Round(received=len(entries), inserted=inserted, more=more)

    async def _fetch(self) -> tuple[list[_Entry], bool, set[int]]:
        """Stale entries claimed (when a reclaim is due) and every bucket's reads, without
        duplicates; whether to go again at once; the history buckets read to the end."""
        entries: dict[tuple[int, bytes], _Entry] = {}
        more = False
        now = asyncio.get_running_loop().time()
        if now >= self._next_reclaim:
            claimed, unfinished = await self._reclaim()
            entries.update(((e.bucket, e.id), e) for e in claimed)
            more |= unfinished
            self._next_reclaim = now if unfinished else now + self._reclaim_every
        read, full, history_done = await self._read()
        entries.update(((e.bucket, e.id), e) for e in read)
        return list(entries.values()), more or full, history_done

    async def _write(self, entries: list[_Entry]) -> int:
        """Insert the entries' rows, then ack and delete them. What is not acknowledged
        when this fails stays in `_unwritten`, for the next round to retry."""
        rows: dict[tuple[str, datetime], UsageEvent] = {}
        written: list[_Entry] = []
        dropped: list[_Entry] = []
        for index, entry in enumerate(entries):
            if index % PARSE_SLICE == PARSE_SLICE - 1:
                await asyncio.sleep(0)  # let requests run: a batch can be thousands
            flat = entry.fields
            if not flat:  # deleted from the stream while pending
                dropped.append(entry)
                continue
            try:
                event = parse_event(dict(zip(flat[::2], flat[1::2], strict=True)))
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
            await self._ack(dropped)
            self._unwritten = written
        inserted = await self._insert(sorted(rows.values(), key=_row_order)) if rows else 0
        if written:
            await self._ack(written)
        self._unwritten = []
        return inserted

    async def _insert(self, events: Sequence[UsageEvent]) -> int:
        columns: list[list[Any]] = [[] for _ in range(13)]
        for event in events:
            for column, value in zip(columns, _values(event), strict=True):
                column.append(value)
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(_INSERT, *columns)
            await conn.execute(_TOUCH_KEYS, columns[2], columns[1])
        self.writes_ok += 1
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"

    async def _ack(self, entries: Iterable[_Entry]) -> None:
        by_bucket: dict[int, list[bytes]] = {}
        for entry in entries:
            by_bucket.setdefault(entry.bucket, []).append(entry.id)
        commands: list[Command] = []
        for bucket, ids in by_bucket.items():
            stream = self._streams[bucket]
            commands.append((stream, ("XACK", stream, GROUP, *ids)))
            commands.append((stream, ("XDEL", stream, *ids)))
        async with redis_errors():
            replies = await self._redis.pipeline(commands)
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if errors:
            raise errors[0]

    # -- reading -----------------------------------------------------------------------

    async def _read(self) -> tuple[list[_Entry], bool, set[int]]:
        """New entries of every bucket, and first, for buckets in history mode, the ones
        pending for this consumer. Returns them, whether a read filled its batch, and the
        history buckets now read to the end."""
        reads = [(bucket, b"0") for bucket in sorted(self._history)]
        reads += [(bucket, b">") for bucket in range(len(self._streams))]
        replies = list(zip(reads, await self._read_buckets(reads), strict=True))
        missing = sorted({bucket for (bucket, _), reply in replies if _is_nogroup(reply)})
        if missing:
            log.warning("usage writer: consumer group missing on buckets %s; recreated", missing)
            await self._create_groups(missing)
            again = [(bucket, b">") for bucket in missing]
            replies = [r for r in replies if r[0][0] not in missing]
            replies += zip(again, await self._read_buckets(again), strict=True)
        entries: list[_Entry] = []
        full = False
        # A recreated group holds nothing pending for anyone.
        history_done: set[int] = set(missing)
        broken: set[int] = set()
        for (bucket, start), reply in replies:
            if isinstance(reply, Exception):
                if bucket not in self._broken and bucket not in broken:
                    log.error("usage writer: cannot read bucket %d: %s", bucket, reply)
                broken.add(bucket)
                continue
            found = reply[0][1] if reply else []  # [[stream, entries]], or nil: none
            entries.extend(_entries(bucket, found))
            if len(found) >= self._batch_size:
                full = True
            elif start == b"0":
                history_done.add(bucket)
        for bucket in self._broken - broken:
            log.info("usage writer: bucket %d readable again", bucket)
        self._broken = broken
        return entries, full, history_done

    async def _read_buckets(self, reads: list[tuple[int, bytes]]) -> list[Any]:
        commands: list[Command] = []
        for bucket, start in reads:
            stream = self._streams[bucket]
            read = ("XREADGROUP", "GROUP", GROUP, self._consumer, "COUNT", self._batch_size)
            commands.append((stream, (*read, "STREAMS", stream, start)))
        async with redis_errors():
            return await self._redis.pipeline(commands)

    async def _reclaim(self) -> tuple[list[_Entry], bool]:
        """Claim entries idle longer than claim_idle_ms from any consumer (one that died)."""
        buckets = range(len(self._streams))
        commands: list[Command] = []
        for bucket in buckets:
            stream = self._streams[bucket]
            cursor = self._claim_cursors.get(bucket, _DONE_CURSOR)
            claim = ("XAUTOCLAIM", stream, GROUP, self._consumer, self._claim_idle_ms, cursor)
            commands.append((stream, (*claim, "COUNT", self._batch_size)))
        async with redis_errors():
            replies = await self._redis.pipeline(commands)
        entries: list[_Entry] = []
        unfinished = False
        for bucket, reply in zip(buckets, replies, strict=True):
            if isinstance(reply, Exception):
                # NOGROUP is repaired by the read that follows; others are logged there.
                self._claim_cursors.pop(bucket, None)
                continue
            # [next cursor, [(id, fields)...], [ids deleted from the stream]] (Redis 7+).
            # The deleted ids are already gone from the pending list: nothing to ack.
            cursor, claimed = reply[0], reply[1]
            entries.extend(_entries(bucket, claimed))
            if cursor == _DONE_CURSOR:
                self._claim_cursors.pop(bucket, None)
            else:
                self._claim_cursors[bucket] = cursor
                unfinished = True
        if entries:
            log.info("usage writer: claimed %d stale pending events", len(entries))
        return entries, unfinished

    async def _create_groups(self, buckets: Iterable[int]) -> None:
        commands: list[Command] = [
            (self._streams[b], ("XGROUP", "CREATE", self._streams[b], GROUP, "0", "MKSTREAM"))
            for b in buckets
        ]
        async with redis_errors():
            replies = await self._redis.pipeline(commands)
        for reply in replies:
            if isinstance(reply, Exception) and not str(reply).startswith("BUSYGROUP"):
                raise reply


def _row_order(event: UsageEvent) -> tuple[str, datetime]:
    # One order for every writer: two inserting the same rows wait, never deadlock.
    return event.request_id, event.created_at


def _values(event: UsageEvent) -> tuple[Any, ...]:
    return (
        event.request_id,
        event.created_at,
        event.key_id,
        event.project_id,
        event.model,
        event.provider,
        event.prompt_tokens,
        event.completion_tokens,
        event.cost_nano,
        event.status,
        event.duration_ms,
        event.billing,
        event.stream,
    )


def _log_failure(exc: Exception, then: str) -> None:
    if isinstance(exc, StorageUnavailable):
        log.warning("usage writer: %s; %s", exc, then)
    else:
        log.error("usage writer: round failed; %s", then, exc_info=exc)
