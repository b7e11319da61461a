"""The redis-py side of the storage layer on a real Redis Cluster (RedisCluster): key records
and their counters, BYOK credentials with their Redis copy refilled from Postgres, and
invalidations published through the cluster and heard on any node, by a listener that moves
on to the next seed when one does not answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as redis

from spendgate.enforcement.keys import SystemClock
from spendgate.storage.credentials import Credentials, SecretBox
from spendgate.storage.key_directory import KeyDirectory
from spendgate.storage.postgres import create_pool, migrate
from spendgate.storage.redis_client import (
    RedisClient,
    create_cluster,
    create_redis,
    redis_errors,
)
from spendgate.storage.redis_keys import KeyRecords
from spendgate.storage.repository import Repository
from tests.cluster.servers import Cluster, free_port

SECRET = "server-secret-0123456789abcdef"
PROJECT = "prj_cluster"


@pytest.fixture
async def cluster_client(cluster: Cluster) -> AsyncIterator[RedisClient]:
    client = create_cluster([node.url for node in cluster.nodes])
    yield client
    await client.aclose()


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, size=2)
    await migrate(pool)
    await pool.execute("INSERT INTO projects (id, name, plan) VALUES ($1, 'p', 'free')", PROJECT)
    yield pool
    await pool.close()


async def test_credentials_are_written_and_refilled_on_the_cluster(
    cluster: Cluster, cluster_client: RedisClient, pool: asyncpg.Pool, redis_prefix: str
) -> None:
    box = SecretBox(SECRET)
    credentials = Credentials(cluster_client, pool, box, prefix=redis_prefix)
    await credentials.put(PROJECT, "openai", "sk-one")
    await credentials.put(PROJECT, "groq", "gsk-two")
    name = credentials.redis_key(PROJECT)
    holder = cluster.owner_of(name)
    assert set(holder.client.hkeys(name)) == {b"_", b"openai", b"groq"}

    other = Credentials(cluster_client, pool, box, prefix=redis_prefix)
    assert await other.lookup(PROJECT, "groq") == "gsk-two"
    holder.client.delete(name)  # Redis lost its copy: the next lookup refills it
    third = Credentials(cluster_client, pool, box, prefix=redis_prefix)
    assert await third.lookup(PROJECT, "openai") == "sk-one"
    assert set(holder.client.hkeys(name)) == {b"_", b"openai", b"groq"}

    assert await credentials.delete(PROJECT, "openai")
    assert set(holder.client.hkeys(name)) == {b"_", b"groq"}


async def test_key_counters_of_keys_on_every_master_come_back_in_one_call(
    cluster: Cluster, cluster_client: RedisClient, redis_prefix: str
) -> None:
    records = KeyRecords(cluster_client, redis_prefix, 64)
    key_ids = [f"key_{i:03d}" for i in range(30)]
    for i, key_id in enumerate(key_ids):
        cluster.owner_of(records.record_key(key_id)).client.hset(
            records.record_key(key_id), mapping={"used": i * 10, "p_used": i}
        )
    assert len({cluster.owner_of(records.record_key(k)).port for k in key_ids}) == 3

    usage = await records.usage(key_ids)

    assert [(usage[k].used, usage[k].period_used) for k in key_ids] == [
        (i * 10, i) for i in range(30)
    ]


async def test_an_invalidation_published_through_the_cluster_reaches_every_node(
    cluster: Cluster, cluster_client: RedisClient, redis_prefix: str
) -> None:
    channel = f"{redis_prefix}:invalidate"
    listeners = [redis.Redis.from_url(node.url) for node in cluster.nodes]
    subscriptions = [listener.pubsub(ignore_subscribe_messages=True) for listener in listeners]
    try:
        for subscription in subscriptions:
            await subscription.subscribe(channel)
        async with redis_errors():
            await cluster_client.publish(channel, "key_x")
        for subscription in subscriptions:
            async with asyncio.timeout(2):
                while (message := await subscription.get_message(timeout=1.0)) is None:
                    pass
            assert message["data"] == b"key_x"
    finally:
        for subscription in subscriptions:
            await subscription.aclose()  # type: ignore[no-untyped-call]
        for listener in listeners:
            await listener.aclose()


async def test_the_listener_moves_on_to_the_next_seed_and_hears_the_cluster(
    cluster: Cluster, cluster_client: RedisClient, pool: asyncpg.Pool, redis_prefix: str
) -> None:
    # As the gateway makes them: a plain client per seed, without a reply timeout.
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=None)
    live = create_redis(cluster.nodes[2].url, timeout=None)
    records = KeyRecords(cluster_client, redis_prefix, 64)
    directory = KeyDirectory(
        cluster_client, [dead, live], records, Repository(pool), SystemClock(), ttl=5.0
    )
    heard: list[str] = []
    ready = asyncio.Event()
    listening = asyncio.create_task(directory.listen(ready, {"byok": heard.append}))
    try:
        async with asyncio.timeout(2):
            await ready.wait()  # subscribed, on the second listener
        async with redis_errors():
            await cluster_client.publish(records.invalidation_channel, "byok:prj_x")
        async with asyncio.timeout(2):
            while not heard:
                await asyncio.sleep(0.01)
        assert heard == ["prj_x"]
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await dead.aclose()
        await live.aclose()
