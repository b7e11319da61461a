"""The long-lived storage resources of one process, opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import asyncpg
from redis.asyncio.client import Redis

from spendgate.config import Settings
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.postgres import create_pool, migrate
from spendgate.storage.redis_client import RedisClient, redis_errors, warm_up
from spendgate.storage.redis_deployment import redis_clients
from spendgate.storage.redis_keys import KeyRecords
from spendgate.storage.repository import Repository
from spendgate.storage.resp import RedisCommands


@dataclass(frozen=True, slots=True)
class Backends:
    pool: asyncpg.Pool
    redis: RedisClient  # redis-py, on one server, a cluster or Sentinel's master
    requests_redis: RedisCommands  # the request path's scripts (see resp.py)
    ledger_redis: RedisCommands  # the usage writer's streams, on a connection of their own
    listeners: tuple[Redis, ...]  # pub/sub of invalidations, tried in turn
    repo: Repository
    records: KeyRecords
    migrations_applied: list[str]


@asynccontextmanager
async def open_backends(settings: Settings) -> AsyncIterator[Backends]:
    """Connect to Postgres (applying pending migrations) and Redis; close both after."""
    if settings.database_url is None or settings.redis_url is None:
        raise ValueError("open_backends needs database_url and redis_url")
    pool = await create_pool(settings.database_url)
    clients = redis_clients(settings)
    try:
        applied = await migrate(pool)
        with suppress(StorageUnavailable):  # Redis down at start: requests answer 503
            await warm_up(clients.redis)
            async with redis_errors():
                await clients.requests.connect()
                await clients.ledger.connect()
        yield Backends(
            pool=pool,
            redis=clients.redis,
            requests_redis=clients.requests,
            ledger_redis=clients.ledger,
            listeners=clients.listeners,
            repo=Repository(pool),
            records=KeyRecords(clients.redis, settings.redis_prefix, settings.buckets),
            migrations_applied=applied,
        )
    finally:
        await clients.aclose()
        await pool.close()
