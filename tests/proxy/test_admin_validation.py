"""Bad input to the admin API: a 400 naming the field, 401/404 where due, nothing changed."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp import web

from spendgate.proxy.app import create_app
from tests.helpers import ADMIN_TOKEN, AdminClient, call

LONG = "x" * 256

BAD_KEYS: list[tuple[Any, str | None, str]] = [
    ({}, "name", "invalid_field"),
    ({"name": ""}, "name", "invalid_field"),
    ({"name": "   "}, "name", "invalid_field"),
    ({"name": LONG}, "name", "invalid_field"),
    ({"name": 5}, "name", "invalid_field"),
    ({"name": "a", "usage_limit": "-1"}, "usage_limit", "invalid_field"),
    ({"name": "a", "usage_limit": -1}, "usage_limit", "invalid_field"),
    ({"name": "a", "usage_limit": "ten"}, "usage_limit", "invalid_field"),
    ({"name": "a", "usage_limit": "0.0000000001"}, "usage_limit", "invalid_field"),
    ({"name": "a", "usage_limit": True}, "usage_limit", "invalid_field"),
    ({"name": "a", "usage_limit": [1]}, "usage_limit", "invalid_field"),
    ({"name": "a", "recurring_limit": "10/day"}, "recurring_limit", "invalid_field"),
    (
        {"name": "a", "recurring_limit": {"amount": "1", "every": 1, "unit": "year"}},
        "recurring_limit.unit",
        "invalid_field",
    ),
    (
        {"name": "a", "recurring_limit": {"amount": "1", "every": 0, "unit": "hour"}},
        "recurring_limit.every",
        "invalid_field",
    ),
    (
        {"name": "a", "recurring_limit": {"amount": "1", "every": 13, "unit": "month"}},
        "recurring_limit.every",
        "invalid_field",
    ),
    (
        {"name": "a", "recurring_limit": {"amount": "1", "every": 8761, "unit": "hour"}},
        "recurring_limit.every",
        "invalid_field",
    ),
    (
        {"name": "a", "recurring_limit": {"amount": "1", "every": 1.5, "unit": "day"}},
        "recurring_limit.every",
        "invalid_field",
    ),
    (
        {"name": "a", "recurring_limit": {"amount": "-1", "every": 1, "unit": "day"}},
        "recurring_limit.amount",
        "invalid_field",
    ),
    (
        {"name": "a", "recurring_limit": {"every": 1, "unit": "day"}},
        "recurring_limit.amount",
        "invalid_field",
    ),
    (
        {"name": "a", "recurring_limit": {"amount": "1", "every": 1, "unit": "day", "x": 1}},
        "recurring_limit.x",
        "invalid_field",
    ),
    ({"name": "a", "colour": "red"}, "colour", "invalid_field"),
    ([{"name": "a"}], None, "invalid_json"),
    ("name", None, "invalid_json"),
]


async def project(client: AdminClient, plan: str = "free") -> str:
    created = await call(client, "POST", "/projects", {"name": "p", "plan": plan}, 201)
    assert isinstance(created["id"], str)
    return created["id"]


@pytest.mark.parametrize(("body", "param", "code"), BAD_KEYS)
async def test_bad_key_create_names_the_field_and_creates_nothing(
    client: AdminClient, db: asyncpg.Connection, body: Any, param: str | None, code: str
) -> None:
    pid = await project(client)
    error = (await call(client, "POST", f"/projects/{pid}/keys", body, 400))["error"]
    assert (error["param"], error["code"], error["type"]) == (
        param,
        code,
        "invalid_request_error",
    )
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"nul", b"\xff\xfe", b'{"name": NaN}', b'{"name": "a", "usage_limit": Infinity}'],
)
async def test_malformed_json_is_refused(
    client: AdminClient, db: asyncpg.Connection, raw: bytes
) -> None:
    pid = await project(client)
    response = await client.post(f"/admin/v1/projects/{pid}/keys", data=raw)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_json"
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_json_numbers_are_exact_decimals(client: AdminClient) -> None:
    pid = await project(client)
    response = await client.post(
        f"/admin/v1/projects/{pid}/keys",
        data=b'{"name": "a", "usage_limit": 0.1, "recurring_limit":'
        b' {"amount": 1e-9, "every": 1, "unit": "hour"}}',
    )
    key = await response.json()
    assert response.status == 201, key
    assert key["usage_limit"] == "0.1"
    assert key["recurring_limit"] == {"amount": "0.000000001", "every": 1, "unit": "hour"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"status": "paused"}, "status"),
        ({"status": None}, "status"),
        ({"name": ""}, "name"),
        ({"usage_limit": "-5"}, "usage_limit"),
        (
            {"recurring_limit": {"amount": "1", "every": 53, "unit": "week"}},
            "recurring_limit.every",
        ),
        (
            {"recurring_limit": {"amount": "1", "every": 366, "unit": "day"}},
            "recurring_limit.every",
        ),
        ({"key": "sgk_x"}, "key"),
        ({"name": "ok", "preview": "x"}, "preview"),
    ],
)
async def test_bad_key_patch_changes_nothing(
    client: AdminClient, db: asyncpg.Connection, body: Any, param: str
) -> None:
    pid = await project(client)
    key = await call(
        client,
        "POST",
        f"/projects/{pid}/keys",
        {
            "name": "k",
            "usage_limit": "3",
            "recurring_limit": {"amount": 1, "every": 1, "unit": "day"},
        },
        201,
    )
    before = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", key["id"])
    error = (await call(client, "PATCH", f"/keys/{key['id']}", body, 400))["error"]
    assert error["param"] == param
    after = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", key["id"])
    assert dict(before or {}) == dict(after or {})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "a", "plan": "gold"}, "plan"),
        ({"name": "a", "plan": "free", "key_limit": 10}, "key_limit"),
        ({"name": "a", "plan": "pro", "key_limit": 10}, "key_limit"),
        ({"name": "a", "plan": "enterprise", "key_limit": -1}, "key_limit"),
        ({"name": "a", "plan": "enterprise", "key_limit": "10"}, "key_limit"),
        ({"name": "a", "plan": "enterprise", "key_limit": 10**7}, "key_limit"),
        ({"name": "", "plan": "free"}, "name"),
        ({"plan": "free"}, "name"),
        ({"name": "a", "owner": "me"}, "owner"),
    ],
)
async def test_bad_project_create_names_the_field(
    client: AdminClient, db: asyncpg.Connection, body: Any, param: str
) -> None:
    error = (await call(client, "POST", "/projects", body, 400))["error"]
    assert error["param"] == param
    assert await db.fetchval("SELECT count(*) FROM projects") == 0


async def test_bad_project_patch_changes_nothing(
    client: AdminClient, db: asyncpg.Connection
) -> None:
    pid = await project(client, "pro")
    for body, param in [
        ({"key_limit": 50}, "key_limit"),
        ({"plan": "platinum"}, "plan"),
        ({"plan": "free", "key_limit": 3}, "key_limit"),
    ]:
        error = (await call(client, "PATCH", f"/projects/{pid}", body, 400))["error"]
        assert error["param"] == param
    row = await db.fetchrow("SELECT plan, key_limit FROM projects WHERE id = $1", pid)
    assert row is not None and (row["plan"], row["key_limit"]) == ("pro", None)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/projects/prj_nope"),
        ("PATCH", "/projects/prj_nope"),
        ("GET", "/projects/prj_nope/keys"),
        ("POST", "/projects/prj_nope/keys"),
        ("GET", "/keys/key_nope"),
        ("PATCH", "/keys/key_nope"),
        ("DELETE", "/keys/key_nope"),
    ],
)
async def test_unknown_ids_are_404(client: AdminClient, method: str, path: str) -> None:
    body = {"name": "x"} if method != "GET" and method != "DELETE" else None
    error = (await call(client, method, path, body, 404))["error"]
    assert error["code"] == "not_found"


def admin_routes(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, path) the app routes under /admin, found by walking the router, so
    a route added later is covered without touching this test."""
    routes: list[tuple[str, str]] = []
    routers = [app.router]
    while routers:
        router = routers.pop()
        for resource in router.resources():
            sub = getattr(resource, "_app", None)
            if isinstance(sub, web.Application):
                routers.append(sub.router)
                continue
            for route in resource:
                path = resource.canonical.replace("{pid}", "prj_x").replace("{kid}", "key_x")
                if route.method != "HEAD" and path.startswith("/admin"):
                    routes.append((route.method, path))
    return sorted(routes)


