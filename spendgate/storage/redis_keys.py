"""Key records in Redis: what the proxy needs for each key, written after Postgres commits.

Layout (every key of one API key shares the hash tag {b<N>}, see DESIGN.md "Scale-out"):

    <prefix>:{b<N>}:key:<key_id>   HASH   the key record
        version       Postgres version it was written from (stale writes are refused)
        status        active | inactive | deleted (a tombstone that expires)
        project       project id
        limit         all-time limit in nano-USD, "" for none
        r_amount, r_every, r_unit      the recurring limit, "" for none
        rules         the key's IAM rules, JSON as the admin API shows them
        anchor        period anchor, epoch ms, "" for none
        used          all-time settled usage, nano-USD          (counters, written by
        p_start       start of the period p_used belongs to, ms  the spend scripts; the
        p_used        settled usage of that period, nano-USD     admin path only resets)
    <prefix>:tok:<sha256 hex>      STRING key_id, the token lookup
    <prefix>:invalidate            pub/sub channel; each message is a key id whose cached
                                   record every process drops at once
"""

from __future__ import annotations

from datetime import timedelta

import orjson

from spendgate.enforcement.keys import ApiKey, KeyUsage, bucket_of
from spendgate.enforcement.windows import from_epoch_ms, to_epoch_ms
from spendgate.storage.redis_client import RedisClient, load_script, redis_errors

TOMBSTONE_TTL = timedelta(days=1)
_COUNTERS = (b"used", b"p_start", b"p_used")


class KeyRecords:
    """Writes key records and token lookups, reads counters, publishes invalidations."""

    def __init__(self, client: RedisClient, prefix: str, buckets: int) -> None:
        self._redis = client
        self._prefix = prefix
        self._buckets = buckets
        self._sync = load_script(client, "sync_key")

    @property
    def invalidation_channel(self) -> str:
        return f"{self._prefix}:invalidate"

    def record_key(self, key_id: str) -> str:
        return f"{self._prefix}:{{b{bucket_of(key_id, self._buckets)}}}:key:{key_id}"

    def token_key(self, token_hash: bytes) -> str:
        return f"{self._prefix}:tok:{token_hash.hex()}"

    async def write(
        self, key: ApiKey, token_hash: bytes | None = None, counters: KeyUsage | None = None
    ) -> bool:
        """Write the key's configuration (and, for a new key, its token lookup), then tell
        every process to drop its cached copy. `counters` seed a record that has none (a new
        key: zeros; a record Redis lost: the ledger's sums). Returns False if Redis held
        the same version or a newer one."""
        anchor = "" if key.period_anchor is None else str(to_epoch_ms(key.period_anchor))
        seed: list[str | int] = ["", "", ""]
        if counters is not None:
            start = counters.period_start
            seed = [
                counters.used,
                counters.period_used,
                "" if start is None else to_epoch_ms(start),
            ]
        recurring = key.recurring_limit
        fields: list[str | int] = [
            "status",
            key.status,
            "project",
            key.project_id,
            "limit",
            "" if key.usage_limit is None else key.usage_limit,
            "r_amount",
            "" if recurring is None else recurring.amount,
            "r_every",
            "" if recurring is None else recurring.window.every,
            "r_unit",
            "" if recurring is None else recurring.window.unit,
            "rules",
            orjson.dumps(key.iam_rules).decode(),
        ]
        async with redis_errors():
            applied = await self._sync(
                keys=[self.record_key(key.id)], args=[key.version, 0, anchor, *seed, *fields]
            )
            if token_hash is not None:
                await self._redis.set(self.token_key(token_hash), key.id)
            await self._redis.publish(self.invalidation_channel, key.id)
        return bool(applied)

    async def delete(self, key: ApiKey, token_hash: bytes) -> None:
        """Leave a tombstone newer than any write still in flight, drop the token lookup."""
        ttl_ms = int(TOMBSTONE_TTL.total_seconds() * 1000)
        async with redis_errors():
            await self._sync(
                keys=[self.record_key(key.id)],
                args=[key.version + 1, ttl_ms, "", "", "", "", "status", "deleted"],
            )
            await self._redis.delete(self.token_key(token_hash))
            await self._redis.publish(self.invalidation_channel, key.id)

    async def usage(self, key_ids: list[str]) -> dict[str, KeyUsage]:
        """The counters of each key, in one round trip."""
        async with redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            for key_id in key_ids:
                pipe.hmget(self.record_key(key_id), _COUNTERS)
            replies = await pipe.execute()
        result = {}
        for key_id, (used, p_start, p_used) in zip(key_ids, replies, strict=True):
            result[key_id] = KeyUsage(
                used=int(used or 0),
                period_start=from_epoch_ms(int(p_start)) if p_start else None,
                period_used=int(p_used or 0),
            )
        return result
