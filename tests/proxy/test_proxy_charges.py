"""Calls through the gateway with the official openai SDK are charged exactly:
key usage == the sum of its ledger rows == price x reported tokens."""

from __future__ import annotations

from typing import Any

import asyncpg
import openai
import pytest

from spendgate.enforcement.money import format_usd
from tests.proxy.conftest import (
    UPSTREAM_KEY,
    FakeGatewayFactory,
    Gateway,
    ledger,
)

# mock/echo-1: $1 per M input, $2 per M output -> 1,000 and 2,000 nano per token.
IN, OUT = 1000, 2000


def mock_cost(prompt: str, completion_tokens: int = 16) -> int:
    prompt_tokens = max(1, -(-len(prompt.encode()) // 4))
    return prompt_tokens * IN + completion_tokens * OUT


async def test_a_chat_completion_is_charged_exactly(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    key = await gateway.key(usage_limit="10")
    sdk = gateway.sdk(key["key"])
    answer = await sdk.chat.completions.create(
        model="mock/echo-1", messages=[{"role": "user", "content": "hello there"}]
    )
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 16)
    expected = 3 * IN + 16 * OUT
    assert expected == mock_cost("hello there")

    rows = await ledger(db, key["id"], 1)
    assert [(r["cost_nano"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        (expected, 3, 16)
    ]
    row = rows[0]
    assert (row["model"], row["provider"], row["status"], row["stream"], row["billing"]) == (
        "mock/echo-1",
        "mock",
        200,
        False,
        "credits",
    )
    assert (await gateway.get_key(key["id"]))["usage"] == format_usd(expected)


async def test_bare_model_ids_resolve_and_max_tokens_is_honoured(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    key = await gateway.key()
    sdk = gateway.sdk(key["key"])
    answer = await sdk.chat.completions.create(
        model="echo-1", max_tokens=5, messages=[{"role": "user", "content": "abcd"}]
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    rows = await ledger(db, key["id"], 1)
    assert rows[0]["cost_nano"] == 1 * IN + 5 * OUT


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_stream_is_charged_exactly_and_usage_shown_only_when_asked(
    gateway: Gateway, db: asyncpg.Connection, include_usage: bool
) -> None:
    key = await gateway.key(usage_limit="10")
    sdk = gateway.sdk(key["key"])
    options: Any = {"include_usage": True} if include_usage else openai.NOT_GIVEN
    stream = await sdk.chat.completions.create(
        model="mock/echo-1",
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options=options,
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert text  # the answer arrived
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    else:
        assert usage_chunks == []  # the gateway asked for usage, the client did not
    expected = mock_cost("stream me please")
    rows = await ledger(db, key["id"], 1)
    assert [(r["cost_nano"], r["stream"]) for r in rows] == [(expected, True)]
    assert (await gateway.get_key(key["id"]))["usage"] == format_usd(expected)


async def test_usage_of_many_calls_equals_the_ledger(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    key = await gateway.key(usage_limit="10")
    sdk = gateway.sdk(key["key"])
    prompts = ["a", "bb" * 10, "ccc" * 100, "d"]
    for i, prompt in enumerate(prompts):
        await sdk.chat.completions.create(
            model="mock/echo-1",
            messages=[{"role": "user", "content": prompt}],
            stream=i % 2 == 1,
        )
    rows = await ledger(db, key["id"], len(prompts))
    total = sum(mock_cost(p) for p in prompts)
    assert sum(r["cost_nano"] for r in rows) == total
    assert (await gateway.get_key(key["id"]))["usage"] == format_usd(total)


async def test_the_free_model_costs_nothing(gateway: Gateway, db: asyncpg.Connection) -> None:
    key = await gateway.key(usage_limit="0.000001")
    sdk = gateway.sdk(key["key"])
    for _ in range(3):
        await sdk.chat.completions.create(
            model="mock/free-1", messages=[{"role": "user", "content": "x" * 400}]
        )
    rows = await ledger(db, key["id"], 3)
    assert [r["cost_nano"] for r in rows] == [0, 0, 0]


async def test_a_real_provider_gets_its_own_credential_and_the_real_model_id(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
) -> None:
    fake, gateway = await via_fake()
    key = await gateway.key()
    sdk = gateway.sdk(key["key"])
    fake.prompt_tokens, fake.completion_tokens = 1234, 567
    answer = await sdk.chat.completions.create(
        model="fake/m1",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "client-chosen"},
    )
    assert answer.usage is not None and answer.usage.prompt_tokens == 1234
    sent = fake.requests[-1]
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert key["key"] not in str(sent.headers) and key["key"] not in sent.body.decode()
    assert sent.json["model"] == "m1"
    rows = await ledger(db, key["id"], 1)
    assert rows[0]["cost_nano"] == 1234 * IN + 567 * OUT
    assert rows[0]["request_id"] != "client-chosen"
    assert rows[0]["request_id"].startswith("req_")


async def test_streams_to_a_real_provider_ask_for_usage_and_hide_it(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
) -> None:
    fake, gateway = await via_fake()
    key = await gateway.key()
    sdk = gateway.sdk(key["key"])
    fake.prompt_tokens, fake.completion_tokens = 40, 7
    stream = await sdk.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert fake.requests[-1].json["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 7
    rows = await ledger(db, key["id"], 1)
    assert rows[0]["cost_nano"] == 40 * IN + 7 * OUT
