"""App and client fixtures: the real app on real Redis and Postgres, a movable clock."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp import web

from spendgate.config import Settings
from spendgate.proxy.app import create_app
from tests.helpers import AdminClient

ADMIN_TOKEN = "test-admin-token-0123456789"
TABLES = "projects, api_keys, iam_rules, provider_credentials, usage_events"


class FakeClock:
    """A clock tests move by hand, so windows pass without sleeping."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 1, 31, 10, 0, tzinfo=UTC))


@pytest.fixture
def redis_prefix() -> str:
    return "sgtest-" + secrets.token_hex(6)


@pytest.fixture
def settings(database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        admin_token=ADMIN_TOKEN,
    )


@pytest.fixture
async def raw_redis(redis_url: str, redis_prefix: str) -> AsyncIterator[redis.Redis]:
    """A plain client for asserting on Redis state; deletes the test's keys afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    async for name in client.scan_iter(match=f"{redis_prefix}:*", count=1000):
        await client.delete(name)
    await client.aclose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection for asserting on Postgres state; empties the tables afterwards."""
    conn = await asyncpg.connect(database_url)
    yield conn
    if await conn.fetchval("SELECT to_regclass('api_keys') IS NOT NULL"):
        await conn.execute(f"TRUNCATE {TABLES} CASCADE")
    await conn.close()


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> web.Application:
    return create_app(settings, clock=clock)


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[AdminClient]],
    app: web.Application,
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
) -> AdminClient:
    return await aiohttp_client(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
