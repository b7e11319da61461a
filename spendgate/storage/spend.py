"""Spend in Redis: admission and settle, each one Lua script, one round trip.

Besides the key record (see redis_keys.py) each API key has, under the same hash tag:

    <prefix>:{b<N>}:res:<key_id>    HASH  request id -> "<reserved nano>|<period start ms>"
                                          ("x|..." once expired: settle still charges once)
    <prefix>:{b<N>}:resx:<key_id>   ZSET  request id scored by when its reservation expires
    <prefix>:{b<N>}:usage           STREAM the bucket's usage events, read by the ledger writer
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from spendgate.enforcement.errors import ApiKeyDisabled, LimitExceeded
from spendgate.enforcement.keys import Principal, bucket_of
from spendgate.enforcement.usage import UsageEvent
from spendgate.enforcement.windows import from_epoch_ms, to_epoch_ms
from spendgate.storage.errors import RecordMissing, RecordStale
from spendgate.storage.redis_client import lua_source, redis_errors
from spendgate.storage.resp import RedisCommands, Script

RESERVATION_TTL = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Admitted:
    reserved: int  # nano-USD held for the request
    output_tokens: int | None  # the lowered output cap per choice (hard mode), else None
    period_start_ms: str  # the period the request belongs to ("" without a recurring limit)


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    request_id: str
    now: datetime
    input_cost: int
    output_cost: int
    output_price: int  # nano-USD per million output tokens
    output_tokens: int  # per choice, as asked (or the default)
    choices: int
    hard: bool


class SpendStore:
    def __init__(
        self,
        client: RedisCommands,
        prefix: str,
        buckets: int,
        reservation_ttl: timedelta = RESERVATION_TTL,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._buckets = buckets
        self._ttl_ms = int(reservation_ttl.total_seconds() * 1000)
        self._admit = Script(lua_source("admit"))
        self._settle = Script(lua_source("settle"))

    def _keys(self, key_id: str) -> list[str]:
        tag = f"{self._prefix}:{{b{bucket_of(key_id, self._buckets)}}}"
        return [f"{tag}:key:{key_id}", f"{tag}:res:{key_id}", f"{tag}:resx:{key_id}"]

    def stream_key(self, key_id: str) -> str:
        return f"{self._prefix}:{{b{bucket_of(key_id, self._buckets)}}}:usage"

    async def admit(self, principal: Principal, request: AdmissionRequest) -> Admitted:
        """Reserve the request's estimate, or raise ApiKeyDisabled / LimitExceeded.
        RecordStale: the principal's anchor is out of date; RecordMissing: Redis has no
        complete record of the key. The caller refreshes or restores and tries again."""
        period = principal.period_at(request.now)
        anchor = "" if principal.anchor is None else str(to_epoch_ms(principal.anchor))
        start = end = ""
        if period is not None:
            start, end = str(to_epoch_ms(period.started_at)), str(to_epoch_ms(period.resets_at))
        async with redis_errors():
            reply = await self._redis.run(
                self._admit,
                self._keys(principal.key_id),
                [
                    to_epoch_ms(request.now),
                    request.request_id,
                    anchor,
                    start,
                    end,
                    request.input_cost,
                    request.output_cost,
                    "hard" if request.hard else "reserve",
                    request.output_price,
                    request.output_tokens,
                    request.choices,
                    self._ttl_ms,
                ],
            )
        outcome = reply[0].decode()
        if outcome == "ok":
            tokens = int(reply[2])
            return Admitted(int(reply[1]), tokens if tokens >= 0 else None, reply[3].decode())
        if outcome == "inactive":
            raise ApiKeyDisabled()
        if outcome == "stale":
            raise RecordStale(principal.key_id)
        if outcome == "missing":
            raise RecordMissing(principal.key_id)
        in_flight = int(reply[1]) == 0
        if outcome == "period":
            assert period is not None
            wait = (period.resets_at - request.now).total_seconds()
            retry_after = 1 if in_flight else max(1, math.ceil(wait))
            raise LimitExceeded("recurring", in_flight, period.resets_at, retry_after)
        raise LimitExceeded("all_time", in_flight, None, 1 if in_flight else None)

    async def settle(self, event: UsageEvent) -> bool:
        """Replace the reservation with the actual cost and append the event; False when
        the request was settled already."""
        async with redis_errors():
            reply = await self._redis.run(
                self._settle,
                [*self._keys(event.key_id), self.stream_key(event.key_id)],
                [event.request_id, event.cost, *event.fields()],
            )
        return bool(reply[0])

    async def extend(self, key_id: str, request_id: str, until: datetime) -> None:
        """Push a still-running request's reservation expiry out (long streams)."""
        async with redis_errors():
            await self._redis.execute(
                "ZADD", self._keys(key_id)[2], "XX", to_epoch_ms(until), request_id
            )


def period_start(admitted: Admitted) -> datetime | None:
    return from_epoch_ms(int(admitted.period_start_ms)) if admitted.period_start_ms else None
