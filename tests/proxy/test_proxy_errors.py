"""Errors on the proxy path: DESIGN.md's table, and what each one costs (nothing, unless
output was delivered)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletionMessageParam

from spendgate.config import Settings
from spendgate.enforcement.tokens import generate_token
from spendgate.proxy.app import create_app
from tests.fakes.upstream import FakeUpstream
from tests.helpers import ADMIN_TOKEN, FakeClock
from tests.proxy.conftest import FakeGatewayFactory, Gateway, GatewayFactory, fake_catalog, ledger

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def post(
    gateway: Gateway, token: str | None, body: bytes, content_type: str = "application/json"
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = await gateway.admin.post("/v1/chat/completions", data=body, headers=headers)
    assert response.headers["x-request-id"].startswith("req_")
    return response.status, dict(response.headers), await response.json()


async def nothing_charged(gateway: Gateway, db: asyncpg.Connection, key_id: str) -> None:
    await asyncio.sleep(0.3)  # longer than the ledger writer's flush interval
    assert await db.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", key_id) == 0
    assert (await gateway.get_key(key_id))["usage"] == "0"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{", "application/json", 400, "invalid_json"),
        (b"", "application/json", 400, "invalid_json"),
        (b"[1, 2]", "application/json", 400, "invalid_json"),
        (b'"model"', "application/json", 400, "invalid_json"),
        (b'{"messages": []}', "application/json", 400, "missing_model"),
        (b'{"model": 5, "messages": []}', "application/json", 400, "missing_model"),
        (b'{"model": "", "messages": []}', "application/json", 400, "missing_model"),
        (b'{"model": "mock/echo-1"}', "text/plain", 400, "invalid_json"),
        (b"model=mock/echo-1", "application/x-www-form-urlencoded", 400, "invalid_json"),
        (b'{"model": "nope/none", "messages": []}', "application/json", 404, "model_not_found"),
        (b'{"model": "gpt-9", "messages": []}', "application/json", 404, "model_not_found"),
    ],
)
async def test_bad_input_gets_the_table_error_and_costs_nothing(
    gateway: Gateway,
    db: asyncpg.Connection,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    key = await gateway.key()
    got, _, answer = await post(gateway, key["key"], body, content_type)
    assert (got, answer["error"]["code"]) == (status, code)
    assert answer["error"]["type"] == "invalid_request_error"
    await nothing_charged(gateway, db, key["id"])


async def test_a_body_over_the_size_limit_is_413(
    make_gateway: GatewayFactory, db: asyncpg.Connection
) -> None:
    gateway = await make_gateway(max_body_bytes=1000)
    key = await gateway.key()
    body = b'{"model": "mock/echo-1", "messages": [{"role": "user", "content": "' + b"x" * 2000
    got, _, answer = await post(gateway, key["key"], body + b'"}]}')
    assert (got, answer["error"]["code"]) == (413, "request_too_large")
    await nothing_charged(gateway, db, key["id"])


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic c2drXzEyMzo=",
        "Bearer sgk_short",
        "Bearer " + generate_token()[:-1] + "0",  # checksum broken (or changed)
        "Bearer " + generate_token(),  # well-formed, but no key has it
        "Bearer test-admin-token-0123456789",  # the admin token is no API key
    ],
)
async def test_bad_tokens_are_401_invalid_api_key(
    gateway: Gateway, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await gateway.admin.post(
        "/v1/chat/completions",
        json={"model": "mock/echo-1", "messages": HI},
        headers=headers,
    )
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_models_lists_the_catalog_for_a_valid_key(gateway: Gateway) -> None:
    key = await gateway.key()
    models = await gateway.sdk(key["key"]).models.list()
    ids = {m.id for m in models.data}
    assert {"mock/echo-1", "mock/free-1", "mock/embed-1"} <= ids
    with pytest.raises(openai.AuthenticationError):
        await gateway.sdk(generate_token()).models.list()


@pytest.mark.parametrize("mode", ["error_500", "error_400"])
async def test_a_provider_error_passes_through_and_costs_nothing(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
    mode: str,
) -> None:
    fake, gateway = await via_fake()
    fake.mode = mode  # type: ignore[assignment]
    key = await gateway.key()
    expected = openai.InternalServerError if mode == "error_500" else openai.BadRequestError
    for stream in (False, True):
        with pytest.raises(expected):
            await gateway.sdk(key["key"]).chat.completions.create(
                model="fake/m1", messages=HI, stream=stream
            )
    rows = await ledger(db, key["id"], 2)
    status = 500 if mode == "error_500" else 400
    assert [(r["cost_nano"], r["status"]) for r in rows] == [(0, status), (0, status)]
    assert (await gateway.get_key(key["id"]))["usage"] == "0"


async def test_an_unreachable_provider_is_502_and_costs_nothing(
    make_gateway: GatewayFactory,
    fake_upstream: tuple[FakeUpstream, TestServer],
    tmp_path: Path,
    db: asyncpg.Connection,
) -> None:
    _, server = fake_upstream
    catalog = fake_catalog(server, tmp_path)
    await server.close()  # nothing listens there any more
    gateway = await make_gateway(catalog=catalog)
    key = await gateway.key()
    with pytest.raises(openai.APIStatusError) as failed:
        await gateway.sdk(key["key"]).chat.completions.create(model="fake/m1", messages=HI)
    assert failed.value.status_code == 502
    body = failed.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_unavailable"
    rows = await ledger(db, key["id"], 1)
    assert [(r["cost_nano"], r["status"]) for r in rows] == [(0, 502)]


async def test_a_provider_too_slow_to_answer_is_504_and_costs_nothing(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
) -> None:
    fake, gateway = await via_fake(upstream_first_byte_timeout=0.2)
    fake.mode, fake.delay = "slow_first_byte", 2.0
    key = await gateway.key()
    with pytest.raises(openai.APIStatusError) as failed:
        await gateway.sdk(key["key"]).chat.completions.create(model="fake/m1", messages=HI)
    assert failed.value.status_code == 504
    rows = await ledger(db, key["id"], 1)
    assert [(r["cost_nano"], r["status"]) for r in rows] == [(0, 504)]


async def test_malformed_json_from_the_provider_is_502_and_costs_nothing(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
) -> None:
    fake, gateway = await via_fake()
    fake.mode = "malformed_json"
    key = await gateway.key()
    with pytest.raises(openai.APIStatusError) as failed:
        await gateway.sdk(key["key"]).chat.completions.create(model="fake/m1", messages=HI)
    assert failed.value.status_code == 502
    rows = await ledger(db, key["id"], 1)
    assert [(r["cost_nano"], r["status"]) for r in rows] == [(0, 502)]


async def test_a_stream_cut_by_the_provider_charges_what_was_delivered(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
) -> None:
    fake, gateway = await via_fake()
    fake.mode, fake.cut_after = "cut_stream", 3
    key = await gateway.key()
    stream = await gateway.sdk(key["key"]).chat.completions.create(
        model="fake/m1", messages=HI, stream=True
    )
    chunks = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            chunks.append(chunk)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 3
    rows = await ledger(db, key["id"], 1)
    # No usage reported: the input estimate ("hi": 2 bytes + 4 + 3 = 9 tokens) and the
    # 3 content chunks delivered.
    assert [(r["cost_nano"], r["status"]) for r in rows] == [(9 * 1000 + 3 * 2000, 502)]


async def hang_up_after_first_event(base_url: str, token: str) -> None:
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            base_url + "/v1/chat/completions",
            json={"model": "fake/m1", "messages": HI, "stream": True},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status == 200
        await response.content.readuntil(b"\n\n")
        response.close()


async def test_a_client_that_disconnects_mid_stream_is_charged_the_providers_usage(
    settings: Settings,
    clock: FakeClock,
    fake_upstream: tuple[FakeUpstream, TestServer],
    tmp_path: Path,
    db: asyncpg.Connection,
    raw_redis: Any,
) -> None:
    """As `spendgate serve` runs (handlers are not cancelled when the client leaves),
    the gateway keeps reading the provider for its usage."""
    fake, server = fake_upstream
    fake.mode, fake.delay = "slow_stream", 0.05
    fake.prompt_tokens, fake.completion_tokens = 11, 8
    app = create_app(settings, clock=clock, catalog=fake_catalog(server, tmp_path))
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession(
            base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as admin:
            async with admin.post("/admin/v1/projects", json={"name": "p"}) as created:
                project = await created.json()
            async with admin.post(
                f"/admin/v1/projects/{project['id']}/keys", json={"name": "k"}
            ) as created:
                key = await created.json()
        await hang_up_after_first_event(base_url, key["key"])
        rows = await ledger(db, key["id"], 1)
        assert [(r["cost_nano"], r["status"]) for r in rows] == [(11 * 1000 + 8 * 2000, 499)]
    finally:
        await runner.cleanup()


async def test_a_client_disconnect_that_cancels_the_handler_is_still_charged(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
) -> None:
    """aiohttp's test server cancels a handler whose client left, in the middle of reading
    the provider: the stream is settled anyway, at the estimate (never free)."""
    fake, gateway = await via_fake()
    fake.mode, fake.delay = "slow_stream", 0.05
    key = await gateway.key()
    await hang_up_after_first_event(gateway.base_url.removesuffix("/v1"), key["key"])
    rows = await ledger(db, key["id"], 1)
    assert rows[0]["status"] == 499
    assert rows[0]["cost_nano"] >= 9 * 1000 + 2000  # input estimate and at least one token
    assert (await gateway.get_key(key["id"]))["usage"] != "0"


async def test_a_stream_without_usage_is_charged_the_estimate_of_what_was_delivered(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
) -> None:
    fake, gateway = await via_fake()
    fake.mode, fake.completion_tokens = "no_usage", 4
    key = await gateway.key()
    stream = await gateway.sdk(key["key"]).chat.completions.create(
        model="fake/m1", messages=HI, stream=True
    )
    async for _ in stream:
        pass
    rows = await ledger(db, key["id"], 1)
    assert [(r["cost_nano"], r["status"]) for r in rows] == [(9 * 1000 + 4 * 2000, 200)]
