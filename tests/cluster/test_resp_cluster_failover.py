"""A master of the cluster dies and its replica takes over: the request path's cluster client
answers "unavailable" at once meanwhile, and afterwards finds the new master by reading the
slot map again, though the map it holds still names the dead one."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import pytest

from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.redis_client import redis_errors
from spendgate.storage.resp_cluster import ClusterRespClient
from tests.cluster.servers import Cluster, running, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three masters, the first with a replica; a node is declared failed after 1 s."""
    yield from running(
        lambda: Cluster(tmp_path_factory.mktemp("cluster"), replicas=1, node_timeout_ms=1000)
    )


async def test_a_dead_masters_slots_are_found_on_its_replica_once_it_took_over(
    cluster: Cluster,
) -> None:
    master, replica = cluster.nodes[0], cluster.nodes[3]
    prefix = "t" + secrets.token_hex(4)
    keys = [k for k in (f"{prefix}:{{b{i}}}" for i in range(60)) if cluster.owner_of(k) is master]
    elsewhere = next(
        k for k in (f"{prefix}:{{c{i}}}" for i in range(60)) if cluster.owner_of(k) is not master
    )
    client = ClusterRespClient([node.url for node in cluster.nodes])
    try:
        for key in [*keys, elsewhere]:
            await client.execute("SET", key, key, key=key)
        # The replica has them: WAIT on the connection that wrote them.
        assert await client.execute("WAIT", 1, 2000, key=keys[0]) == 1
        cluster.kill(master)

        # Until the replica takes over, the dead master's keys are unavailable, at once;
        # the other masters' keys are served.
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            async with redis_errors():
                await client.execute("GET", keys[0], key=keys[0])
        assert time.monotonic() - started < 0.5
        assert await client.execute("GET", elsewhere, key=elsewhere) == elsewhere.encode()

        await asyncio.to_thread(
            wait_for, lambda: replica.client.info("replication")["role"] == "master", "failover"
        )
        await asyncio.to_thread(wait_for, cluster.is_ok, "the cluster to be ok again")

        # The client's map still names the dead master: the lost connection makes it read
        # the map again and retry on the new master.
        assert await client.execute("GET", keys[0], key=keys[0]) == keys[0].encode()
        replies = await client.pipeline([(key, ("GET", key)) for key in [*keys, elsewhere]])
        assert replies == [key.encode() for key in [*keys, elsewhere]]
        assert cluster.owner_of(keys[0]) is replica
    finally:
        await client.aclose()
