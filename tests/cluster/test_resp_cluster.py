"""The request path's cluster client (storage/resp_cluster.py) on a real three-master Redis
Cluster: commands go straight to the master of their key's slot, pipelines come back in the
caller's order across nodes, scripts load on the nodes that lack them, and slots that move
(MOVED after a migration, ASK during one) are followed."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from redis.crc import key_slot

from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.redis_client import redis_errors
from spendgate.storage.resp import ReplyError, Script
from spendgate.storage.resp_cluster import ClusterRespClient
from tests.cluster.servers import Cluster, Server, free_port


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[ClusterRespClient]:
    client = ClusterRespClient([node.url for node in cluster.nodes])
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return "t" + secrets.token_hex(4)


def calls(node: Server, command: str) -> tuple[int, int]:
    """How many times `node` ran `command`, and how many it refused (redirections)."""
    stats = node.client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)), int(stats.get("rejected_calls", 0))


async def test_each_command_goes_to_the_master_of_its_keys_slot(
    cluster: Cluster, client: ClusterRespClient, prefix: str
) -> None:
    keys = [f"{prefix}:{{b{i}}}:key" for i in range(60)]
    before = {node.port: calls(node, "set") for node in cluster.nodes}

    replies = await asyncio.gather(*(client.execute("SET", k, k, key=k) for k in keys))

    assert replies == [b"OK"] * 60
    owners = Counter(cluster.owner_of(k).port for k in keys)
    assert len(owners) == 3  # the keys are spread over all three masters
    for key in keys:
        assert cluster.owner_of(key).client.get(key) == key.encode()
    for node in cluster.nodes:
        ran, refused = calls(node, "set")
        # Each master ran exactly its own keys' commands and redirected none.
        assert (ran - before[node.port][0], refused - before[node.port][1]) == (
            owners[node.port],
            0,
        )


async def test_keys_under_one_hash_tag_share_a_script(
    client: ClusterRespClient, prefix: str
) -> None:
    script = Script("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])")
    first, second = f"{prefix}:{{b7}}:a", f"{prefix}:{{b7}}:b"
    assert await client.run(script, [first, second], ["x"]) == 1
    assert await client.run(script, [first, second], ["y"]) == 2
    assert await client.execute("GET", first, key=first) == b"y"


async def test_a_pipeline_keeps_the_callers_order_across_nodes(
    cluster: Cluster, client: ClusterRespClient, prefix: str
) -> None:
    counters = [f"{prefix}:{{b{i}}}:n" for i in range(40)]
    listing = f"{prefix}:{{b3}}:list"
    await client.execute("RPUSH", listing, "x", key=listing)
    commands: list[tuple[str | None, tuple[str | int, ...]]] = []
    expected: list[object] = []
    for round_ in range(1, 6):
        for i, counter in enumerate(counters):
            commands.append((counter, ("INCRBY", counter, i)))
            expected.append(i * round_)
        commands.append((listing, ("INCR", listing)))  # WRONGTYPE, in its place
        expected.append("WRONGTYPE")
        commands.append((None, ("ECHO", f"round {round_}")))  # on any node
        expected.append(f"round {round_}".encode())
    assert len({cluster.owner_of(counter).port for counter in counters}) == 3

    replies = await client.pipeline(commands)

    got = [
        "WRONGTYPE" if isinstance(r, ReplyError) and str(r).startswith("WRONGTYPE") else r
        for r in replies
    ]
    assert got == expected


async def test_a_script_is_sent_whole_once_to_each_node_that_lacks_it(
    cluster: Cluster, client: ClusterRespClient, prefix: str
) -> None:
    script = Script(f"-- {uuid.uuid4()}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    keys = {cluster.owner_of(k).port: k for k in (f"{prefix}:{{b{i}}}:s" for i in range(30))}
    assert len(keys) == 3
    before = {node.port: calls(node, "eval")[0] for node in cluster.nodes}

    for key in keys.values():
        assert await client.run(script, [key], [5]) == 5
        assert await client.run(script, [key], [5]) == 10

    for node in cluster.nodes:
        assert node.client.script_exists(script.sha) == [True]
        assert calls(node, "eval")[0] - before[node.port] == 1  # then EVALSHA


async def test_a_moved_slot_is_followed_and_the_whole_map_read_again(
    cluster: Cluster, client: ClusterRespClient, prefix: str
) -> None:
    first, second = f"{prefix}:{{m1}}", f"{prefix}:{{m2}}"
    for key in (first, second):
        await client.execute("SET", key, key, key=key)
    source = cluster.owner_of(first)
    target = next(node for node in cluster.nodes if node is not source)
    moved_second = cluster.owner_of(second) is not target
    cluster.move_slot(key_slot(first.encode()), target)
    if moved_second:
        cluster.move_slot(key_slot(second.encode()), target)
    refused_before = sum(calls(node, "get")[1] for node in cluster.nodes)

    # The client's map is stale: its GET is answered MOVED, and it follows.
    assert await client.execute("GET", first, key=first) == first.encode()
    assert cluster.owner_of(first) is target
    assert sum(calls(node, "get")[1] for node in cluster.nodes) == refused_before + 1
    await asyncio.sleep(0.2)  # the map read the MOVED started in the background

    # The other moved slot is known now without a redirection.
    assert await client.execute("GET", second, key=second) == second.encode()
    assert await client.execute("GET", first, key=first) == first.encode()
    assert sum(calls(node, "get")[1] for node in cluster.nodes) == refused_before + 1


async def test_ask_during_a_migration_goes_to_the_importing_node(
    cluster: Cluster, client: ClusterRespClient, prefix: str
) -> None:
    migrated, staying = f"{prefix}:{{ask}}:migrated", f"{prefix}:{{ask}}:staying"
    await client.execute("SET", migrated, "value", key=migrated)
    await client.execute("SET", staying, "here", key=staying)
    slot = key_slot(migrated.encode())
    source = cluster.owner_of(migrated)
    target = next(node for node in cluster.nodes if node is not source)
    target.client.script_flush()
    script = Script(f"-- {uuid.uuid4()}\nreturn redis.call('GET', KEYS[1])")
    cluster.begin_migration(slot, target)
    try:
        source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", migrated)

        # The source no longer has the key: ASK, then ASKING + the command on the target,
        # a script included (which the target does not have yet).
        assert await client.execute("GET", migrated, key=migrated) == b"value"
        assert await client.run(script, [migrated], []) == b"value"
        new = f"{prefix}:{{ask}}:new"
        assert await client.execute("SET", new, "fresh", key=new) == b"OK"
        assert target.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 2
        # ASK moves one command, not the slot: a key still on the source is read there.
        assert await client.execute("GET", staying, key=staying) == b"here"
        assert (
            await client.pipeline([(migrated, ("GET", migrated)), (staying, ("GET", staying))])
        ) == [
            b"value",
            b"here",
        ]
    finally:
        cluster.migrate_keys(slot, source, target)
        cluster.end_migration(slot, target)
    assert await client.execute("GET", staying, key=staying) == b"here"


async def test_a_seed_that_does_not_answer_is_skipped(cluster: Cluster, prefix: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    client = ClusterRespClient([dead, cluster.nodes[1].url])
    try:
        await client.connect()
        key = f"{prefix}:{{b1}}"
        assert await client.execute("SET", key, "1", key=key) == b"OK"
        assert cluster.owner_of(key).client.get(key) == b"1"
    finally:
        await client.aclose()


async def test_a_cluster_nobody_answers_for_is_unavailable_at_once() -> None:
    client = ClusterRespClient([f"redis://127.0.0.1:{free_port()}/0" for _ in range(3)])
    try:
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(StorageUnavailable):
                async with redis_errors():
                    await client.execute("GET", "k", key="k")
        assert time.monotonic() - started < 0.5
    finally:
        await client.aclose()
