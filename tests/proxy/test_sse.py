from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.enforcement.usage import Usage
from spendgate.proxy import relay as relay_module
from spendgate.proxy import sse as sse_module
from spendgate.proxy.relay import _Tally
from spendgate.proxy.sse import (
    DONE,
    EventSplitter,
    count_output,
    error_event,
    event_data,
    is_done,
    reported_usage,
    usage_candidate,
)
from tests.helpers import usage_of, usage_only

# --- building streams ----------------------------------------------------------------------

line_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    min_size=1,
    max_size=30,
).map(lambda text: text.encode())
# Field lines an event may carry besides data; a line is never empty (that ends the event).
other_line = st.one_of(
    line_text.map(lambda text: b":" + text),
    line_text.map(lambda text: b"event: " + text),
    st.integers(0, 10**6).map(lambda i: b"id: %d" % i),
    st.just(b"retry: 1000"),
)
data_line = line_text.map(lambda text: b"data: " + text)
newline = st.sampled_from([b"\n", b"\r\n"])


@st.composite
def events(draw: st.DrawFn, newlines: st.SearchStrategy[bytes] = newline) -> bytes:
    lines = draw(st.lists(st.one_of(data_line, other_line), min_size=1, max_size=5))
    return b"".join(line + draw(newlines) for line in lines) + draw(newlines)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    # One line-ending style per stream (as providers send), or a free mix of both.
    style = draw(st.sampled_from([b"\n", b"\r\n", None]))
    newlines = newline if style is None else st.just(style)
    return draw(st.lists(events(newlines), min_size=0, max_size=8))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """An OpenAI chat.completion.chunk event."""
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return sse(head | {"system_fingerprint": "fp", "choices": [choice]} | extra)


USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
USAGE_CHUNK = sse(
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    | {"usage": USAGE}
)


# --- EventSplitter -------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_any_split_of_a_stream_yields_its_events_unchanged(
    stream: list[bytes], cuts: list[int]
) -> None:
    splitter = EventSplitter()
    got: list[bytes] = []
    for piece in split(b"".join(stream), cuts):
        got += splitter.feed(piece)
    assert got == stream
    assert splitter.remainder() == b""


def reference_split(stream: bytes) -> tuple[list[bytes], bytes]:
    """A slow, line-by-line model: an event ends at a line terminator (LF or CRLF) that
    directly follows another terminator of the same event."""
    events: list[bytes] = []
    start = previous_end = 0
    for match in re.finditer(rb"\r?\n", stream):
        if match.start() == previous_end and previous_end > start:
            events.append(stream[start : match.end()])
            start = match.end()
        previous_end = match.end()
    return events, stream[start:]


