"""Security promises: secrets and prompts stay out of every store and output, projects stay
apart, and no request chooses where the gateway connects."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
import redis.asyncio as redis
from openai.types.chat import ChatCompletionMessageParam

from spendgate.enforcement.tokens import generate_token
from tests.gateway_fixtures import UPSTREAM_KEY, FakeGatewayFactory, Gateway, ledger
from tests.helpers import ADMIN_TOKEN, call

SECRET = "server-secret-for-security-tests"
OWN_KEY = "sk-byok-credential-security-test"
PROMPT = "confidential-merger-plans-for-acme-corp"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]


async def postgres_text(db: asyncpg.Connection) -> str:
    """Every row of every table of the schema, as text."""
    tables = await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    dump: list[str] = []
    for table in tables:
        name = table["tablename"]
        rows = await db.fetch(f'SELECT t::text AS row FROM "{name}" t')
        dump.extend(r["row"] for r in rows)
    return "\n".join(dump)


async def redis_text(client: redis.Redis, prefix: str) -> str:
    dump: list[str] = []
    async for name in client.scan_iter(match=f"{prefix}:*", count=1000):
        dump.append(repr(name))
        kind = await client.type(name)
        if kind == b"string":
            dump.append(repr(await client.get(name)))
        elif kind == b"hash":
            dump.append(repr(await client.hgetall(name)))
        elif kind == b"zset":
            dump.append(repr(await client.zrange(name, 0, -1, withscores=True)))
        elif kind == b"stream":
            dump.append(repr(await client.xrange(name)))
    return "\n".join(dump)


async def test_no_secret_or_prompt_reaches_storage_metrics_or_error_bodies(
    via_fake: FakeGatewayFactory,
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    fake, gateway = await via_fake(secret_key=SECRET)
    key = await gateway.key(usage_limit="0.0001")
    await call(
        gateway.admin, "PUT", f"/projects/{key['project_id']}/providers/fake", {"api_key": OWN_KEY}
    )
    sdk = gateway.sdk(key["key"])
    bodies: list[str] = []
    await sdk.chat.completions.create(model="fake/m1", messages=MESSAGES)
    await sdk.chat.completions.create(model="mock/echo-1", messages=MESSAGES)
    stream = await sdk.chat.completions.create(model="mock/echo-1", messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    failing: list[Any] = [
        sdk.chat.completions.create(model="nope/none", messages=MESSAGES),
        sdk.chat.completions.create(model="mock/echo-1", messages=MESSAGES, max_tokens=10**9),
        gateway.sdk(generate_token()).chat.completions.create(
            model="mock/echo-1", messages=MESSAGES
        ),
        gateway.sdk(ADMIN_TOKEN).chat.completions.create(model="mock/echo-1", messages=MESSAGES),
    ]
    fake.mode = "error_500"
    failing.append(sdk.chat.completions.create(model="fake/m1", messages=MESSAGES))
    for attempt in failing:
        with pytest.raises(openai.APIStatusError) as error:
            await attempt
        bodies.append(error.value.response.text)
    async with aiohttp.ClientSession() as http:  # the admin API with a proxy token
        async with http.get(
            str(gateway.admin.make_url("/admin/v1/projects")),
            headers={"Authorization": f"Bearer {key['key']}"},
        ) as refused:
            bodies.append(await refused.text())
    await ledger(db, key["id"], 3)
    await asyncio.sleep(0.3)
    metrics = await (await gateway.admin.get("/metrics")).text()
    admin_views = [
        str(await call(gateway.admin, "GET", f"/projects/{key['project_id']}/keys")),
        str(await call(gateway.admin, "GET", f"/keys/{key['id']}")),
    ]

    places = {
        "postgres": await postgres_text(db),
        "redis": await redis_text(raw_redis, redis_prefix),
        "metrics": metrics,
        "error bodies": "\n".join(bodies),
        "admin views": "\n".join(admin_views),
    }
    assert key["id"] in places["postgres"] and key["id"] in places["redis"]  # the dumps work
    secrets = {
        "token": key["key"],
        "token body": key["key"][4:],
        "admin token": ADMIN_TOKEN,
        "gateway credential": UPSTREAM_KEY,
        "BYOK credential": OWN_KEY,
        "server secret": SECRET,
        "prompt": PROMPT,
    }
    for place, text in places.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} found in {place}"


async def test_one_projects_key_never_reaches_another_projects_data(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    a = await gateway.key()
    b = await gateway.key()
    assert a["project_id"] != b["project_id"]
    rules_a = await call(
        gateway.admin, "PUT", f"/keys/{a['id']}/iam-rules", [{"effect": "deny", "models": ["*"]}]
    )
    # Rules belong to their key: another key's list is untouched and its calls unaffected.
    assert await call(gateway.admin, "GET", f"/keys/{b['id']}/iam-rules") == []
    await gateway.sdk(b["key"]).chat.completions.create(model="mock/echo-1", messages=MESSAGES)
    # A rule id of key A means nothing on key B: ids cannot be written at all.
    refused = await call(
        gateway.admin,
        "PUT",
        f"/keys/{b['id']}/iam-rules",
        [{**rules_a[0], "status": "inactive"}],
        400,
    )
    assert refused["error"]["param"] == "[0].id"
    assert await call(gateway.admin, "GET", f"/keys/{a['id']}/iam-rules") == rules_a
    # A proxy key opens no admin route, not even for its own project.
    for path in (f"/projects/{a['project_id']}/keys", f"/keys/{a['id']}", f"/keys/{b['id']}"):
        response = await gateway.admin.get(
            "/admin/v1" + path, headers={"Authorization": f"Bearer {a['key']}"}
        )
        assert response.status == 401
    # Key B's usage is B's alone.
    await ledger(db, b["id"], 1)
    assert (await gateway.get_key(a["id"]))["usage"] == "0"
    listed_a = await call(gateway.admin, "GET", f"/projects/{a['project_id']}/keys")
    assert [k["id"] for k in listed_a["data"]] == [a["id"]]


@pytest.mark.parametrize(
    "model",
    [
        "http://127.0.0.1:1/v1",
        "https://evil.example/v1/chat",
        "fake/../../admin/v1/projects",
        "fake/m1/../../../etc/passwd",
        "//127.0.0.1:1/x",
        "fake/m1?x=http://127.0.0.1:1",
    ],
)
async def test_no_request_chooses_where_the_gateway_connects(
    via_fake: FakeGatewayFactory, model: str
) -> None:
    fake, gateway = await via_fake()
    key = await gateway.key()
    with pytest.raises(openai.NotFoundError):
        await gateway.sdk(key["key"]).chat.completions.create(model=model, messages=MESSAGES)
    assert fake.requests == []  # nothing was sent anywhere


async def test_over_long_headers_are_refused_without_a_server_error(gateway: Gateway) -> None:
    key = await gateway.key()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            str(gateway.admin.make_url("/v1/chat/completions")),
            json={"model": "mock/echo-1", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {key['key']}", "X-Padding": "x" * 20_000},
        ) as response:
            assert 400 <= response.status < 500
