"""The Redis client: fast timeouts, no retries, and one translation of its errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import redis.asyncio as redis
from redis.asyncio.client import Redis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from spendgate.storage.errors import StorageUnavailable

log = logging.getLogger(__name__)

# Redis unreachable must answer 503 at once rather than hang: a refused or unanswered
# connect fails within CONNECT_TIMEOUT. A reply may take longer than that when the event
# loop is busy with hundreds of requests (the timer includes the loop's own delay), so
# waiting for a reply is bounded separately, by SOCKET_TIMEOUT.
CONNECT_TIMEOUT = 0.1
SOCKET_TIMEOUT = 0.5
# Connections per process; requests beyond that wait for one (up to POOL_TIMEOUT) rather
# than each opening its own under load.
MAX_CONNECTIONS = 64
POOL_TIMEOUT = 2.0


def create_redis(url: str, *, timeout: float | None = SOCKET_TIMEOUT) -> Redis:
    """A client for `url`; `timeout=None` for a subscriber that waits for messages."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT,
        socket_timeout=timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        # One immediate retry on a broken connection (a pooled connection that went stale
        # when Redis restarted or closed it idle), never on a timeout. Every script and
        # write is idempotent, so a command that did reach Redis may run twice safely.
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        health_check_interval=0,
        # No CLIENT SETINFO: it costs a round trip per new connection, and finding the
        # library's version reads package metadata from disk on the event loop.
        driver_info=None,
    )
    return redis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


async def close_redis(client: Redis) -> None:
    """Close a client's connections. Closing is bounded by the connect timeout, which a
    busy shutdown can exceed; that must not fail the shutdown."""
    try:
        await client.aclose()
    except (RedisError, OSError) as exc:
        log.debug("closing redis connections: %s", exc)


async def warm_up(client: Redis) -> None:
    """Open the pool's connections now, so a burst of requests finds them ready instead
    of connecting under load (where the connect timeout counts the loop's own delay)."""
    pool = client.connection_pool
    connections = []
    async with redis_errors():
        try:
            for _ in range(pool.max_connections):
                connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                connections.append(connection)
                await connection.connect()
        finally:
            for connection in connections:
                await pool.release(connection)


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Translate a lost, refused or slow Redis into StorageUnavailable."""
    try:
        yield
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise StorageUnavailable("redis") from exc


def lua_source(name: str) -> str:
    """The text of storage/lua/<name>.lua."""
    source = resources.files("spendgate.storage").joinpath("lua", f"{name}.lua")
    return source.read_text(encoding="utf-8")


def load_script(client: Redis, name: str) -> AsyncScript:
    """Register storage/lua/<name>.lua; calls go by SHA and reload on NOSCRIPT."""
    return client.register_script(lua_source(name))
