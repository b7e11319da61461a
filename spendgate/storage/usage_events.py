"""Usage events in the Redis streams: where they are, and how an entry becomes a ledger row.

The settle script appends one event per request to the stream of the key's bucket
(`usage_stream_key`); `parse_event` turns an entry's fields into the `usage_events` row,
rejecting only what the table could not store.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from spendgate.enforcement.windows import from_epoch_ms

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# datetime's range (years 1-9999) is narrower than timestamptz's; a later time is garbage.
_MAX_EPOCH_MS = 253_402_300_799_999


def usage_stream_key(prefix: str, bucket: int) -> str:
    """The usage stream of one bucket; the hash tag keeps it in the bucket's slot."""
    return f"{prefix}:{{b{bucket}}}:usage"


class UsageEvent(NamedTuple):
    """One ledger row, as parsed from a stream entry, its fields in the table's column
    order (the ledger writer sends rows as plain tuples)."""

    request_id: str
    created_at: datetime
    key_id: str
    project_id: str
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cost_nano: int
    status: int
    duration_ms: int
    billing: str
    stream: bool


class MalformedEvent(ValueError):
    """A stream entry that cannot become a row; `field` names the first bad field."""

    def __init__(self, field: str) -> None:
        super().__init__(f"missing or invalid field {field!r}")
        self.field = field


def _text(fields: dict[bytes, bytes], name: bytes) -> str:
    raw = fields.get(name)
    try:
        value = raw.decode("utf-8") if raw is not None else ""
    except UnicodeDecodeError:
        value = ""
    if not value or "\x00" in value:  # Postgres text cannot hold NUL
        raise MalformedEvent(name.decode())
    return value


def _int(fields: dict[bytes, bytes], name: bytes, bounds: tuple[int, int]) -> int:
    raw = fields.get(name)
    if raw is None:
        raise MalformedEvent(name.decode())
    # ASCII digits, an optional minus, at most 19 digits: what int() would also take with
    # spaces, underscores or a plus is refused.
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or len(digits) > 19:
        raise MalformedEvent(name.decode())
    value = int(raw)
    if not bounds[0] <= value <= bounds[1]:
        raise MalformedEvent(name.decode())
    return value


def parse_event(fields: dict[bytes, bytes]) -> UsageEvent:
    """The row of a stream entry. Rejects only what the table could not store (missing,
    unparsable or out-of-range values), so one bad event can never fail a whole batch."""
    billing = _text(fields, b"billing")
    if billing not in ("credits", "byok"):
        raise MalformedEvent("billing")
    stream = fields.get(b"stream")
    if stream not in (b"0", b"1"):
        raise MalformedEvent("stream")
    return UsageEvent(
        request_id=_text(fields, b"request_id"),
        created_at=from_epoch_ms(_int(fields, b"created_at", (0, _MAX_EPOCH_MS))),
        key_id=_text(fields, b"key_id"),
        project_id=_text(fields, b"project_id"),
        model=_text(fields, b"model"),
        provider=_text(fields, b"provider"),
        prompt_tokens=_int(fields, b"prompt_tokens", _INT32),
        completion_tokens=_int(fields, b"completion_tokens", _INT32),
        cost_nano=_int(fields, b"cost", _INT64),
        status=_int(fields, b"status", _INT32),
        duration_ms=_int(fields, b"duration_ms", _INT32),
        billing=billing,
        stream=stream == b"1",
    )


# The field names in the order the settle script appends them (UsageEvent.fields() in
# enforcement/usage.py), which is also the row's column order.
_NAMES = [
    b"request_id",
    b"created_at",
    b"key_id",
    b"project_id",
    b"model",
    b"provider",
    b"prompt_tokens",
    b"completion_tokens",
    b"cost",
    b"status",
    b"duration_ms",
    b"billing",
    b"stream",
]


def parse_entry(flat: list[bytes]) -> UsageEvent:
    """`parse_event` of a stream entry's fields as Redis lists them (name, value, ...).
    An entry as the settle script writes it, in its order and with values that plainly
    fit, is checked in a few bulk steps; any other goes the field-by-field way, which
    names the bad field. Both give the same row, or the same MalformedEvent."""
    if flat[0::2] == _NAMES:
        (rid, created, kid, pid, model, provider) = flat[1:12:2]
        (prompt, completion, cost, status, duration, billing, stream) = flat[13::2]
        small = (prompt, completion, status, duration)
        texts = (rid, kid, pid, model, provider)
        if (
            b"".join((created, cost, *small)).isdigit()  # no sign: all are >= 0
            and 0 < len(created) <= 14  # <= _MAX_EPOCH_MS, which has 15 digits
            and 0 < len(cost) <= 18  # int64
            and 0 < min(map(len, small))
            and max(map(len, small)) <= 9  # int32
            and billing in (b"credits", b"byok")
            and stream in (b"0", b"1")
            and all(texts)
            and b"\0" not in b"".join(texts)  # Postgres text cannot hold NUL
        ):
            try:
                decoded = [text.decode("utf-8") for text in texts]
            except UnicodeDecodeError:
                pass
            else:
                return UsageEvent(
                    decoded[0],
                    from_epoch_ms(int(created)),
                    decoded[1],
                    decoded[2],
                    decoded[3],
                    decoded[4],
                    int(prompt),
                    int(completion),
                    int(cost),
                    int(status),
                    int(duration),
                    billing.decode(),
                    stream == b"1",
                )
    return parse_event(dict(zip(flat[::2], flat[1::2], strict=True)))
