from __future__ import annotations

import math
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendgate.config.catalog import Price, PriceTier
from spendgate.enforcement.cost import (
    Estimate,
    cost_nano,
    estimate_chat,
    estimate_completion,
    estimate_embedding,
    output_cap,
)
from spendgate.enforcement.money import MAX_NANO, format_usd
from spendgate.enforcement.usage import Usage

ECHO = Price(PriceTier(input=1_000_000_000, output=2_000_000_000, cached_input=1_000_000_000))
EMBED = Price(PriceTier(input=100_000_000, output=0, cached_input=100_000_000))
MINI = Price(PriceTier(input=150_000_000, output=600_000_000, cached_input=75_000_000))
# A tier for prompts over 200,000 tokens, as Gemini 2.5 Pro prices it.
TIERED = Price(
    PriceTier(input=1_250_000_000, output=10_000_000_000, cached_input=125_000_000),
    tiers=(
        (200_000, PriceTier(input=2_500_000_000, output=15_000_000_000, cached_input=250_000_000)),
    ),
)
DEFAULT_OUT = 4096


# --- cost at settle ---


def test_echo_cost_is_exact() -> None:
    cost = cost_nano(ECHO, Usage(prompt_tokens=2, completion_tokens=16))
    assert cost == 2 * 1_000 + 16 * 2_000 == 34_000
    assert format_usd(cost) == "0.000034"


def test_each_token_kind_rounds_up_on_its_own() -> None:
    one_nano = Price(PriceTier(input=1, output=1, cached_input=1))
    # 2 uncached + 1 cached + 1 completion: each part is ceil(tokens / 1e6) = 1 nano.
    assert cost_nano(one_nano, Usage(prompt_tokens=3, completion_tokens=1, cached_tokens=1)) == 3
    assert cost_nano(one_nano, Usage(prompt_tokens=1_000_000)) == 1
    assert cost_nano(one_nano, Usage(prompt_tokens=1_000_001)) == 2
    assert cost_nano(MINI, Usage(prompt_tokens=1)) == 150
    assert cost_nano(Price(PriceTier(333, 0, 0)), Usage(prompt_tokens=3_000)) == 1  # 0.999 -> 1
    assert cost_nano(ECHO, Usage()) == 0


def test_cached_tokens_are_charged_at_the_cached_price() -> None:
    usage = Usage(prompt_tokens=1_000, completion_tokens=200, cached_tokens=400)
    assert cost_nano(MINI, usage) == 600 * 150 + 400 * 75 + 200 * 600 == 240_000
    # More cached than prompt tokens: every prompt token is cached, no more.
    assert cost_nano(MINI, Usage(prompt_tokens=10, cached_tokens=50)) == 10 * 75


def test_settle_uses_the_tier_the_prompt_falls_in() -> None:
    at_threshold = Usage(prompt_tokens=200_000, completion_tokens=1_000)
    over = Usage(prompt_tokens=200_001, completion_tokens=1_000)
    assert cost_nano(TIERED, at_threshold) == 200_000 * 1_250 + 1_000 * 10_000 == 260_000_000
    assert cost_nano(TIERED, over) == 200_001 * 2_500 + 1_000 * 15_000 == 515_002_500
    cached_over = Usage(prompt_tokens=200_001, completion_tokens=0, cached_tokens=200_000)
    assert cost_nano(TIERED, cached_over) == 2_500 + 200_000 * 250


def test_cost_is_capped_below_2_63() -> None:
    huge = Usage(prompt_tokens=10**30, completion_tokens=10**30)
    assert cost_nano(ECHO, huge) == MAX_NANO


@given(
    prompt=st.integers(0, 10**9),
    cached=st.integers(0, 10**9),
    completion=st.integers(0, 10**9),
    prices=st.tuples(*[st.integers(0, 10**12)] * 3),
)
def test_cost_is_the_exact_cost_rounded_up_per_kind(
    prompt: int, cached: int, completion: int, prices: tuple[int, int, int]
) -> None:
    price = Price(PriceTier(*prices))
    cost = cost_nano(price, Usage(prompt, completion, cached))
    cached = min(cached, prompt)
    exact = Fraction(
        (prompt - cached) * prices[0] + cached * prices[2] + completion * prices[1], 10**6
    )
    assert exact <= cost < exact + 3


# --- estimates, by hand ---


def test_chat_estimate_of_one_message() -> None:
    body = {"model": "echo-1", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 10}
    estimate = estimate_chat(body, ECHO, DEFAULT_OUT)
    # 3 per request + 4 per message + 5 bytes; 10 output tokens.
    assert estimate == Estimate(
        input_tokens=12,
        output_tokens=10,
        input_cost=12 * 1_000,
        output_cost=10 * 2_000,
        output_price=2_000_000_000,
    )
    assert estimate.total == 32_000