def test_the_router_walk_finds_the_admin_routes(app: web.Application) -> None:
    found = admin_routes(app)
    assert ("DELETE", "/admin/v1/keys/key_x") in found
    assert ("POST", "/admin/v1/projects/prj_x/keys") in found
    assert ("PUT", "/admin/v1/keys/key_x/iam-rules") in found
    assert ("PUT", "/admin/v1/projects/prj_x/providers/{provider}") in found
    assert len(found) >= 14


BAD_AUTHORIZATIONS = [
    None,
    "Bearer wrong-token-wrong-token",
    "Basic dGVzdDp0ZXN0",
    "Bearer ",
    "bearer",
    f"Bearer {ADMIN_TOKEN}x",
    f"Token {ADMIN_TOKEN}",
]


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATIONS)
async def test_every_admin_route_needs_the_admin_token(
    raw_redis: redis.Redis,  # first: set up before the app, so it cleans up after it
    aiohttp_client: Any,
    app: web.Application,
    db: asyncpg.Connection,
    authorization: str | None,
) -> None:
    client = await aiohttp_client(app)
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [*admin_routes(app), ("GET", "/admin/v1/no-such-route")]:
        response = await client.request(method, path, headers=headers, json={"name": "x"})
        assert response.status == 401, (method, path)
        body = await response.json()
        assert body["error"]["code"] == "invalid_admin_token"
        assert response.headers["x-request-id"].startswith("req_")
    assert await db.fetchval("SELECT count(*) FROM projects") == 0


async def test_openapi_document_lists_every_routed_operation(
    client: AdminClient, app: web.Application
) -> None:
    doc = await call(client, "GET", "/openapi.json")
    assert doc["openapi"].startswith("3.")
    documented = {
        (method.upper(), "/admin/v1" + path.replace("{pid}", "prj_x").replace("{kid}", "key_x"))
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    documented.add(("GET", "/admin/v1/openapi.json"))
    assert documented == set(admin_routes(app))


def test_create_app_refuses_settings_without_servers() -> None:
    from spendgate.config import Settings

    with pytest.raises(ValueError, match="database_url"):
        create_app(Settings(admin_token="x" * 20))
