"""parse_entry's bulk checks against parse_event, the field-by-field definition."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from spendgate.enforcement.usage import Usage
from spendgate.enforcement.usage import UsageEvent as SettledEvent
from spendgate.storage import usage_events
from spendgate.storage.usage_events import MalformedEvent, UsageEvent, parse_entry, parse_event

# The names in the order the settle script appends them: what UsageEvent.fields() gives.
SETTLED = SettledEvent(
    "req_1", 1, "key_1", "prj_1", "m", "p", Usage(1, 2), 3, 200, 4, "byok", False
)
NAMES = [str(name).encode() for name in SETTLED.fields()[::2]]
NUMBERS = {b"created_at", b"prompt_tokens", b"completion_tokens", b"cost", b"status"}
NUMBERS |= {b"duration_ms"}

# Numbers near every bound the table and datetime have, and spellings int() takes but
# the ledger must not.
number = st.one_of(
    st.integers(0, 10**6).map(lambda i: b"%d" % i),
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, 253_402_300_799_999]).map(
        lambda i: b"%d" % i
    ),
    st.sampled_from([253_402_300_800_000, 10**14 - 1, 10**14, 10**18 - 1, 10**18]).map(
        lambda i: b"%d" % i
    ),
    st.sampled_from([b"", b"-1", b"+1", b" 1", b"1_0", b"0x1", b"1.0", b"\xd9\xa1", b"00"]),
    st.binary(max_size=4),
)
text = st.one_of(
    st.text(min_size=1, max_size=8).map(str.encode),
    st.sampled_from([b"", b"a\0b", b"\xff\xfe", b"key_1"]),
)
special = {
    b"billing": st.sampled_from([b"credits", b"byok", b"", b"Credits", b"credits "]),
    b"stream": st.sampled_from([b"0", b"1", b"", b"2", b"true"]),
}


def value_of(name: bytes) -> st.SearchStrategy[bytes]:
    if name in special:
        return special[name]
    return number if name in NUMBERS else text


good = {
    b"request_id": st.sampled_from([b"req_1", "req_é".encode()]),
    b"key_id": st.just(b"key_1"),
    b"project_id": st.just(b"prj_1"),
    b"model": st.sampled_from([b"openai/gpt-4o-mini", b"m"]),
    b"provider": st.just(b"openai"),
    b"billing": st.sampled_from([b"credits", b"byok"]),
    b"stream": st.sampled_from([b"0", b"1"]),
}


@st.composite
def entries(draw: st.DrawFn) -> list[bytes]:
    """Mostly as settle writes them, with a field or two given any value, or in another
    order, or one missing or one extra."""
    names = list(NAMES)
    if draw(st.integers(0, 4)) == 0:
        names = draw(st.permutations(names))
        if draw(st.booleans()):
            names.pop(draw(st.integers(0, len(names) - 1)))
        if draw(st.booleans()):
            names.append(b"extra")
    odd = set(draw(st.lists(st.sampled_from(NAMES), max_size=2)))
    flat: list[bytes] = []
    for name in names:
        if name in odd or name not in good and name not in NUMBERS:
            value = draw(value_of(name))
        elif name in NUMBERS:
            value = b"%d" % draw(st.integers(0, 10**6))
        else:
            value = draw(good[name])
        flat += [name, value]
    return flat


def outcome(parse: object) -> UsageEvent | str:
    try:
        return parse()  # type: ignore[operator, no-any-return]
    except MalformedEvent as exc:
        return exc.field


VALID = [
    b"request_id", b"req_1", b"created_at", b"1764201600000", b"key_id", b"key_1",
    b"project_id", b"prj_1", b"model", b"openai/gpt-4o-mini", b"provider", b"openai",
    b"prompt_tokens", b"23", b"completion_tokens", b"64", b"cost", b"41850",
    b"status", b"200", b"duration_ms", b"3", b"billing", b"credits", b"stream", b"1",
]  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(flat=entries())
@example(flat=VALID)
@example(flat=[b if b != b"41850" else b"-41850" for b in VALID])  # a refund-like cost
@example(flat=[b if b != b"23" else b"2147483648" for b in VALID])  # past int32
def test_parse_entry_is_parse_event(flat: list[bytes]) -> None:
    expected = outcome(lambda: parse_event(dict(zip(flat[::2], flat[1::2], strict=True))))
    assert outcome(lambda: parse_entry(flat)) == expected


def test_an_entry_as_settle_writes_it() -> None:
    event = parse_entry(VALID)
    assert (event.request_id, event.cost_nano, event.stream) == ("req_1", 41850, True)
    assert event.created_at.timestamp() == 1_764_201_600


def test_the_bulk_checks_expect_the_order_settle_writes() -> None:
    # Were they to differ, every entry would take the field-by-field way: right, but slow.
    assert usage_events._NAMES == NAMES
    flat = [str(part).encode() for part in SETTLED.fields()]
    assert parse_entry(flat) == parse_event(dict(zip(flat[::2], flat[1::2], strict=True)))