def test_chat_estimate_counts_parts_names_images_and_choices() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}}
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "name": "bob",
                "content": [{"type": "text", "text": "héllo"}, image, {"type": "input_image"}],
            },
        ],
        "n": 2,
        "max_completion_tokens": 50,
        "max_tokens": 999,
    }
    estimate = estimate_chat(body, ECHO, DEFAULT_OUT)
    # 3 + (4 + 8) + (4 + "bob" 3 + "héllo" 6 + two images 2 x 2,000)
    assert estimate.input_tokens == 3 + 12 + 4 + 3 + 6 + 4_000 == 4_028
    assert estimate.output_tokens == 100
    assert estimate.input_cost == 4_028_000
    assert estimate.output_cost == 200_000


def test_chat_estimate_counts_tools_and_tool_calls_as_json() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    tool_calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = {
        "messages": [
            {"role": "assistant", "content": None, "tool_calls": tool_calls},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "tools": tools,
        "response_format": {"type": "json_object"},
    }
    tools_json = b'[{"type":"function","function":{"name":"f"}}]'
    calls_json = b'[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]'
    format_json = b'{"type":"json_object"}'
    expected = 3 + 4 + len(calls_json) + 4 + 2 + 2 + len(tools_json) + len(format_json)
    estimate = estimate_chat(body, ECHO, DEFAULT_OUT)
    assert estimate.input_tokens == expected
    assert estimate.output_tokens == DEFAULT_OUT


def test_chat_estimate_counts_unknown_shapes_as_their_json() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    body = {
        "messages": [
            {"role": "user", "content": [audio, "loose", 7]},
            {"role": "wizard", "content": {"nested": [1, None]}},
            "not a message",
        ]
    }
    part_bytes = len(orjson.dumps(audio)) + len(b'"loose"') + len(b"7")
    second = len(b"wizard") + len(b'{"nested":[1,null]}')
    expected = 3 + (4 + part_bytes) + (4 + second) + (4 + len(b'"not a message"'))
    assert estimate_chat(body, ECHO, DEFAULT_OUT).input_tokens == expected


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({"max_completion_tokens": 7, "max_tokens": 9}, 7),
        ({"max_tokens": 9}, 9),
        ({"max_completion_tokens": 0, "max_tokens": 9}, 9),
        ({"max_completion_tokens": True}, None),
        ({"max_tokens": -5}, None),
        ({"max_tokens": 5.0}, None),
        ({"max_tokens": "5"}, None),
        ({}, None),
    ],
)
def test_output_cap(body: dict[str, Any], cap: int | None) -> None:
    assert output_cap(body) == cap
    expected_output = (cap or DEFAULT_OUT) * 3
    assert estimate_chat({**body, "n": 3}, ECHO, DEFAULT_OUT).output_tokens == expected_output


@pytest.mark.parametrize("n", [0, -1, True, 2.0, "2", None])
def test_a_bad_n_means_one_choice(n: Any) -> None:
    assert estimate_chat({"n": n, "max_tokens": 5}, ECHO, DEFAULT_OUT).output_tokens == 5


def test_estimates_use_the_highest_tier() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    estimate = estimate_chat(body, TIERED, DEFAULT_OUT)
    assert estimate.input_tokens == 9
    assert estimate.input_cost == math.ceil(9 * 2_500_000_000 / 10**6) == 22_500
    assert estimate.output_cost == 100 * 15_000
    assert estimate.output_price == 15_000_000_000


def test_estimates_charge_input_at_the_higher_of_input_and_cached() -> None:
    odd = Price(PriceTier(input=1_000_000, output=0, cached_input=3_000_000))
    estimate = estimate_chat({"messages": []}, odd, 0)
    assert estimate.input_tokens == 3
    assert estimate.input_cost == 9


def test_completion_estimate() -> None:
    assert estimate_completion({"prompt": "abc"}, ECHO, DEFAULT_OUT).input_tokens == 2 + 3
    body = {"prompt": ["ab", "cde"], "suffix": "xy", "max_tokens": 10, "n": 3, "best_of": 5}
    estimate = estimate_completion(body, ECHO, DEFAULT_OUT)
    assert estimate.input_tokens == (2 + 2) + (2 + 3) + 2
    assert estimate.output_tokens == 10 * 5 * 2  # cap x best_of x prompts
    ids = estimate_completion({"prompt": [1, 2, 3], "max_tokens": 4}, ECHO, DEFAULT_OUT)
    assert (ids.input_tokens, ids.output_tokens) == (2 + 3, 4)
    batches = estimate_completion({"prompt": [[1, 2], [3]], "max_tokens": 4}, ECHO, DEFAULT_OUT)
    assert (batches.input_tokens, batches.output_tokens) == ((2 + 2) + (2 + 1), 8)
    missing = estimate_completion({}, ECHO, DEFAULT_OUT)
    assert (missing.input_tokens, missing.output_tokens) == (2 + len(b"null"), DEFAULT_OUT)