# Free sequences of lines, terminators and stray blank lines, in any order.
raw_streams = st.lists(
    st.sampled_from([b"data: x", b'data: {"a":1}', b": c", b"\n", b"\r\n", b"\n\n", b"\r\n\r\n"]),
    max_size=30,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(stream=raw_streams, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_splitting_matches_a_line_by_line_model(stream: bytes, cuts: list[int]) -> None:
    splitter = EventSplitter()
    got: list[bytes] = []
    for piece in split(stream, cuts):
        got += splitter.feed(piece)
    assert (got, splitter.remainder()) == reference_split(stream)


@settings(deadline=None)
@given(
    stream=streams(),
    tail=st.lists(data_line, min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_an_unterminated_last_event_stays_in_the_remainder(
    stream: list[bytes], tail: list[bytes], cuts: list[int]
) -> None:
    incomplete = b"\n".join(tail) + b"\n"  # lines ended, but no blank line after them
    splitter = EventSplitter()
    got: list[bytes] = []
    for piece in split(b"".join(stream) + incomplete, cuts):
        got += splitter.feed(piece)
    assert got == stream
    assert splitter.remainder() == incomplete


def test_crlf_boundary_split_inside_the_blank_line() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\n\r") == []
    assert splitter.feed(b"\ndata: b\r\n") == [b"data: a\r\n\r\n"]
    assert splitter.feed(b"\r\ndata: c\n") == [b"data: b\r\n\r\n"]
    assert splitter.feed(b"\n") == [b"data: c\n\n"]


def test_several_events_in_one_feed() -> None:
    stream = chunk({"content": "a"}) + chunk({"content": "b"}) + DONE
    assert EventSplitter().feed(stream) == [
        chunk({"content": "a"}),
        chunk({"content": "b"}),
        DONE,
    ]


@settings(deadline=None)
@given(stream=streams(), group=st.integers(1, 3))
def test_reads_of_whole_events_yield_them_unchanged(stream: list[bytes], group: int) -> None:
    # One or a few whole events per read: the usual reads, which take a shortcut.
    splitter = EventSplitter()
    got: list[bytes] = []
    for i in range(0, len(stream), group):
        got += splitter.feed(b"".join(stream[i : i + group]))
    assert got == stream
    assert splitter.remainder() == b""


def test_a_whole_line_after_a_partial_event_completes_that_event() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a") == []
    assert splitter.feed(b"bc\n\n") == [b"data: abc\n\n"]
    assert splitter.feed(b"data: d\n") == []
    assert splitter.feed(b"data: e\n\n") == [b"data: d\ndata: e\n\n"]
    assert splitter.feed(b"data: f\r") == []
    assert splitter.feed(b"\n\n") == [b"data: f\r\n\n"]
    assert splitter.feed(b"data: g\rh\n\n") == [b"data: g\rh\n\n"]  # a bare CR ends no line


# --- event_data ----------------------------------------------------------------------------


@settings(deadline=None)
@given(
    values=st.lists(line_text, min_size=1, max_size=4),
    others=st.lists(other_line, max_size=3),
    nl=newline,
)
def test_event_data_joins_the_data_lines_with_newlines(
    values: list[bytes], others: list[bytes], nl: bytes
) -> None:
    lines = others + [b"data: " + value for value in values]
    event = b"".join(line + nl for line in lines) + nl
    assert event_data(event) == b"\n".join(values)


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b"data: {}\n\n", b"{}"),
        (b"data:{}\r\n\r\n", b"{}"),
        (b"data:  two spaces\n\n", b" two spaces"),  # only one space is stripped
        (b"data\n\n", b""),
        (b"data:\ndata:\n\n", b"\n"),
        (b"event: ping\ndata: x\nid: 3\n\n", b"x"),
        (b"database: x\ndata: y\n\n", b"y"),  # "database" is another field
        (b": keep-alive\n\n", None),
        (b"event: ping\n\n", None),
        (b"\n\n", None),
    ],
)
def test_event_data(event: bytes, data: bytes | None) -> None:
    assert event_data(event) == data


# --- is_done -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "done"),
    [
        (DONE, True),
        (b"data:[DONE]\r\n\r\n", True),
        (b": comment\ndata: [DONE]\n\n", True),
        (sse({"text": "[DONE]"}), False),
        (b"data: [DONE] \n\n", False),
        (b": [DONE]\n\n", False),
        (chunk({"content": "x"}), False),
    ],
)
def test_is_done(event: bytes, done: bool) -> None:
    assert is_done(event) is done


# --- chunk_usage and is_usage_only ---------------------------------------------------------


def test_the_usage_chunk_reports_usage_with_cached_tokens() -> None:
    assert usage_of(USAGE_CHUNK) == Usage(12, 7, 4)
    assert usage_only(USAGE_CHUNK)


def usage_null_variants() -> list[bytes]:
    obj = orjson.loads(event_data(chunk({"content": "hi"}, usage=None)) or b"")
    compact = orjson.dumps(obj)
    spaced = json.dumps(obj).encode()  # '"usage": null'
    return [
        b"data: " + compact + b"\n\n",
        b"data: " + spaced + b"\n\n",
        b"data: " + compact.replace(b'"usage":null', b'"usage" : null') + b"\n\n",
        b"data: " + compact.replace(b'"usage":null', b'"usage":\tnull') + b"\r\n\r\n",
    ]


@pytest.mark.parametrize("event", usage_null_variants())
def test_usage_null_is_no_usage(event: bytes) -> None:
    assert b"null" in event
    assert usage_of(event) is None
    assert not usage_only(event)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(json.loads(event_data(USAGE_CHUNK) or b"")),  # '": "' spacing
        json.dumps(json.loads(event_data(USAGE_CHUNK) or b""), indent=2),  # multi-line data
    ],
)
def test_usage_chunk_in_other_json_layouts(text: str) -> None:
    event = b"".join(b"data: " + line.encode() + b"\n" for line in text.splitlines()) + b"\n"
    assert usage_of(event) == Usage(12, 7, 4)
    assert usage_only(event)


def test_usage_on_a_chunk_that_still_has_choices() -> None:
    # Some providers put usage on the last content or finish chunk instead of a chunk of its own.
    event = chunk({"content": "end"}, "stop", usage=USAGE)
    assert usage_of(event) == Usage(12, 7, 4)
    assert not usage_only(event)


