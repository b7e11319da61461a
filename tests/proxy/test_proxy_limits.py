"""Limits hold exactly: all-time, recurring (with an honestly moved clock), disable/enable,
and whatever the concurrency, in both enforcement modes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from spendgate.enforcement.money import format_usd
from tests.helpers import FakeClock, call
from tests.proxy.conftest import FakeGatewayFactory, Gateway, GatewayFactory, ledger

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
COST = 1 * 1000 + 16 * 2000  # "hi" on mock/echo-1: 1 prompt token, 16 completion tokens


async def ask(sdk: openai.AsyncOpenAI, **extra: Any) -> Any:
    return await sdk.chat.completions.create(model="mock/echo-1", messages=HI, **extra)


async def test_all_time_limit_stops_the_key(gateway: Gateway, db: asyncpg.Connection) -> None:
    key = await gateway.key(usage_limit=format_usd(3 * COST + 1))
    sdk = gateway.sdk(key["key"])
    for _ in range(4):  # 3 fit; the 4th starts under the limit, so it is admitted too
        await ask(sdk)
    with pytest.raises(openai.RateLimitError) as refused:
        await ask(sdk)
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["type"]) == ("usage_limit_exceeded", "insufficient_quota")
    assert "retry-after" not in refused.value.response.headers
    assert refused.value.response.headers["x-request-id"].startswith("req_")
    rows = await ledger(db, key["id"], 4)
    assert sum(r["cost_nano"] for r in rows) == 4 * COST
    assert (await gateway.get_key(key["id"]))["usage"] == format_usd(4 * COST)


async def test_recurring_limit_rejects_until_the_window_passes(
    gateway: Gateway, clock: FakeClock, db: asyncpg.Connection
) -> None:
    key = await gateway.key(
        recurring_limit={"amount": format_usd(2 * COST), "every": 1, "unit": "hour"}
    )
    sdk = gateway.sdk(key["key"])
    await ask(sdk)
    await ask(sdk)
    clock.advance(timedelta(minutes=20))
    with pytest.raises(openai.RateLimitError) as refused:
        await ask(sdk)
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "period_usage_limit_exceeded"
    headers = refused.value.response.headers
    assert headers["retry-after"] == str(40 * 60)
    assert headers["x-spendgate-period-resets-at"] == "2026-01-31T11:00:00Z"
    assert "2026-01-31T11:00:00Z" in error["message"]

    got = await gateway.get_key(key["id"])
    assert got["current_period"]["usage"] == format_usd(2 * COST)

    clock.advance(timedelta(minutes=40))  # the next window
    await ask(sdk)
    got = await gateway.get_key(key["id"])
    assert got["current_period"] == {
        "usage": format_usd(COST),
        "started_at": "2026-01-31T11:00:00Z",
        "resets_at": "2026-01-31T12:00:00Z",
    }
    assert got["usage"] == format_usd(3 * COST)
    await ledger(db, key["id"], 3)


async def test_updating_the_recurring_limit_starts_a_new_period(
    gateway: Gateway, clock: FakeClock
) -> None:
    key = await gateway.key(recurring_limit={"amount": format_usd(COST), "every": 1, "unit": "day"})
    sdk = gateway.sdk(key["key"])
    await ask(sdk)
    with pytest.raises(openai.RateLimitError):
        await ask(sdk)
    clock.advance(timedelta(hours=1))
    # Only the all-time limit: the period is untouched and still full.
    await call(gateway.admin, "PATCH", f"/keys/{key['id']}", {"usage_limit": "100"})
    with pytest.raises(openai.RateLimitError):
        await ask(sdk)
    renewed = await call(
        gateway.admin,
        "PATCH",
        f"/keys/{key['id']}",
        {"recurring_limit": {"amount": format_usd(COST), "every": 1, "unit": "day"}},
    )
    assert renewed["current_period"]["usage"] == "0"
    assert renewed["current_period"]["started_at"] == "2026-01-31T11:00:00Z"
    await ask(sdk)
    with pytest.raises(openai.RateLimitError):
        await ask(sdk)


async def test_disable_takes_effect_on_the_very_next_request_in_every_replica(
    make_gateway: GatewayFactory,
) -> None:
    one = await make_gateway()
    two = await make_gateway()  # a second replica on the same Redis and Postgres
    key = await one.key()
    sdk_two = two.sdk(key["key"])
    await ask(sdk_two)  # replica two has the key cached now
    await call(one.admin, "PATCH", f"/keys/{key['id']}", {"status": "inactive"})
    with pytest.raises(openai.AuthenticationError) as refused:
        await ask(sdk_two)
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "api_key_disabled"
    await call(one.admin, "PATCH", f"/keys/{key['id']}", {"status": "active"})
    await ask(sdk_two)


async def test_a_deleted_key_is_refused(gateway: Gateway) -> None:
    key = await gateway.key()
    sdk = gateway.sdk(key["key"])
    await ask(sdk)
    await call(gateway.admin, "DELETE", f"/keys/{key['id']}", status=204)
    with pytest.raises(openai.AuthenticationError) as refused:
        await ask(sdk)
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_api_key"


@pytest.mark.parametrize("mode", ["reserve", "hard"])
async def test_two_hundred_concurrent_requests_on_a_budget_for_twenty(
    make_gateway: GatewayFactory, db: asyncpg.Connection, mode: str
) -> None:
    gateway = await make_gateway(enforcement=mode)
    limit = 20 * COST + COST // 2
    key = await gateway.key(usage_limit=format_usd(limit))
    sdk = gateway.sdk(key["key"])

    async def one() -> str:
        """Retry while only in-flight reservations stand in the way, as a client told
        `Retry-After: 1` would (faster here), so the whole budget gets used."""
        while True:
            try:
                await ask(sdk, max_tokens=16)
                return "ok"
            except openai.RateLimitError as refused:
                if refused.response.headers.get("retry-after") != "1":
                    return "429"
                await asyncio.sleep(0.01)

    outcomes = await asyncio.gather(*(one() for _ in range(200)))
    served = outcomes.count("ok")
    rows = await ledger(db, key["id"], served)
    charged = sum(r["cost_nano"] for r in rows)
    assert len(rows) == served  # each served call is in the ledger exactly once
    if mode == "reserve":
        assert all(r["cost_nano"] == COST for r in rows)
        assert limit <= charged <= limit + COST
    else:
        # The last admitted calls may get a lowered output cap, so cost less; what is
        # left cannot pay for another call's input estimate (9 tokens) and one token.
        assert all(r["cost_nano"] <= COST for r in rows)
        assert limit - (9 * 1000 + 2000) < charged <= limit
    usage = (await gateway.get_key(key["id"]))["usage"]
    assert usage == format_usd(charged)


async def test_hard_mode_lowers_the_output_cap_to_what_the_budget_pays_for(
    make_gateway: GatewayFactory, db: asyncpg.Connection
) -> None:
    gateway = await make_gateway(enforcement="hard")
    # Input estimate of "hi": 2 bytes + 4 + 3 = 9 tokens = 9,000 nano; room for 5 output tokens.
    key = await gateway.key(usage_limit=format_usd(9000 + 5 * 2000 + 1999))
    sdk = gateway.sdk(key["key"])
    answer = await ask(sdk)
    assert answer.usage.completion_tokens == 5  # the mock honours the lowered cap
    rows = await ledger(db, key["id"], 1)
    assert rows[0]["cost_nano"] == 1000 + 5 * 2000
    # What is left (9,999 nano) no longer pays for the input estimate and one token.
    with pytest.raises(openai.RateLimitError):
        await ask(sdk)


async def test_in_flight_reservations_get_retry_after_one_second(
    via_fake: FakeGatewayFactory,
) -> None:
    fake, gateway = await via_fake()
    fake.mode, fake.delay, fake.completion_tokens = "slow_stream", 0.2, 3
    # Without an output cap a call reserves 4,096 output tokens (8.2 milli-USD): one call
    # in flight fills the limit while the settled usage is still 0.
    key = await gateway.key(usage_limit="0.001")
    sdk = gateway.sdk(key["key"])
    slow = await sdk.chat.completions.create(model="fake/m1", messages=HI, stream=True)
    await slow.__anext__()  # admitted; the stream is still running
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.chat.completions.create(model="fake/m1", messages=HI)
    assert refused.value.response.headers["retry-after"] == "1"
    assert "in flight" in str(refused.value.body)
    async for _ in slow:
        pass
    fake.mode = "ok"
    await sdk.chat.completions.create(model="fake/m1", messages=HI)  # settled: works again