def test_embedding_estimate() -> None:
    estimate = estimate_embedding({"input": ["a", "bb"]}, EMBED)
    assert estimate == Estimate(
        input_tokens=(2 + 1) + (2 + 2),
        output_tokens=0,
        input_cost=7 * 100,
        output_cost=0,
        output_price=0,
    )
    assert estimate_embedding({"input": "héllo"}, EMBED).input_tokens == 2 + 6
    assert estimate_embedding({"input": [[1, 2, 3], [4]]}, EMBED).input_tokens == 5 + 3


def test_estimates_clamp_absurd_values() -> None:
    body = {"messages": [], "max_tokens": 10**30, "n": 10**30}
    estimate = estimate_chat(body, ECHO, DEFAULT_OUT)
    assert estimate.output_tokens == 10**12
    assert estimate.output_cost == 10**12 * 2_000
    pricey = Price(PriceTier(10**15, 10**15, 10**15))
    assert estimate_chat(body, pricey, DEFAULT_OUT).total == MAX_NANO


def test_estimates_survive_what_orjson_refuses() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    junk: list[Any] = [10**40, {1: "x", (2, 3): "y"}, object(), "\ud800", cycle]
    for value in junk:
        body = {"messages": [{"role": "user", "content": value}], "tools": value}
        assert estimate_chat(body, ECHO, DEFAULT_OUT).input_tokens > 3
        assert estimate_completion({"prompt": ["x", value]}, ECHO, DEFAULT_OUT).input_tokens > 5
        assert estimate_embedding({"input": value}, EMBED).input_tokens > 2
    proxy = MappingProxyType({"messages": [{"content": "four"}]})
    assert estimate_chat(proxy, ECHO, DEFAULT_OUT).input_tokens == 3 + 4 + 4


# --- estimates, properties ---

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)
KEYS = st.sampled_from(
    [
        "messages",
        "content",
        "role",
        "name",
        "type",
        "text",
        "image_url",
        "tool_calls",
        "tools",
        "functions",
        "response_format",
        "n",
        "best_of",
        "max_tokens",
        "max_completion_tokens",
        "prompt",
        "suffix",
        "input",
    ]
)
# JSON whose keys are the ones the estimates look at, so the junk reaches every branch.
SHAPED = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from(["text", "image_url", "user"]),
    lambda children: st.lists(children) | st.dictionaries(KEYS | st.text(), children),
    max_leaves=40,
)


@given(body=JSON | SHAPED)
def test_estimates_never_raise_and_are_non_negative(body: Any) -> None:
    for price in (ECHO, TIERED):
        for estimate in (
            estimate_chat(body, price, DEFAULT_OUT),
            estimate_completion(body, price, DEFAULT_OUT),
            estimate_embedding(body, price),
        ):
            assert 0 <= estimate.input_tokens <= 10**12
            assert 0 <= estimate.output_tokens <= 10**12
            assert 0 <= estimate.input_cost <= MAX_NANO
            assert 0 <= estimate.output_cost <= MAX_NANO
            assert 0 <= estimate.total <= MAX_NANO
    cap = output_cap(body)
    assert cap is None or cap > 0


def _mock_prompt_tokens(contents: list[str]) -> int:
    """The mock provider's count: ceil(UTF-8 bytes of all contents / 4), at least 1."""
    return max(1, math.ceil(sum(len(c.encode()) for c in contents) / 4))


@given(
    messages=st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant", "developer"]), st.text()),
        max_size=8,
    ),
    cap=st.none() | st.integers(1, 10**6),
    n=st.none() | st.integers(1, 16),
)
def test_text_chat_estimates_bound_the_tokens(
    messages: list[tuple[str, str]], cap: int | None, n: int | None
) -> None:
    body: dict[str, Any] = {"messages": [{"role": r, "content": c} for r, c in messages]}
    if cap is not None:
        body["max_tokens"] = cap
    if n is not None:
        body["n"] = n
    estimate = estimate_chat(body, ECHO, DEFAULT_OUT)
    contents = [c for _, c in messages]
    text_bytes = sum(len(c.encode()) for c in contents)
    assert estimate.input_tokens >= text_bytes
    assert estimate.input_tokens >= _mock_prompt_tokens(contents)
    assert estimate.input_tokens == 3 + 4 * len(messages) + text_bytes
    assert estimate.output_tokens == (cap or DEFAULT_OUT) * (n or 1)
    assert estimate.input_cost == estimate.input_tokens * 1_000
    assert estimate.output_cost == estimate.output_tokens * 2_000


@given(inputs=st.lists(st.text(), max_size=8) | st.text())
def test_text_embedding_estimates_bound_the_mock_count(inputs: list[str] | str) -> None:
    texts = [inputs] if isinstance(inputs, str) else inputs
    estimate = estimate_embedding({"input": inputs}, EMBED)
    assert estimate.input_tokens >= _mock_prompt_tokens(texts)
    assert estimate.input_tokens >= sum(len(t.encode()) for t in texts)
    assert estimate.output_tokens == 0
