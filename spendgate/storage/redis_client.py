"""The Redis client: fast timeouts, no retries, and one translation of its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import redis.asyncio as redis
from redis.asyncio.client import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, TimeoutError

from spendgate.storage.errors import StorageUnavailable

# The hot path must answer 503 at once when Redis is gone rather than hang.
SOCKET_TIMEOUT = 0.1


def create_redis(url: str, *, timeout: float | None = SOCKET_TIMEOUT) -> Redis:
    """A client for `url`; `timeout=None` for a subscriber that waits for messages."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=False,
        # No CLIENT SETINFO: it costs a round trip per new connection, and finding the
        # library's version reads package metadata from disk on the event loop.
        driver_info=None,
    )


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Translate a lost, refused or slow Redis into StorageUnavailable."""
    try:
        yield
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise StorageUnavailable("redis") from exc


def load_script(client: Redis, name: str) -> AsyncScript:
    """Register storage/lua/<name>.lua; calls go by SHA and reload on NOSCRIPT."""
    source = resources.files("spendgate.storage").joinpath("lua", f"{name}.lua")
    return client.register_script(source.read_text(encoding="utf-8"))
