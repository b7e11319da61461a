"""Pieces for relaying an upstream server-sent event stream.

The relay passes every event through byte for byte and looks inside only where it must:
the usage chunk (to settle), [DONE], and whether a chunk delivered output (to price a cut
stream). Each check starts with a `bytes.find` (or one regex pass), so an ordinary content
chunk costs a few memchr-speed scans and no JSON parsing; the usage chunk is parsed once.

Line endings: LF and CRLF (and a mix of them). A bare CR as a line ending, which the SSE
spec allows but no LLM provider sends, is not recognised as an event boundary.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from spendgate.enforcement.usage import Usage

DONE = b"data: [DONE]\n\n"


class EventSplitter:
    """Incremental: feed raw bytes as they arrive, get complete SSE events back.

    Each event comes back as the exact bytes received, its terminating blank line included,
    so relaying the events in order reproduces the stream.
    """

    __slots__ = ("_buffer", "_scan")

    def __init__(self) -> None:
        self._buffer = b""
        self._scan = 0  # where the next search resumes: earlier bytes hold no boundary

    def feed(self, data: bytes) -> list[bytes]:
        if not self._buffer and data.endswith(b"\n\n") and data.find(b"\n") == len(data) - 2:
            return [data]  # the usual read: one whole one-line event, and nothing more
        buffer = self._buffer + data if self._buffer else data
        events: list[bytes] = []
        start = 0
        # Line by line: a line ending ("\n", or the "\r\n" that contains it) followed by
        # another ("\n" or "\r\n") is the blank line that ends an event. That is a few
        # memchr-speed finds per event, as events have one or two lines (data, maybe event).
        at = buffer.find(b"\n", self._scan)
        while at >= 0:
            if buffer.startswith(b"\n", at + 1):
                end = at + 2
            elif buffer.startswith(b"\r\n", at + 1):
                end = at + 3
            else:
                at = buffer.find(b"\n", at + 1)
                continue
            events.append(buffer[start:end])
            start = end
            at = buffer.find(b"\n", end)
        self._buffer = buffer[start:]
        # A boundary is at most 3 bytes long: one may straddle the old tail and the next feed.
        self._scan = max(0, len(self._buffer) - 2)
        return events

    def remainder(self) -> bytes:
        """The bytes of an incomplete event still buffered (a stream that ended mid-event)."""
        return self._buffer


def last_event_end(buffer: bytes, start: int = 0, end: int | None = None) -> int:
    """The index just past the last blank line (an event's end) within buffer[start:end],
    or -1. Blank lines: "\n\n" (LF, or CRLF then LF) and "\n\r\n" (CRLF, or LF then
    CRLF)."""
    lf = buffer.rfind(b"\n\n", start, end)
    crlf = buffer.rfind(b"\n\r\n", start, end)
    return max(lf + 2 if lf >= 0 else -1, crlf + 3 if crlf >= 0 else -1)


def event_data(event: bytes) -> bytes | None:
    """The event's `data` field: its `data:` lines joined with "\\n"; None when it has none."""
    body = event.rstrip(b"\r\n")
    if body.startswith(b"data:") and b"\n" not in body and b"\r" not in body:
        return body[6:] if body[5:6] == b" " else body[5:]  # the usual one-line event
    lines: list[bytes] = []
    for line in body.splitlines():  # bytes.splitlines splits on \n, \r\n and \r only
        if not line.startswith(b"data"):
            continue
        if len(line) == 4:  # a bare "data" line: the field with an empty value
            lines.append(b"")
        elif line[4:5] == b":":
            lines.append(line[6:] if line[5:6] == b" " else line[5:])
    return b"\n".join(lines) if lines else None


def is_done(event: bytes) -> bool:
    return b"[DONE]" in event and event_data(event) == b"[DONE]"


def _usage_chunk(event: bytes) -> dict[str, Any] | None:
    """The parsed chunk when it may carry a non-null `usage` object, else None (unparsed)."""
    if not _has_non_null_key(event, b'"usage"'):
        return None
    data = event_data(event)
    if data is None:
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
        return None
    return chunk


def _has_non_null_key(event: bytes, key: bytes) -> bool:
    """Whether `key` (quoted) occurs as an object key whose value is not null.

    Inside a JSON string a quote is escaped, so a quoted key can only match a real string
    token; one followed by ':' is a key (at some depth: the caller parses to be sure).
    """
    at = event.find(key)
    while at >= 0:
        after = at + len(key)
        # the two spellings of null that encoders produce, before the general walk
        if not event.startswith(_NULLS, after):
            value = _value_start(event, after)
            if value >= 0 and not event.startswith(b"null", value):
                return True
        at = event.find(key, after)
    return False


_NULLS = (b":null", b": null")


def _value_start(event: bytes, after_key: int) -> int:
    """The index of the value after a key ending at `after_key`, or -1 if no ':' follows."""
    i = after_key
    n = len(event)
    while i < n and event[i] in b" \t":
        i += 1
    if i >= n or event[i] != 0x3A:  # ":"
        return -1
    i += 1
    while i < n and event[i] in b" \t":
        i += 1
    return i


def reported_usage(event: bytes) -> tuple[Usage, bool] | None:
    """The usage a chunk reports (a non-null, well-formed top-level `usage` object), and
    whether it is the extra chunk `stream_options.include_usage` adds (usage set, no
    choices); None when it reports none."""
    chunk = _usage_chunk(event)
    if chunk is None:
        return None
    usage = Usage.from_openai(chunk["usage"])
    return None if usage is None else (usage, not chunk.get("choices"))


# Keys of a chat delta or completion choice that carry output, most common first.
_OUTPUT_KEYS = (
    b'"content"',
    b'"text"',
    b'"tool_calls"',
    b'"reasoning_content"',
    b'"reasoning"',
    b'"refusal"',
    b'"function_call"',
    b'"audio"',
)


# An output key and a non-empty value: a string not closed at once, a list or an object
# not closed at once.
_OUTPUT_VALUE = re.compile(
    b"(?:"
    + b"|".join(map(re.escape, _OUTPUT_KEYS))
    + rb')[ \t]*:[ \t]*(?:"(?!")|\[(?![ \t\r\n]*\])|\{(?![ \t\r\n]*\}))'
)
# What `_has_non_null_key(event, b'"usage"')` looks for, over many events at once.
_NON_NULL_USAGE = re.compile(rb'"usage"[ \t]*:[ \t]*(?!null)')


def count_output(events: bytes) -> int:
    """The output values in `events` (whole events): each non-empty content, text, tool
    calls, refusal or reasoning value. Providers stream one a chunk, about one a token;
    the role-only first chunk (`"content": ""`), a finish chunk (`"delta": {}`), a
    usage-only chunk, [DONE] and comments carry none.

    A byte scan in one pass, no parsing: an escaped string value that happens to look like
    one of these keys cannot fool it (quotes inside strings are escaped), but it trusts the
    chunks to be OpenAI-shaped."""
    return len(_OUTPUT_VALUE.findall(events))


def usage_candidate(events: bytes) -> int:
    """Where the first usage key with a value that is not null is in `events`, or -1: the
    events before it report no usage; from the one holding it on, `reported_usage` tells."""
    found = _NON_NULL_USAGE.search(events)
    return -1 if found is None else found.start()


def error_event(message: str, type_: str, code: str) -> bytes:
    """An OpenAI error envelope as an SSE event, for an error after streaming has started."""
    envelope = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + orjson.dumps(envelope) + b"\n\n"