def test_usage_only_without_a_choices_key() -> None:
    event = sse({"id": "c", "usage": USAGE})
    assert usage_only(event)
    assert usage_of(event) == Usage(12, 7, 4)


def test_the_word_usage_inside_content_is_not_usage() -> None:
    fake = '"usage": {"prompt_tokens": 5, "completion_tokens": 5}'
    event = chunk({"content": fake}, usage=None)
    assert usage_of(event) is None
    assert not usage_only(event)
    # ...and the real usage after such content is still found
    assert usage_of(sse({"choices": [], "x": fake, "usage": USAGE})) == Usage(12, 7, 4)


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"choices": [], "usage": {"prompt_tokens": \n\n',  # cut JSON
        sse({"choices": [], "usage": {"prompt_tokens": "12"}}),  # not a count
        sse([{"usage": USAGE}]),  # not an object
        sse({"choices": [], "nested": {"usage": USAGE}, "usage": None}),  # not top level
        b": usage comment\n\n",
        b'event: usage\ndata: "usage"\n\n',
    ],
)
def test_malformed_or_misplaced_usage_is_none(event: bytes) -> None:
    assert usage_of(event) is None


def test_content_chunks_are_neither_usage_nor_usage_only() -> None:
    for event in (chunk({"content": "x"}), chunk({"role": "assistant", "content": ""}), DONE):
        assert usage_of(event) is None
        assert not usage_only(event)


def test_only_a_chunk_that_may_carry_usage_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []

    def loads(data: bytes) -> Any:
        parsed.append(data)
        return orjson.loads(data)

    counting = SimpleNamespace(
        loads=loads, dumps=orjson.dumps, JSONDecodeError=orjson.JSONDecodeError
    )
    monkeypatch.setattr(sse_module, "orjson", counting)
    stream = [
        chunk({"role": "assistant", "content": ""}, usage=None),
        chunk({"content": "the usage"}, usage=None),
        chunk({}, "stop", usage=None),
        *usage_null_variants(),
        b": keep-alive\n\n",
        DONE,
    ]
    for event in stream:
        assert usage_of(event) is None
        assert not usage_only(event)
        count_output(event)
        is_done(event)
    assert parsed == []
    assert usage_of(USAGE_CHUNK) is not None
    assert len(parsed) == 1


# --- count_output --------------------------------------------------------------------------


