"""The clients of one process on the Redis deployment SPENDGATE_REDIS_MODE names.

| client, used for                      | standalone | cluster           | sentinel           |
|---------------------------------------|------------|-------------------|--------------------|
| `redis` (redis-py): admin writes, key | Redis      | RedisCluster      | Redis on the       |
| lookups, BYOK cache, readyz           |            |                   | master Sentinel    |
|                                       |            |                   | names              |
| `requests`: admission, settle        | RespClient | ClusterRespClient | SentinelRespClient |
| `ledger`: the usage writer's streams  | RespClient | ClusterRespClient | SentinelRespClient |
| `listeners`: pub/sub of invalidations | Redis      | a Redis per seed  | Redis on the       |
| (no reply timeout)                    |            | node              | master             |

In a cluster, PUBLISH reaches every node, so the invalidation listener subscribes on one
node over a plain connection; when that node is lost it moves on to the next seed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio.client import Redis
from redis.asyncio.sentinel import Sentinel

from spendgate.config import Settings
from spendgate.storage.redis_client import (
    RedisClient,
    close_redis,
    create_cluster,
    create_redis,
    create_sentinel,
    create_sentinel_master,
)
from spendgate.storage.resp import RedisCommands, RespClient
from spendgate.storage.resp_cluster import ClusterRespClient
from spendgate.storage.resp_sentinel import SentinelRespClient


@dataclass(frozen=True, slots=True)
class RedisClients:
    redis: RedisClient
    requests: RedisCommands
    ledger: RedisCommands  # the usage writer's: its batches never queue ahead of requests
    listeners: tuple[Redis, ...]  # tried in turn, one subscription at a time
    sentinel: Sentinel | None = None

    async def aclose(self) -> None:
        await self.requests.aclose()
        await self.ledger.aclose()
        for client in (self.redis, *self.listeners):
            await close_redis(client)
        if self.sentinel is not None:
            await self.sentinel.aclose()


def redis_clients(settings: Settings) -> RedisClients:
    """The clients for `settings` (which must name the servers). Nothing connects yet."""
    urls = settings.redis_urls
    if not urls:
        raise ValueError("redis_clients needs redis_url")
    if settings.redis_mode == "cluster":
        return RedisClients(
            redis=create_cluster(urls),
            requests=ClusterRespClient(urls),
            ledger=ClusterRespClient(urls),
            listeners=tuple(create_redis(url, timeout=None) for url in urls),
        )
    if settings.redis_mode == "sentinel":
        name = settings.redis_sentinel_master
        assert name is not None  # Settings checks it
        sentinel = create_sentinel(urls, settings.redis_sentinel_password)
        return RedisClients(
            redis=create_sentinel_master(sentinel, name, urls[0]),
            requests=SentinelRespClient(urls[0], _master_of(sentinel, name)),
            ledger=SentinelRespClient(urls[0], _master_of(sentinel, name)),
            listeners=(create_sentinel_master(sentinel, name, urls[0], timeout=None),),
            sentinel=sentinel,
        )
    return RedisClients(
        redis=create_redis(urls[0]),
        requests=RespClient(urls[0]),
        ledger=RespClient(urls[0]),
        listeners=(create_redis(urls[0], timeout=None),),
    )


def _master_of(sentinel: Sentinel, name: str) -> Callable[[], Awaitable[tuple[str, int]]]:
    async def master() -> tuple[str, int]:
        host, port = await sentinel.discover_master(name)
        return str(host), int(port)

    return master
