"""Fixtures shared by the whole suite.

Real servers, found once per run (session scope), never mocks:

- `redis_url`: SPENDGATE_TEST_REDIS_URL if set; else the machine's Redis on 127.0.0.1:6379
  if it answers PING; else an embedded Valkey in a temporary directory. The server may be
  shared with other programs: isolate tests by key prefix and never FLUSHALL it.
- `database_url`: the DSN of a fresh database `spendgate_test_<hex>`, created for this run on
  SPENDGATE_TEST_DATABASE_URL if set; else on the machine's Postgres at 127.0.0.1:5432 if it
  answers; else on an embedded PostgreSQL. The database is dropped when the session ends.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from spendgate.storage.embedded import start_postgres, start_valkey

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PROBE_TIMEOUT = 0.5

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # A private loop: asyncio.run() would also reset the thread's current event loop.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def redis_answers(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True if a Redis at `url` answers an unauthenticated PING within `timeout` seconds."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout
        ) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


async def _postgres_answers(dsn: str, timeout: float) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):  # TimeoutError is an OSError
        return False
    try:
        return bool(await conn.fetchval("SELECT 1", timeout=timeout) == 1)
    finally:
        await conn.close()


def postgres_answers(dsn: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True if a Postgres at `dsn` accepts a connection and a query within about `timeout`."""
    parts = urlsplit(dsn)
    if parts.hostname:  # a TCP address: fail fast when nothing listens there
        try:
            socket.create_connection((parts.hostname, parts.port or 5432), timeout=timeout).close()
        except OSError:
            return False
    return _run(_postgres_answers(dsn, timeout=max(timeout, 2.0)))


def with_database(dsn: str, database: str) -> str:
    """`dsn` pointing at `database` instead of the one it names."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


async def _create_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn, timeout=5)
    try:
        force = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("SPENDGATE_TEST_REDIS_URL")
    if configured:
        yield configured
    elif redis_answers(LOCAL_REDIS_URL):
        yield LOCAL_REDIS_URL
    else:
        server = start_valkey(tmp_path_factory.mktemp("embedded"))
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = None
    server_dsn = os.environ.get("SPENDGATE_TEST_DATABASE_URL")
    if not server_dsn:
        if postgres_answers(LOCAL_POSTGRES_URL):
            server_dsn = LOCAL_POSTGRES_URL
        else:
            server = start_postgres(tmp_path_factory.mktemp("embedded"))
            server_dsn = server.url
    name = f"spendgate_test_{secrets.token_hex(6)}"
    try:
        _run(_create_database(server_dsn, name))
        try:
            yield with_database(server_dsn, name)
        finally:
            _run(_drop_database(server_dsn, name))
    finally:
        if server is not None:
            server.stop()
