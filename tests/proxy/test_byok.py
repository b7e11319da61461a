"""BYOK: a project's own provider credential goes upstream instead of the gateway's, and
its usage still counts toward the key's limits."""

from __future__ import annotations

import asyncio

import asyncpg
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from spendgate.enforcement.money import format_usd
from tests.helpers import call
from tests.proxy.conftest import UPSTREAM_KEY, FakeGatewayFactory, ledger

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
SECRET = "server-secret-for-byok-tests"
OWN_KEY = "sk-project-own-credential-42"


async def test_the_upstream_gets_the_projects_credential_and_limits_still_hold(
    via_fake: FakeGatewayFactory, db: asyncpg.Connection
) -> None:
    fake, gateway = await via_fake(secret_key=SECRET)
    fake.prompt_tokens, fake.completion_tokens = 100, 50
    cost = 100 * 1000 + 50 * 2000
    key = await gateway.key(usage_limit=format_usd(cost))
    stored = await call(
        gateway.admin,
        "PUT",
        f"/projects/{key['project_id']}/providers/fake",
        {"api_key": OWN_KEY},
    )
    assert stored == {
        "project_id": key["project_id"],
        "provider": "fake",
        "byok_providers": ["fake"],
    }
    assert OWN_KEY not in str(await call(gateway.admin, "GET", f"/projects/{key['project_id']}"))

    sdk = gateway.sdk(key["key"])
    await sdk.chat.completions.create(model="fake/m1", messages=HI)
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {OWN_KEY}"
    rows = await ledger(db, key["id"], 1)
    assert [(r["billing"], r["cost_nano"]) for r in rows] == [("byok", cost)]
    with pytest.raises(openai.RateLimitError):  # BYOK usage counts toward the key's limit
        await sdk.chat.completions.create(model="fake/m1", messages=HI)

    stored_row = await db.fetchval("SELECT ciphertext::text FROM provider_credentials")
    assert OWN_KEY not in stored_row and OWN_KEY.encode().hex() not in stored_row

    # Another project without its own credential goes with the gateway's.
    other = await gateway.key()
    await gateway.sdk(other["key"]).chat.completions.create(model="fake/m1", messages=HI)
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert [r["billing"] for r in await ledger(db, other["id"], 1)] == ["credits"]


async def test_removing_the_credential_goes_back_to_the_gateways_at_once(
    via_fake: FakeGatewayFactory,
) -> None:
    fake, gateway = await via_fake(secret_key=SECRET)
    key = await gateway.key()
    path = f"/projects/{key['project_id']}/providers/fake"
    await call(gateway.admin, "PUT", path, {"api_key": OWN_KEY})
    sdk = gateway.sdk(key["key"])
    await sdk.chat.completions.create(model="fake/m1", messages=HI)
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {OWN_KEY}"
    await call(gateway.admin, "DELETE", path, status=204)
    await call(gateway.admin, "DELETE", path, status=404)
    async with asyncio.timeout(2):  # the invalidation message travels through Redis
        while True:
            await sdk.chat.completions.create(model="fake/m1", messages=HI)
            if fake.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}":
                break
            await asyncio.sleep(0.02)


async def test_byok_needs_the_server_secret(via_fake: FakeGatewayFactory) -> None:
    _, gateway = await via_fake()  # no SPENDGATE_SECRET_KEY
    key = await gateway.key()
    refused = await call(
        gateway.admin,
        "PUT",
        f"/projects/{key['project_id']}/providers/fake",
        {"api_key": OWN_KEY},
        400,
    )
    assert refused["error"]["code"] == "byok_disabled"
    assert OWN_KEY not in str(refused)


@pytest.mark.parametrize(
    ("provider", "body", "status", "param"),
    [
        ("nope", {"api_key": OWN_KEY}, 404, None),
        ("mock", {"api_key": OWN_KEY}, 404, None),
        ("fake", {}, 400, "api_key"),
        ("fake", {"api_key": ""}, 400, "api_key"),
        ("fake", {"api_key": 42}, 400, "api_key"),
        ("fake", {"api_key": "sk-x\nX-Injected: 1"}, 400, "api_key"),
        ("fake", {"api_key": OWN_KEY, "extra": 1}, 400, "extra"),
    ],
)
async def test_bad_credential_requests_change_nothing(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
    provider: str,
    body: object,
    status: int,
    param: str | None,
) -> None:
    _, gateway = await via_fake(secret_key=SECRET)
    key = await gateway.key()
    path = f"/projects/{key['project_id']}/providers/{provider}"
    error = (await call(gateway.admin, "PUT", path, body, status))["error"]
    assert error["param"] == param
    assert OWN_KEY not in str(error)
    assert await db.fetchval("SELECT count(*) FROM provider_credentials") == 0


async def test_credentials_of_an_unknown_project_are_404(via_fake: FakeGatewayFactory) -> None:
    _, gateway = await via_fake(secret_key=SECRET)
    await call(gateway.admin, "PUT", "/projects/prj_nope/providers/fake", {"api_key": "x"}, 404)
