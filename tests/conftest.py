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
import gc
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp import web

from spendgate.config import Settings
from spendgate.proxy.app import create_app
from spendgate.storage.embedded import start_postgres, start_valkey
from tests.helpers import ADMIN_TOKEN, AdminClient, FakeClock, TcpLink

pytest_plugins = ("tests.gateway_fixtures",)

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


# -- the app on those servers -------------------------------------------------

TABLES = "projects, api_keys, iam_rules, provider_credentials, usage_events"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 1, 31, 10, 0, tzinfo=UTC))


@pytest.fixture
def redis_prefix() -> str:
    return "sgtest-" + secrets.token_hex(6)


@pytest.fixture
def settings(database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        admin_token=ADMIN_TOKEN,
    )


@pytest.fixture
async def raw_redis(redis_url: str, redis_prefix: str) -> AsyncIterator[redis.Redis]:
    """A plain client for asserting on Redis state; deletes the test's keys afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    async for name in client.scan_iter(match=f"{redis_prefix}:*", count=1000):
        await client.delete(name)
    await client.aclose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection for asserting on Postgres state; empties the tables afterwards."""
    conn = await asyncpg.connect(database_url)
    yield conn
    if await conn.fetchval("SELECT to_regclass('api_keys') IS NOT NULL"):
        await conn.execute(f"TRUNCATE {TABLES} CASCADE")
    await conn.close()


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> web.Application:
    return create_app(settings, clock=clock)


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[AdminClient]],
    app: web.Application,
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
) -> AsyncIterator[AdminClient]:
    client = await aiohttp_client(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    yield client
    await client.close()  # stop the app before `db` empties the tables


# Start-up code that may block: connecting, reading migrations, Lua scripts, providers.
STARTUP_FUNCTIONS = [
    ("spendgate/storage/backends.py", ["open_backends"]),
    ("spendgate/storage/postgres.py", ["create_pool", "migrations"]),
    ("spendgate/storage/redis_client.py", ["load_script", "lua_source"]),
    ("spendgate/config/catalog.py", ["load_catalog"]),
    # asyncpg looks for ~/.pgpass and ~/.postgresql certificates when the pool replaces a
    # lost connection: a few stats on a reconnect, never on a healthy request.
    ("asyncpg/connect_utils.py", ["_parse_connect_dsn_and_args"]),
]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[None]:
    """Fail any test in which spendgate's code blocks the event loop (file or socket I/O,
    time.sleep...). Start-up (connecting, reading migrations and scripts) may block."""
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx(["spendgate"], excluded_modules=["spendgate.cli"]) as buster:
        for function in buster.functions.values():
            for filename, functions in STARTUP_FUNCTIONS:
                function.can_block_in(filename, functions)
        yield


# Garbage collection between tests, not during them. The suite's process grows to a heap
# whose full collection took up to 874 ms (47 over 20 ms in one run, median 243 ms). One
# that lands while a request waits on Redis outlasts the client's 500 ms read timeout
# and fails the request with 503, as a production loop would not see (the server freezes
# what start-up built, server.py). So every FULL_GC_EVERY tests, between two tests, the
# whole heap is collected and what survives is frozen; a collection during a test then
# walks only what the last tests built: at most 251 ms in the run after (62 over 20 ms,
# median 83 ms), for about 30 s more in all.
FULL_GC_EVERY = 25
_tests_run = [0]


@pytest.fixture(autouse=True)
def collect_between_tests() -> Iterator[None]:
    yield
    _tests_run[0] += 1
    if _tests_run[0] % FULL_GC_EVERY == 1:  # the first test's imports, then every 25
        gc.unfreeze()
        gc.collect()
        gc.freeze()


@pytest.fixture
async def postgres_link(database_url: str) -> AsyncIterator[tuple[TcpLink, str]]:
    """The link, and a DSN of the test database through it."""
    parts = urlsplit(database_url)
    if not parts.hostname:
        pytest.skip("needs Postgres over TCP")
    link = TcpLink(parts.hostname, parts.port or 5432)  # Postgres
    await link.restore()
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{link.port}" if userinfo else f"127.0.0.1:{link.port}"
    yield link, urlunsplit(parts._replace(netloc=netloc))
    if link._server is not None and link._server.is_serving():
        await link.cut()
