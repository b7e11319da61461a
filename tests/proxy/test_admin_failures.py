"""The admin API when a server is gone: 503 naming the backend, nothing half-written."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from spendgate.config import Settings
from spendgate.proxy.app import create_app
from tests.helpers import ADMIN_TOKEN, AdminClient, FakeClock, call

DEAD_REDIS = "redis://127.0.0.1:1/0"


async def test_key_create_without_redis_is_503_and_leaves_no_key(
    aiohttp_client: Any, settings: Settings, clock: FakeClock, db: asyncpg.Connection
) -> None:
    app = create_app(settings.replace(redis_url=DEAD_REDIS), clock=clock)
    client: AdminClient = await aiohttp_client(
        app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    project = await call(client, "POST", "/projects", {"name": "p"}, 201)
    response = await client.post(
        f"/admin/v1/projects/{project['id']}/keys", json={"name": "k", "usage_limit": "5"}
    )
    body = await response.json()
    assert response.status == 503
    assert body["error"]["code"] == "enforcement_unavailable"
    assert "sgk_" not in str(body)
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_a_proxy_token_is_no_admin_token(
    client: AdminClient, aiohttp_client: Any, app: web.Application
) -> None:
    project = await call(client, "POST", "/projects", {"name": "p"}, 201)
    key = await call(client, "POST", f"/projects/{project['id']}/keys", {"name": "k"}, 201)
    response = await client.get(
        "/admin/v1/projects", headers={"Authorization": f"Bearer {key['key']}"}
    )
    assert response.status == 401


async def test_postgres_gone_mid_run_is_503(client: AdminClient, db: asyncpg.Connection) -> None:
    project = await call(client, "POST", "/projects", {"name": "p"}, 201)
    # Cut every connection of the app's pool; the next query finds its connection dead.
    await db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    statuses = []
    for _ in range(20):
        response = await client.get(f"/admin/v1/projects/{project['id']}")
        statuses.append(response.status)
        if response.status == 503:
            assert (await response.json())["error"]["code"] == "storage_unavailable"
        if response.status == 200:
            break
    assert set(statuses) <= {200, 503} and statuses[-1] == 200, statuses
