"""The asyncpg pool, error translation and the versioned SQL migrations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import asyncpg

from spendgate.storage.errors import StorageUnavailable

log = logging.getLogger(__name__)

# Any two-int key would do; it only has to be the same in every replica.
MIGRATION_LOCK = 0x5E6D_6A7E

_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # A connection the server dropped can be left mid-operation; the pool replaces it.
    asyncpg.exceptions.InternalClientError,
)


@asynccontextmanager
async def postgres_errors() -> AsyncIterator[None]:
    """Translate a lost or refused Postgres connection into StorageUnavailable."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StorageUnavailable("postgres") from exc


async def create_pool(dsn: str, *, size: int = 8) -> asyncpg.Pool:
    """A fixed-size pool, every connection opened now: asyncpg reads ~/.pgpass from disk
    for each new connection, which must not happen on the event loop mid-request."""
    async with postgres_errors():
        pool = await asyncpg.create_pool(
            dsn,
            min_size=size,
            max_size=size,
            max_inactive_connection_lifetime=0,
            timeout=5,
            command_timeout=10,
        )
    assert pool is not None
    return pool


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in the package, in order."""
    found = []
    for entry in resources.files("spendgate.storage").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply the migrations not applied yet, each in its own transaction, under an
    advisory lock so replicas starting together migrate once. Returns what it applied."""
    applied: list[str] = []
    async with postgres_errors(), pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                log.info("applied migration %s", name)
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def pending_migrations(pool: asyncpg.Pool) -> list[str]:
    async with postgres_errors(), pool.acquire() as conn:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        done = set()
        if exists:
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [name for version, name, _ in migrations() if version not in done]
