"""The ledger's side of the usage streams: one consumer of the group "ledger" on every
bucket's stream, `<prefix>:{b<N>}:usage` (one XREADGROUP per bucket, all of them in one
pipeline: one round trip per node, and no command spans two cluster slots).

`fetch()` returns what is there to write: first, when due, entries idle longer than
`claim_idle_ms` in any consumer (one that died; XAUTOCLAIM); then, for buckets in history
mode, this consumer's own pending entries (a restart under the same name, or a read that
failed on the way back); then new ones. `ack()` acknowledges and deletes written entries
(XACK + XDEL; never MAXLEN trimming, which could drop unacknowledged events). The writer
(usage_writer.py) calls `ack()` only after the transaction that wrote them committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

from spendgate.storage.redis_client import redis_errors
from spendgate.storage.resp import Command, RedisCommands, ReplyError
from spendgate.storage.usage_events import usage_stream_key

log = logging.getLogger(__name__)

GROUP: Final = "ledger"
# Stale entries of dead consumers are looked for this often at most.
RECLAIM_EVERY_MAX: Final = 5.0
_DONE_CURSOR = b"0-0"


class StreamEntry(NamedTuple):
    bucket: int
    id: bytes
    # [field, value, ...] as Redis sent them; nil for an entry deleted from the stream while
    # it was pending. Made a dict only where it is parsed, a slice of the batch at a time.
    fields: list[bytes] | None


def _is_nogroup(reply: object) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOGROUP")


def _entries(bucket: int, found: list[list[Any]]) -> list[StreamEntry]:
    """Stream entries as Redis sends them, `[id, [field, value, ...]]`."""
    return [StreamEntry(bucket, id_, flat) for id_, flat in found if id_ is not None]


class UsageStreams:
    """The consumer `consumer` of every bucket's stream. `batch_size` bounds each read of
    one bucket (XREADGROUP / XAUTOCLAIM COUNT)."""

    def __init__(
        self,
        redis: RedisCommands,
        *,
        prefix: str,
        buckets: int,
        consumer: str,
        batch_size: int,
        claim_idle_ms: int,
    ) -> None:
        self._redis = redis
        self._streams = [usage_stream_key(prefix, bucket) for bucket in range(buckets)]
        self.consumer = consumer
        self._batch_size = batch_size
        self._claim_idle_ms = claim_idle_ms
        self._reclaim_every = min(RECLAIM_EVERY_MAX, claim_idle_ms / 2000)
        self._next_reclaim = float("-inf")
        self._claim_cursors: dict[int, bytes] = {}
        # Buckets whose entries pending for this consumer are read again (id "0"), next to
        # new ones: all at start (a restart under the same name), all after a read failed.
        self._history: set[int] = set(range(buckets))
        self._broken: set[int] = set()

    async def ensure_groups(self) -> None:
        """Create the group on every bucket's stream if missing. From id 0, with MKSTREAM:
        events appended before the group existed are read too."""
        await self.create_groups(range(len(self._streams)))

    async def backlog(self) -> int:
        """Events in the streams not yet written: written ones are deleted, so this is
        the sum of the streams' lengths."""
        async with redis_errors():
            lengths = await self._redis.pipeline(
                [(stream, ("XLEN", stream)) for stream in self._streams]
            )
        return sum(int(length) for length in lengths)

    async def fetch(self) -> tuple[list[StreamEntry], bool]:
        """What there is to write, without duplicates, and whether to go again at once (a
        full read, or an unfinished reclaim scan)."""
        try:
            entries, more, history_done = await self._fetch()
        except BaseException:
            # A reply lost on the way may have delivered entries to this consumer.
            self._history.update(range(len(self._streams)))
            raise
        self._history.difference_update(history_done)
        return entries, more

    async def _fetch(self) -> tuple[list[StreamEntry], bool, set[int]]:
        """Stale entries claimed (when a reclaim is due) and every bucket's reads, without
        duplicates; whether to go again at once; the history buckets read to the end."""
        entries: dict[tuple[int, bytes], StreamEntry] = {}
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

    async def ack(self, entries: Iterable[StreamEntry]) -> None:
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

    async def _read(self) -> tuple[list[StreamEntry], bool, set[int]]:
        """New entries of every bucket, and first, for buckets in history mode, the ones
        pending for this consumer. Returns them, whether a read filled its batch, and the
        history buckets now read to the end."""
        reads = [(bucket, b"0") for bucket in sorted(self._history)]
        reads += [(bucket, b">") for bucket in range(len(self._streams))]
        replies = list(zip(reads, await self._read_buckets(reads), strict=True))
        missing = sorted({bucket for (bucket, _), reply in replies if _is_nogroup(reply)})
        if missing:
            log.warning("usage streams: consumer group missing on buckets %s; recreated", missing)
            await self.create_groups(missing)
            again = [(bucket, b">") for bucket in missing]
            replies = [r for r in replies if r[0][0] not in missing]
            replies += zip(again, await self._read_buckets(again), strict=True)
        entries: list[StreamEntry] = []
        full = False
        # A recreated group holds nothing pending for anyone.
        history_done: set[int] = set(missing)
        broken: set[int] = set()
        for (bucket, start), reply in replies:
            if isinstance(reply, Exception):
                if bucket not in self._broken and bucket not in broken:
                    log.error("usage streams: cannot read bucket %d: %s", bucket, reply)
                broken.add(bucket)
                continue
            found = reply[0][1] if reply else []  # [[stream, entries]], or nil: none
            entries.extend(_entries(bucket, found))
            if len(found) >= self._batch_size:
                full = True
            elif start == b"0":
                history_done.add(bucket)
        for bucket in self._broken - broken:
            log.info("usage streams: bucket %d readable again", bucket)
        self._broken = broken
        return entries, full, history_done

    async def _read_buckets(self, reads: list[tuple[int, bytes]]) -> list[Any]:
        commands: list[Command] = []
        for bucket, start in reads:
            stream = self._streams[bucket]
            read = ("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self._batch_size)
            commands.append((stream, (*read, "STREAMS", stream, start)))
        async with redis_errors():
            return await self._redis.pipeline(commands)

    async def _reclaim(self) -> tuple[list[StreamEntry], bool]:
        """Claim entries idle longer than claim_idle_ms from any consumer (one that died)."""
        buckets = range(len(self._streams))
        commands: list[Command] = []
        for bucket in buckets:
            stream = self._streams[bucket]
            cursor = self._claim_cursors.get(bucket, _DONE_CURSOR)
            claim = ("XAUTOCLAIM", stream, GROUP, self.consumer, self._claim_idle_ms, cursor)
            commands.append((stream, (*claim, "COUNT", self._batch_size)))
        async with redis_errors():
            replies = await self._redis.pipeline(commands)
        entries: list[StreamEntry] = []
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
            log.info("usage streams: claimed %d stale pending events", len(entries))
        return entries, unfinished

    async def create_groups(self, buckets: Iterable[int]) -> None:
        commands: list[Command] = [
            (self._streams[b], ("XGROUP", "CREATE", self._streams[b], GROUP, "0", "MKSTREAM"))
            for b in buckets
        ]
        async with redis_errors():
            replies = await self._redis.pipeline(commands)
        for reply in replies:
            if isinstance(reply, Exception) and not str(reply).startswith("BUSYGROUP"):
                raise reply
