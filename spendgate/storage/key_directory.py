"""Finding the key behind a token: in-process cache -> Redis -> Postgres.

The in-process cache keeps a key for a few seconds; an invalidation message (published by
the admin path on every change) drops it at once in every process. A token no key has is
remembered in Redis as unknown for a few seconds, so forged tokens with a valid checksum
cannot each cost a Postgres query. When Redis has lost a key's record (it restarted
empty), the record and its counters are rebuilt from Postgres: the key row and the
ledger's sums.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import orjson
from redis.asyncio.client import Redis

from spendgate.enforcement.iam import parse_rules
from spendgate.enforcement.keys import ApiKey, Clock, KeyUsage, Principal
from spendgate.enforcement.windows import Window, from_epoch_ms
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.redis_client import RedisClient, redis_errors
from spendgate.storage.redis_keys import KeyRecords
from spendgate.storage.repository import Repository

log = logging.getLogger(__name__)

UNKNOWN = b"-"
UNKNOWN_TTL_MS = 5000
_FIELDS = ("status", "project", "r_every", "r_unit", "anchor", "used", "rules")


class KeyDirectory:
    def __init__(
        self,
        redis: RedisClient,
        listeners: Sequence[Redis],
        records: KeyRecords,
        repo: Repository,
        clock: Clock,
        *,
        ttl: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        # Connections without the hot path's short timeouts, tried in turn: on a cluster,
        # a client per seed node (PUBLISH reaches every node); else just one.
        self._listeners = list(listeners)
        self._records = records
        self._repo = repo
        self._clock = clock
        self._ttl = ttl
        self._monotonic = monotonic
        self._cache: dict[bytes, tuple[float, Principal]] = {}
        self._token_of: dict[str, bytes] = {}
        self.hits = 0
        self.misses = 0

    def cached(self, token_hash: bytes) -> Principal | None:
        """The key of a token from this process's cache, or None (then ask `find`)."""
        entry = self._cache.get(token_hash)
        if entry is not None and entry[0] > self._monotonic():
            self.hits += 1
            return entry[1]
        return None

    async def find(self, token_hash: bytes) -> Principal | None:
        """The key of a token, or None if no (undeleted) key has it."""
        principal = self.cached(token_hash)
        if principal is not None:
            return principal
        self.misses += 1
        return await self.refresh(token_hash)

    async def refresh(self, token_hash: bytes) -> Principal | None:
        """Look the token up in Redis (and Postgres), bypassing the process cache."""
        principal = await self._lookup(token_hash)
        if principal is None:
            self._cache.pop(token_hash, None)
            return None
        self._cache[token_hash] = (self._monotonic() + self._ttl, principal)
        self._token_of[principal.key_id] = token_hash
        return principal

    def drop(self, key_id: str) -> None:
        token_hash = self._token_of.pop(key_id, None)
        if token_hash is not None:
            self._cache.pop(token_hash, None)

    def clear(self) -> None:
        self._cache.clear()
        self._token_of.clear()

    async def _lookup(self, token_hash: bytes) -> Principal | None:
        token_key = self._records.token_key(token_hash)
        async with redis_errors():
            found = await self._redis.get(token_key)
        if found == UNKNOWN:
            return None
        if found is None:
            key = await self._repo.key_by_token_hash(token_hash)
            if key is None:
                async with redis_errors():
                    await self._redis.set(token_key, UNKNOWN, px=UNKNOWN_TTL_MS, nx=True)
                return None
            await self.restore(key, token_hash)
            key_id = key.id
        else:
            key_id = found.decode() if isinstance(found, bytes) else found
        record = await self._read(key_id)
        if record is None or record.get("used") is None:
            key = await self._repo.find_key(key_id)
            if key is None:
                return None
            await self.restore(key)
            record = await self._read(key_id)
        if record is None or record.get("status") in (None, "deleted"):
            return None
        return _principal(key_id, record)

    async def _read(self, key_id: str) -> dict[str, str | None] | None:
        async with redis_errors():
            values = await self._redis.hmget(self._records.record_key(key_id), _FIELDS)
        if all(v is None for v in values):
            return None
        return {f: _text(v) for f, v in zip(_FIELDS, values, strict=True)}

    async def restore(self, key: ApiKey, token_hash: bytes | None = None) -> None:
        """Rebuild a key's record and counters from Postgres (the row and ledger sums)."""
        period = key.period_at(self._clock.now())
        since = None if period is None else period.started_at
        used, period_used = await self._repo.ledger_usage(key.id, since)
        counters = KeyUsage(used=used, period_start=since, period_used=period_used)
        await self._records.write(key, token_hash, counters=counters)
        log.info("rebuilt the Redis record of key %s from Postgres", key.id)

    async def listen(
        self,
        ready: asyncio.Event | None = None,
        others: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        """Drop cached keys as invalidation messages arrive; runs until cancelled. After a
        lost connection the whole cache is dropped (messages may have been missed), and
        the next listener is tried. `others` routes messages "<kind>:<id>" (e.g.
        "byok:<project id>") to other caches."""
        routes = dict(others or {})
        delay = 0.1
        attempt = 0
        while True:
            listener = self._listeners[attempt % len(self._listeners)]
            attempt += 1
            try:
                async with redis_errors():
                    pubsub = listener.pubsub(ignore_subscribe_messages=True)
                    await pubsub.subscribe(self._records.invalidation_channel)
                    self.clear()
                    if ready is not None:
                        ready.set()
                    delay = 0.1
                    try:
                        async for message in pubsub.listen():
                            if message.get("type") != "message":
                                continue
                            data = message["data"].decode()
                            kind, _, ident = data.partition(":")
                            route = routes.get(kind) if ident else None
                            if route is not None:
                                route(ident)
                            else:
                                self.drop(data)
                    finally:
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            except StorageUnavailable:
                log.warning("invalidation channel lost; retrying in %.1fs", delay)
                self.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def _principal(key_id: str, record: dict[str, str | None]) -> Principal:
    window = None
    if record.get("r_every") and record.get("r_unit"):
        window = Window(int(record["r_every"] or 0), record["r_unit"])  # type: ignore[arg-type]
    anchor_ms = record.get("anchor")
    anchor = from_epoch_ms(int(anchor_ms)) if anchor_ms else None
    rules = tuple(parse_rules(orjson.loads(record.get("rules") or "[]")))
    return Principal(key_id, record.get("project") or "", window, anchor, rules)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
