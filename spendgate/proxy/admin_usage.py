"""`GET /admin/v1/keys/{kid}/usage`: a key's ledger rows, newest first, and its totals.

Query parameters, each at most once; any other is refused (400 naming it):

- `since`, `until`: RFC 3339 times with `Z` or an offset; the range is [since, until).
  Default: the 30 days up to now (one given: the other is 30 days from it, or now).
- `limit`: rows per page, 1 to 1000, default 100.
- `cursor`: the previous page's `next_cursor`. It carries the range it was issued for:
  `since`/`until` may be left out after the first page, and if given must be the same.

The cursor is opaque and tamper-evident: `base64url(payload) "." base64url(tag)`, where the
payload is the JSON `[1, key id, since, until, created_at, request_id]` (times in epoch
microseconds) and the tag its HMAC-SHA256 under a key derived from the admin token, which
every replica shares. A cursor edited, forged, or issued for another key or range is a 400
naming `cursor`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from multidict import MultiMapping

from spendgate.enforcement.errors import InvalidField
from spendgate.enforcement.money import format_usd
from spendgate.proxy.responses import rfc3339
from spendgate.storage.usage_query import Position, Totals, UsageReport
from spendgate.types import JSONObject

DEFAULT_RANGE = timedelta(days=30)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PARAMS = ("since", "until", "limit", "cursor")
MAX_CURSOR = 1024  # characters; a real one is about 150
CURSOR_VERSION = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST = datetime.min.replace(tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
# RFC 3339 date-time. A space may stand for the T, and for the + of an offset: an
# unencoded + in a query string arrives as a space.
_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([-+ ])([0-9]{2}):([0-9]{2}))"
)


@dataclass(frozen=True, slots=True)
class UsageParams:
    since: datetime
    until: datetime
    limit: int
    after: Position | None


# -- parameters ------------------------------------------------------------------------


def parse_time(text: str, param: str) -> datetime:
    """An RFC 3339 time -> an aware datetime in UTC. A fraction finer than microseconds
    is rounded up: ledger times are microseconds, so [since, until) keeps the same rows."""
    found = _TIME.fullmatch(text)
    if found is None:
        raise InvalidField(param, "must be an RFC 3339 time with Z or an offset")
    year, month, day, hour, minute, second = (int(part) for part in found.groups()[:6])
    fraction, utc, sign, offset_hours, offset_minutes = found.groups()[6:]
    fraction = fraction or ""
    micros = int(fraction[:6].ljust(6, "0"))
    try:
        if utc:
            zone = UTC
        else:
            if int(offset_minutes) > 59:
                raise ValueError("offset minutes")
            offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
            zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(year, month, day, hour, minute, second, micros, tzinfo=zone)
        if fraction[6:].strip("0"):
            moment += _MICRO
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidField(param, "is not a valid RFC 3339 time") from exc


def parse_limit(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidField("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def parse_params(
    query: MultiMapping[str], key_id: str, now: datetime, secret: bytes
) -> UsageParams:
    """The query string -> validated parameters, or InvalidField naming the parameter."""
    for name in query:
        if name not in PARAMS:
            raise InvalidField(name, f"unknown parameter; expected {', '.join(PARAMS)}")
        if len(query.getall(name)) > 1:
            raise InvalidField(name, "is given more than once")
    since = parse_time(query["since"], "since") if "since" in query else None
    until = parse_time(query["until"], "until") if "until" in query else None
    limit = parse_limit(query["limit"]) if "limit" in query else DEFAULT_LIMIT
    after = None
    if "cursor" in query:
        issued = decode_cursor(secret, query["cursor"], key_id)
        if (since or issued.since) != issued.since or (until or issued.until) != issued.until:
            raise InvalidField("cursor", "was issued for another since/until range")
        since, until, after = issued.since, issued.until, issued.position
    if until is None:
        until = now
    if since is None:
        since = max(until, _FIRST + DEFAULT_RANGE) - DEFAULT_RANGE
    if since > until:
        raise InvalidField("since", f"must not be after until ({rfc3339(until)})")
    return UsageParams(since, until, limit, after)


# -- the cursor ------------------------------------------------------------------------


def cursor_secret(admin_token: str) -> bytes:
    """The cursor's HMAC key: derived from the admin token, used for nothing else."""
    return hmac.new(admin_token.encode(), b"spendgate usage cursor", hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Cursor:
    since: datetime
    until: datetime
    position: Position


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICRO


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_cursor(secret: bytes, key_id: str, cursor: Cursor) -> str:
    payload = orjson.dumps(
        [
            CURSOR_VERSION,
            key_id,
            _micros(cursor.since),
            _micros(cursor.until),
            _micros(cursor.position.created_at),
            cursor.position.request_id,
        ]
    )
    tag = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(tag)}"


def decode_cursor(secret: bytes, text: str, key_id: str) -> Cursor:
    """The cursor of `key_id`, or InvalidField("cursor") if it was not issued for it."""
    invalid = InvalidField("cursor", "is not a cursor this endpoint issued")
    if len(text) > MAX_CURSOR or not re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", text):
        raise invalid
    encoded_payload, encoded_tag = text.split(".")
    try:
        payload, tag = _unb64(encoded_payload), _unb64(encoded_tag)
    except (binascii.Error, ValueError):
        raise invalid from None
    expected = hmac.new(secret, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(tag, expected):
        raise invalid
    # Signed by us, so well formed; checked anyway, as a cursor of another version may be.
    fields: Any = orjson.loads(payload)
    if not (
        isinstance(fields, list)
        and len(fields) == 6
        and fields[0] == CURSOR_VERSION
        and all(isinstance(value, int) for value in fields[2:5])
        and all(isinstance(value, str) for value in (fields[1], fields[5]))
    ):
        raise invalid
    if fields[1] != key_id:
        raise InvalidField("cursor", "was issued for another key")
    since, until, created_at = (_EPOCH + value * _MICRO for value in fields[2:5])
    return Cursor(since, until, Position(created_at, fields[5]))


# -- the response ----------------------------------------------------------------------


def _totals_json(totals: Totals) -> JSONObject:
    return {"requests": totals.requests, "cost": format_usd(totals.cost_nano)}


def report_json(report: UsageReport, next_cursor: str | None) -> JSONObject:
    return {
        "requests": [
            {
                "request_id": row.request_id,
                "created_at": rfc3339(row.created_at),
                "model": row.model,
                "provider": row.provider,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "cost": format_usd(row.cost_nano),
                "status": row.status,
                "duration_ms": row.duration_ms,
                "billing": row.billing,
                "stream": row.stream,
            }
            for row in report.rows
        ],
        "next_cursor": next_cursor,
        "totals": {
            **_totals_json(report.totals),
            "prompt_tokens": report.totals.prompt_tokens,
            "completion_tokens": report.totals.completion_tokens,
        },
        "by_day": [{"day": day.isoformat(), **_totals_json(t)} for day, t in report.by_day],
        "by_model": [{"model": model, **_totals_json(t)} for model, t in report.by_model],
    }
