"""The redis-py clients: fast timeouts, no retries, and one translation of their errors.

One server is a `Redis`; a Redis Cluster a `RedisCluster`, whose commands redis-py routes by
slot; a master behind Sentinel a `Redis` whose pool asks Sentinel for the master's address
at every new connection. The code on top takes any of them (`RedisClient`) and keeps to
what works on all three: single-key commands, scripts on the keys of one hash tag,
pipelines without MULTI (docs/DECISIONS.md, "Redis deployments").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

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
# Per node. The cluster client opens connections as it needs them and never waits for a
# free one (a busy node beyond this many answers ConnectionError), so the cap is higher.
CLUSTER_MAX_CONNECTIONS = 256

RedisClient = Redis | RedisCluster

# Errors that mean Redis (or the part of a cluster that holds a key) cannot answer now.
_UNAVAILABLE = (
    ConnectionError,
    TimeoutError,
    OSError,
    ClusterDownError,  # CLUSTERDOWN: the cluster lost a slot's master
    TryAgainError,  # a slot still moving after redis-py's retries
    SlotNotCoveredError,
)


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


def create_cluster(urls: Sequence[str], *, timeout: float | None = SOCKET_TIMEOUT) -> RedisCluster:
    """A Redis Cluster client that reads the slot map through any of the seed `urls`;
    their user, password and TLS are every node's."""
    options = parse_url(urls[0])
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in map(address, urls)],
        username=options.get("username"),
        password=options.get("password"),
        ssl=options.get("connection_class") is SSLConnection,
        max_connections=CLUSTER_MAX_CONNECTIONS,
        socket_timeout=timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        # One immediate retry (on a refreshed slot map), as for one server.
        retry=Retry(NoBackoff(), 1),
        driver_info=None,
    )


def create_sentinel(urls: Sequence[str], password: str | None) -> Sentinel:
    """The Sentinels at `urls` (their host and port; TLS if the URLs say rediss://)."""
    options = parse_url(urls[0])
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "password": password,
        # Not redis-py's default (3 retries, backing off up to seconds): a Sentinel that
        # does not answer is skipped for the next one at once.
        "retry": Retry(NoBackoff(), 0),
        "driver_info": None,
    }
    if options.get("connection_class") is SSLConnection:
        sentinel_options["connection_class"] = SSLConnection
    sentinels = [address(url) for url in urls]
    return Sentinel(sentinels, sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel pool that waits for a free connection, like the one-server pool."""


def create_sentinel_master(
    sentinel: Sentinel, name: str, url: str, *, timeout: float | None = SOCKET_TIMEOUT
) -> Redis:
    """A client of the master Sentinel names `name`, with `url`'s user, password and
    database; a new connection asks Sentinel again, so a failover is followed."""
    options = parse_url(url)
    client: Redis = sentinel.master_for(
        name,
        connection_pool_class=_SentinelBlockingPool,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT,
        username=options.get("username"),
        password=options.get("password"),
        db=options.get("db", 0),
        ssl=options.get("connection_class") is SSLConnection,
        socket_timeout=timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        health_check_interval=0,
        driver_info=None,
    )
    return client


def address(url: str) -> tuple[str, int]:
    """The host and port of a redis:// or rediss:// URL."""
    options = parse_url(url)
    return options.get("host", "localhost"), int(options.get("port", 6379))


async def close_redis(client: RedisClient) -> None:
    """Close a client's connections. Closing is bounded by the connect timeout, which a
    busy shutdown can exceed; that must not fail the shutdown."""
    try:
        await client.aclose()
    except (RedisError, OSError) as exc:
        log.debug("closing redis connections: %s", exc)


async def warm_up(client: RedisClient) -> None:
    """Open the pool's connections now, so a burst of requests finds them ready instead
    of connecting under load (where the connect timeout counts the loop's own delay). A
    cluster client reads the slot map and opens its connections as it needs them."""
    if isinstance(client, RedisCluster):
        async with redis_errors():
            await client.initialize()
        return
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
    """Translate a lost, refused or slow Redis (or cluster) into StorageUnavailable."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StorageUnavailable("redis") from exc
    except RedisClusterException as exc:
        # "Redis Cluster cannot be connected": no node answered; other ones are bugs.
        if isinstance(exc.__cause__, _UNAVAILABLE):
            raise StorageUnavailable("redis") from exc
        raise


def lua_source(name: str) -> str:
    """The text of storage/lua/<name>.lua."""
    source = resources.files("spendgate.storage").joinpath("lua", f"{name}.lua")
    return source.read_text(encoding="utf-8")


def load_script(client: RedisClient, name: str) -> AsyncScript:
    """Register storage/lua/<name>.lua; calls go by SHA and reload on NOSCRIPT."""
    return client.register_script(lua_source(name))