def completion_chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return sse({"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [choice]})


TOOL_CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("event", "delivers"),
    [
        (chunk({"role": "assistant", "content": "", "refusal": None}), False),
        (chunk({"content": "Hello"}), True),
        (chunk({"content": '"'}), True),
        (chunk({"content": " "}), True),
        (chunk({"content": None, "tool_calls": [TOOL_CALL]}), True),
        (chunk({"tool_calls": []}), False),
        (chunk({"reasoning_content": "thinking"}), True),
        (chunk({"refusal": "no"}), True),
        (chunk({}, "stop"), False),
        (chunk({}, "stop", usage=None), False),
        (USAGE_CHUNK, False),
        (completion_chunk("Hi"), True),
        (completion_chunk("", "stop"), False),
        (
            b"data: " + json.dumps({"choices": [{"delta": {"content": "x"}}]}).encode() + b"\n\n",
            True,
        ),
        (
            b"data: " + json.dumps({"choices": [{"delta": {"content": ""}}]}).encode() + b"\n\n",
            False,
        ),
        (DONE, False),
        (b": keep-alive\n\n", False),
        (error_event("boom", "api_error", "upstream_unavailable"), False),
    ],
)
def test_count_output(event: bytes, delivers: bool) -> None:
    assert count_output(event) == int(delivers)


def test_count_output_looks_past_a_string_that_names_a_key() -> None:
    # a content value equal to "content" is a value, not a key
    assert count_output(chunk({"role": "assistant", "content": "content"})) == 1
    assert count_output(sse({"choices": [{"delta": {"role": "content", "content": ""}}]})) == 0


# Text that may mislead a byte scan: quotes, key names, JSON fragments.
tricky_text = st.one_of(
    st.text(max_size=6),
    st.sampled_from(['"', "content", '"content":"x"', "usage", '"usage": {}', "[DONE]", "\n"]),
)
tool_call = st.fixed_dictionaries(
    {"index": st.integers(0, 2)},
    optional={"id": st.just("call_1"), "function": st.fixed_dictionaries({"name": tricky_text})},
)
delta = st.fixed_dictionaries(
    {},
    optional={
        "role": st.just("assistant"),
        "content": st.none() | st.just("") | tricky_text,
        "refusal": st.none() | tricky_text,
        "reasoning_content": tricky_text,
        "tool_calls": st.lists(tool_call, max_size=2),
    },
)
choice = st.one_of(
    st.fixed_dictionaries(
        {"index": st.just(0), "delta": delta, "finish_reason": st.none() | st.just("stop")}
    ),
    st.fixed_dictionaries({"index": st.just(0), "text": tricky_text}),  # a completion
)
usage_value = st.one_of(
    st.none(),
    st.just(USAGE),
    st.builds(
        lambda p, c: {"prompt_tokens": p, "completion_tokens": c},
        st.integers(0, 99),
        st.integers(0, 99),
    ),
    st.just({"prompt_tokens": "12"}),  # malformed
)


@st.composite
def openai_chunks(draw: st.DrawFn) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk"}
    if draw(st.booleans()):
        chunk["choices"] = draw(st.lists(choice, max_size=2))
    if draw(st.booleans()):
        chunk["usage"] = draw(usage_value)
    return chunk


def json_layouts(obj: Any) -> st.SearchStrategy[bytes]:
    return st.sampled_from(
        [orjson.dumps(obj), json.dumps(obj).encode(), json.dumps(obj, indent=1).encode()]
    )


@st.composite
def openai_events(draw: st.DrawFn, newlines: st.SearchStrategy[bytes] = newline) -> bytes:
    """One event of an OpenAI stream, in any JSON layout (indented JSON: several data lines)."""
    kind = draw(st.sampled_from(["chunk", "chunk", "chunk", "done", "comment", "named", "error"]))
    if kind == "done":
        return DONE.replace(b"\n", draw(newlines))
    if kind == "comment":
        return b": keep-alive" + draw(newlines) + draw(newlines)
    if kind == "error":
        return error_event("boom", "api_error", "upstream_unavailable").replace(
            b"\n", draw(newlines)
        )
    text = draw(json_layouts(draw(openai_chunks())))
    lines = [b"data: " + line for line in text.splitlines()]
    if kind == "named":
        lines = [b"event: chunk", *lines]
    return b"".join(line + draw(newlines) for line in lines) + draw(newlines)


@st.composite
def openai_streams(draw: st.DrawFn) -> list[bytes]:
    style = draw(st.sampled_from([b"\n", b"\r\n", None]))
    newlines = newline if style is None else st.just(style)
    return draw(st.lists(openai_events(newlines), max_size=8))


# Byte soup around the output keys: self-overlapping keys, stray quotes, odd whitespace.
key_soup = st.lists(
    st.sampled_from(
        [b'"content"', b'content"', b'"text"', b'"tool_calls"', b'"reasoning_content"']
        + [b'"reasoning"', b'"refusal"', b'"usage"', b":", b" ", b"\t", b'"', b'""', b"x"]
        + [b"[", b"]", b"{", b"}", b"null", b"\\", b",", b"\n"]
    ),
    max_size=20,
).map(lambda parts: b"data: " + b"".join(parts) + b"\n\n")


@settings(max_examples=500, deadline=None)
@given(event=openai_events() | key_soup)
def test_usage_is_never_missed_by_the_search_for_candidates(event: bytes) -> None:
    # The relay parses only from the first candidate on: none must mean no usage.
    if usage_candidate(event) < 0:
        assert reported_usage(event) is None


@settings(max_examples=300, deadline=None)
@given(event=openai_events())
def test_count_output_agrees_with_parsing(event: bytes) -> None:
    assert count_output(event) == parsed_output_values(event)


@pytest.mark.parametrize(
    ("event", "values"),
    [
        (b'data: {"content"content":"x"}\n\n', 1),  # an overlapping key: the second counts
        (b'data: {"content":"","text":"x"}\n\n', 1),
        (b'data: {"content" : "x","tool_calls":[ ]}\n\n', 1),
        (b'data: {"tool_calls":[\n]}\n\n', 0),
        (sse({"choices": [{"delta": {"content": "a"}}, {"delta": {"content": "b"}}]}), 2),
    ],
)
def test_count_output_of_odd_layouts(event: bytes, values: int) -> None:
    assert count_output(event) == values


# --- the relay's tally ---------------------------------------------------------------------

OUTPUT_NAMES = {"content", "text", "tool_calls", "reasoning_content", "reasoning", "refusal"}
OUTPUT_NAMES |= {"function_call", "audio"}


def parsed_output_values(event: bytes) -> int:
    """The reference for count_output: the event's JSON parsed, and every output key with a
    non-empty value counted, at any depth."""
    data = event_data(event)
    try:
        tree = orjson.loads(data) if data is not None else None
    except orjson.JSONDecodeError:
        return 0

    def walk(node: Any) -> int:
        if isinstance(node, list):
            return sum(walk(item) for item in node)
        if not isinstance(node, dict):
            return 0
        own = sum(
            1
            for key, value in node.items()
            if key in OUTPUT_NAMES and isinstance(value, str | list | dict) and value
        )
        return own + sum(walk(value) for value in node.values())

    return walk(tree)


def relayed(stream: list[bytes], keep_usage_only: bool) -> bytes:
    """The reference for what the tally relays: every event, but a usage-only chunk for a
    client that did not ask for usage."""
    kept = []
    for event in stream:
        report = reported_usage(event)
        if report is None or keep_usage_only or not report[1]:
            kept.append(event)
    return b"".join(kept)


@settings(max_examples=400, deadline=None)
@given(
    stream=openai_streams(),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    keep_usage_only=st.booleans(),
    count_every=st.sampled_from([1, 100, 32 * 1024]),
)
def test_the_tally_of_any_split_matches_an_event_by_event_reference(
    stream: list[bytes],
    cuts: list[int],
    keep_usage_only: bool,
    count_every: int,
) -> None:
    tally = _Tally(keep_usage_only)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(relay_module, "COUNT_EVERY", count_every)
        pieces = [tally.take(piece) for piece in split(b"".join(stream), cuts)]

    assert b"".join(pieces) == relayed(stream, keep_usage_only)
    # whole events only: an event is never relayed in part before it is complete
    assert all(piece.endswith((b"\n\n", b"\n\r\n")) for piece in pieces if piece)
    assert tally.remainder() == b""
    usages = [usage_of(event) for event in stream]
    assert tally.usage == next((usage for usage in reversed(usages) if usage is not None), None)
    if tally.usage is None:  # else the output values are not needed, nor counted
        assert tally.content == sum(parsed_output_values(event) for event in stream)


def test_the_tally_of_an_openai_stream_with_usage() -> None:
    role = chunk({"role": "assistant", "content": ""}, usage=None)
    words = [chunk({"content": word}, usage=None) for word in ("Hi", "", " there")]
    tool = chunk({"tool_calls": [TOOL_CALL]}, usage=None)
    stream = [role, *words, tool, chunk({}, "stop", usage=None), USAGE_CHUNK, DONE]
    for keep in (True, False):
        expected = b"".join(event for event in stream if keep or event is not USAGE_CHUNK)
        for reads in ([b"".join(stream)], stream):  # one read, then a read per event
            tally = _Tally(keep)
            assert b"".join(tally.take(data) for data in reads) == expected
            assert tally.usage == Usage(12, 7, 4)


def test_the_tally_counts_the_output_of_a_stream_without_usage() -> None:
    role = chunk({"role": "assistant", "content": ""})
    words = [chunk({"content": word}) for word in ("Hi", "", " there")]
    tool = chunk({"tool_calls": [TOOL_CALL]})
    two_choices = sse({"choices": [{"delta": {"content": "a"}}, {"delta": {"content": "b"}}]})
    stream = [role, *words, tool, two_choices, chunk({}, "stop"), DONE]
    for reads in ([b"".join(stream)], stream):
        tally = _Tally(False)
        assert b"".join(tally.take(data) for data in reads) == b"".join(stream)
        assert (tally.usage, tally.content) == (None, 5)  # Hi, there, the tool call, a, b


def test_a_long_stream_is_counted_as_it_goes_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "COUNT_EVERY", 1000)
    tally = _Tally(True)
    for _ in range(50):
        tally.take(chunk({"content": "word"}))
        assert tally._held <= 1000 + len(chunk({"content": "word"}))
    assert tally.content == 50


# --- error_event ---------------------------------------------------------------------------


def test_error_event_is_an_openai_error_envelope() -> None:
    event = error_event('upstream "cut"\nthe stream', "api_error", "upstream_unavailable")
    assert event.endswith(b"\n\n") and event.startswith(b"data: ")
    assert EventSplitter().feed(event) == [event]  # one event, the message's newline escaped
    assert orjson.loads(event_data(event) or b"") == {
        "error": {
            "message": 'upstream "cut"\nthe stream',
            "type": "api_error",
            "param": None,
            "code": "upstream_unavailable",
        }
    }
    assert not is_done(event)
