"""Fixtures for the proxy path (a pytest plugin of tests/conftest.py): the gateway on a test
server and the official openai SDK pointed at it, and a fake upstream provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest
from aiohttp.test_utils import TestServer

from spendgate.config import Settings
from spendgate.config.catalog import Catalog, load_catalog
from spendgate.proxy.app import create_app
from tests.fakes.upstream import FakeUpstream
from tests.helpers import ADMIN_TOKEN, AdminClient, FakeClock, call

UPSTREAM_KEY = "sk-upstream-secret-0123456789"


class Gateway:
    """A running gateway: admin calls, and openai SDK clients for its keys."""

    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin
        self.base_url = str(admin.make_url("/v1"))
        self._clients: list[openai.AsyncOpenAI] = []

    def sdk(self, token: str) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=token, max_retries=0)
        self._clients.append(client)
        return client

    async def key(self, plan: str = "enterprise", **limits: Any) -> dict[str, Any]:
        project = await call(self.admin, "POST", "/projects", {"name": "p", "plan": plan}, 201)
        key = await call(
            self.admin, "POST", f"/projects/{project['id']}/keys", {"name": "k", **limits}, 201
        )
        assert isinstance(key, dict)
        return key

    async def get_key(self, key_id: str) -> dict[str, Any]:
        got = await call(self.admin, "GET", f"/keys/{key_id}")
        assert isinstance(got, dict)
        return got

    async def close(self) -> None:
        """Close the SDK clients, then stop the app (before the tables are emptied)."""
        for client in self._clients:
            await client.close()
        await self.admin.close()


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(
    aiohttp_client: Callable[..., Awaitable[AdminClient]],
    settings: Settings,
    clock: FakeClock,
    db: asyncpg.Connection,
    raw_redis: Any,
) -> AsyncIterator[GatewayFactory]:
    made: list[Gateway] = []

    async def make(catalog: Catalog | None = None, **changes: Any) -> Gateway:
        app = create_app(settings.replace(**changes), clock=clock, catalog=catalog)
        admin = await aiohttp_client(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        gateway = Gateway(admin)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


@pytest.fixture
async def fake_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> tuple[FakeUpstream, TestServer]:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    return fake, server


FakeGatewayFactory = Callable[..., Awaitable[tuple[FakeUpstream, Gateway]]]


@pytest.fixture
def via_fake(
    make_gateway: GatewayFactory,
    fake_upstream: tuple[FakeUpstream, TestServer],
    tmp_path: Path,
) -> FakeGatewayFactory:
    """A gateway whose provider `fake` (model m1) is the fake upstream."""

    async def make(**changes: Any) -> tuple[FakeUpstream, Gateway]:
        fake, server = fake_upstream
        return fake, await make_gateway(catalog=fake_catalog(server, tmp_path), **changes)

    return make


def providers_toml(server: TestServer) -> str:
    """The providers file whose provider `fake` (model m1, $1/$2 per M) is `server`."""
    return f"""
[providers.fake]
base_url = "{server.make_url("/v1")}"
api_key = "{UPSTREAM_KEY}"
models = ["m1"]
[providers.fake.prices.m1]
input_per_mtok = "1.00"
output_per_mtok = "2.00"
"""


def fake_catalog(server: TestServer, tmp_path: Path) -> Catalog:
    """A catalog whose provider `fake` is the fake upstream, model m1 at $1/$2 per M."""
    path = tmp_path / "providers.toml"
    path.write_text(providers_toml(server))
    return load_catalog(path, mock=True, environ={})


async def ledger(db: asyncpg.Connection, key_id: str, count: int) -> list[asyncpg.Record]:
    """The key's ledger rows once `count` of them are written (the writer is async)."""
    async with asyncio.timeout(10):
        while True:
            rows = await db.fetch(
                "SELECT * FROM usage_events WHERE key_id = $1 ORDER BY created_at", key_id
            )
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.05)
