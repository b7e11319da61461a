"""Hostile JSON values and the JSON text they are sent as.

A generated value is plain Python JSON data plus three markers the encoder writes verbatim:
`Raw` (number text Python would not produce: `1e400`, `-0`, 30-digit integers, and deep
nesting), `Dup` (an object whose keys repeat) and lone surrogates in strings, which
`ensure_ascii` writes as `\\ud800` escapes and the UTF-8 form as invalid bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

DEEP = 10_000  # nesting levels


@dataclass(frozen=True)
class Raw:
    """JSON text written as is."""

    text: str


@dataclass(frozen=True)
class Dup:
    """A JSON object with its keys in order, repeats allowed: `{"a": 1, "a": "x"}`."""

    pairs: tuple[tuple[str, Any], ...]


def encode(value: Any, ascii_only: bool = True) -> bytes:
    """`value` as JSON bytes. Without `ascii_only`, strings go out as UTF-8, and a lone
    surrogate as the (invalid) bytes `surrogatepass` gives it."""
    return _text(value, ascii_only, {}).encode("utf-8", "surrogatepass")


def _text(value: Any, ascii_only: bool, done: dict[int, str]) -> str:
    """`done` holds the text of the containers met so far, by identity: a list of one item
    repeated a hundred times is encoded once."""
    if isinstance(value, dict | list | tuple | Dup):
        known = done.get(id(value))
        if known is None:
            known = done[id(value)] = _container_text(value, ascii_only, done)
        return known
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)
    if value is None or isinstance(value, bool | int):
        return json.dumps(value)
    if isinstance(value, float):
        return json.dumps(value, allow_nan=True)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _container_text(value: Any, ascii_only: bool, done: dict[int, str]) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(_text(item, ascii_only, done) for item in value) + "]"
    pairs = value.pairs if isinstance(value, Dup) else tuple(value.items())
    return (
        "{"
        + ",".join(f"{_text(k, ascii_only, done)}:{_text(v, ascii_only, done)}" for k, v in pairs)
        + "}"
    )


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, picked with the given relative weights."""
    slots = [index for index, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(slots).flatmap(lambda index: choices[index][1])


# -- strings -----------------------------------------------------------------------------

EDGE_STRINGS: Sequence[str] = (
    "",
    " ",
    "\t\r\n",
    "\x00",
    "a\x00b",
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "x\ud83d",  # half an emoji
    "\udc00\ud800",  # a surrogate pair the wrong way round
    "\u202eevil\u202c",  # RTL override
    "\u200f\u200e\u200b",  # RTL/LTR marks, zero width space
    "\ufeff",  # BOM
    "\u2028\u2029",  # JSON-legal, JavaScript-illegal line separators
    "😀",
    "👩‍👩‍👧‍👦",  # ZWJ sequence
    "\U0010ffff",
    "\U0001d518\U0001d52b\U0001d526",  # 4-byte letters
    "İ",  # lower() changes the length
    "ß",
    "ﷺ",
    "\\",
    '"',
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "1e400",
    "-0",
    "0x10",
    "1_000",
    "١٢٣",  # Arabic-Indic digits: str.isdigit() is True
    "１２",  # full-width digits
    "null",
    "true",
    "%00",
    "%2F..%2F",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "${jndi:ldap://x/a}",
    "{{7*7}}",
    "\x1b[31m",
)

# Any character, lone surrogates included (valid as \\ud800 escapes in JSON text, not as
# Unicode), and a few that are often mishandled.
characters = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),  # surrogates: st.characters() leaves them out
    st.sampled_from("\x00\u202e\u200b\ufeff😀\U0010ffff\\\"'"),
)

unicode_text = st.text(alphabet=characters, max_size=40)


def long_string(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """A string of `min_size` to `max_size` characters, cheap to generate at any size."""
    return st.tuples(
        st.integers(min_size, max_size), st.sampled_from(["x", "é", "😀", " ", "\x00", "\ud800"])
    ).map(lambda pair: pair[1] * pair[0])


strings = weighted(
    (4, st.sampled_from(EDGE_STRINGS)),
    (4, unicode_text),
    (1, long_string(250, 300)),
    (1, long_string(4_000, 30_000)),
)

# -- numbers -----------------------------------------------------------------------------

RAW_NUMBERS: Sequence[str] = (
    "1e400",
    "-1e400",
    "1E-400",
    "-0",
    "-0.0",
    "0.0000000001",
    "1.0000000001",
    "1e9",
    "1.5e3",
    "123456789012345678901234567890",
    "-123456789012345678901234567890",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "4.0",
    "1" + "0" * 5000,  # more digits than int() converts by default
)

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, 10**30, -(10**30)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(RAW_NUMBERS).map(Raw),
)

# -- any JSON ----------------------------------------------------------------------------


def deep(levels: int = DEEP) -> Raw:
    """`levels` nested arrays around a number. Parsers stop at different depths: orjson
    reads up to 1,024 levels but writes only 255, Python's json recurses ~1,000."""
    return Raw("[" * levels + "1" + "]" * levels)


def deep_object(levels: int = DEEP) -> Raw:
    return Raw('{"a":' * levels + "1" + "}" * levels)


scalars = st.one_of(st.none(), st.booleans(), numbers, strings)

json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(strings, children, max_size=4),
    ),
    max_leaves=5,
) | st.sampled_from([deep(), deep_object(), deep(100), deep(300), deep(1_000)])

# Bodies that are not one JSON value (or not JSON at all).
BAD_JSON: tuple[bytes, ...] = (
    b"",
    b" ",
    b"{",
    b"}",
    b"{}}",
    b"{,}",
    b'{"a":}',
    b'{"a":1,}',
    b"[1,]",
    b"{'a': 1}",
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": -Infinity}',
    b"NaN",
    b'{"a": 1} {"b": 2}',
    b'{"a": "\\ud800"}',  # a lone surrogate escape: valid JSON text, not valid Unicode
    b'{"a": "\\x00"}',
    b'{"a": "\\u00"}',
    b'{"a": "\x00"}',  # a raw control character inside a string
    b'\xef\xbb\xbf{"a": 1}',  # UTF-8 BOM
    b'\xff\xfe{\x00"\x00a\x00"\x00:\x001\x00}\x00',  # UTF-16
    b'{"a": "\xc3\x28"}',  # invalid UTF-8
    b'{"a": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
    b"\x00\x00\x00",
    b"null",
    b"true",
    b"1",
    b'"text"',
    b"[]",
    b'{"a": 1e99999}',
    b"{" * 100_000,
    b"[" * DEEP + b"]" * DEEP,
    b'{"a":' * DEEP + b"1" + b"}" * DEEP,
)

raw_bodies = st.one_of(st.sampled_from(BAD_JSON), st.binary(max_size=64))
