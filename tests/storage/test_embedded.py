"""The embedded PostgreSQL and Valkey: data survives a restart, a running server is reused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis

from spendgate.storage.embedded import EmbeddedServer, start_postgres, start_valkey
from spendgate.storage.errors import StorageUnavailable

Starter = Callable[[Path], EmbeddedServer]


# Starting and stopping block (subprocesses, sleeps, files): keep them off the event loop.
async def start(starter: Starter, data_dir: Path) -> EmbeddedServer:
    return await asyncio.to_thread(starter, data_dir)


async def stop(server: EmbeddedServer) -> None:
    await asyncio.to_thread(server.stop)


async def postgres_value(url: str) -> object:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await conn.fetchval("SELECT value FROM kept")
    finally:
        await conn.close()


async def postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except OSError:
        return False
    await conn.close()
    return True


def crash_after_starting(kind: str, data_dir: Path) -> None:
    """Start a server in a child process that then dies without stopping it."""
    code = f"""
import os, sys
from pathlib import Path
import redis
from spendgate.storage.embedded import start_{kind}
server = start_{kind}(Path(sys.argv[1]))
if server.name == "valkey":
    client = redis.Redis.from_url(server.url)
    client.set("kept", "from the crashed process")
    client.close()
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code, str(data_dir)], check=True, timeout=60)


async def test_postgres_and_valkey_keep_their_data_across_a_restart(tmp_path: Path) -> None:
    postgres = await start(start_postgres, tmp_path)
    valkey = await start(start_valkey, tmp_path)
    try:
        conn = await asyncpg.connect(postgres.url, timeout=5)
        await conn.execute("CREATE TABLE kept (value bigint); INSERT INTO kept VALUES (42)")
        await conn.close()
        client = redis.Redis.from_url(valkey.url)
        await client.incrby("spent", 7)
        assert await client.config_get("appendonly") == {"appendonly": "yes"}
        assert await client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        await client.aclose()
    finally:
        await stop(postgres)
        await stop(valkey)
    assert not await postgres_answers(postgres.url)

    postgres = await start(start_postgres, tmp_path)
    valkey = await start(start_valkey, tmp_path)
    try:
        assert await postgres_value(postgres.url) == 42
        client = redis.Redis.from_url(valkey.url)
        assert await client.get("spent") == b"7"
        await client.aclose()
    finally:
        await stop(postgres)
        await stop(valkey)


async def test_stop_is_idempotent(tmp_path: Path) -> None:
    for starter in (start_postgres, start_valkey):
        server = await start(starter, tmp_path)
        await stop(server)
        await stop(server)


async def test_a_second_start_on_the_same_dir_reuses_the_running_postgres(tmp_path: Path) -> None:
    first = await start(start_postgres, tmp_path)
    try:
        conn = await asyncpg.connect(first.url, timeout=5)
        await conn.execute("CREATE TABLE kept (value bigint); INSERT INTO kept VALUES (1)")
        await conn.close()
        second = await start(start_postgres, tmp_path)
        assert second.url == first.url
        assert await postgres_value(second.url) == 1
        await stop(second)
        # The first handle still holds the server.
        assert await postgres_value(first.url) == 1
    finally:
        await stop(first)
    assert not await postgres_answers(first.url)


async def test_a_postgres_left_running_by_a_crash_is_reused_and_then_stopped(
    tmp_path: Path,
) -> None:
    postmaster_pid = tmp_path / "postgres" / "postmaster.pid"
    await asyncio.to_thread(crash_after_starting, "postgres", tmp_path)
    assert await asyncio.to_thread(postmaster_pid.exists)
    server = await start(start_postgres, tmp_path)
    try:
        assert await postgres_answers(server.url)
    finally:
        await stop(server)
    assert not await postgres_answers(server.url)
    assert not await asyncio.to_thread(postmaster_pid.exists)


async def test_a_valkey_left_running_by_a_crash_is_replaced_keeping_its_data(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "valkey" / "valkey.pid"
    await asyncio.to_thread(crash_after_starting, "valkey", tmp_path)
    leftover_pid = await asyncio.to_thread(pidfile.read_text)
    server = await start(start_valkey, tmp_path)
    try:
        assert await asyncio.to_thread(pidfile.read_text) != leftover_pid
        client = redis.Redis.from_url(server.url)
        assert await client.get("kept") == b"from the crashed process"
        await client.aclose()
    finally:
        await stop(server)


@pytest.mark.parametrize(
    ("starter", "backend"), [(start_postgres, "postgres"), (start_valkey, "redis")]
)
def test_a_server_that_cannot_start_raises_storage_unavailable(
    tmp_path: Path, starter: Starter, backend: str
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(StorageUnavailable) as caught:
        starter(not_a_dir)
    assert caught.value.backend == backend
    assert isinstance(caught.value.__cause__, OSError)
