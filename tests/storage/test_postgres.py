"""Migrations: versioned, applied once, idempotent, safe when replicas start together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.postgres import create_pool, migrate, migrations, pending_migrations


@pytest.fixture
async def empty_database(database_url: str) -> AsyncIterator[str]:
    """A database of its own, without the schema, dropped afterwards."""
    admin = await asyncpg.connect(database_url)
    name = "spendgate_migrate_" + str(id(admin))
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = database_url.rsplit("/", 1)[0] + "/" + name
    if "?" in database_url:  # a unix-socket DSN keeps its query
        base, query = database_url.split("?", 1)
        dsn = base.rsplit("/", 1)[0] + "/" + name + "?" + query
    yield dsn
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


def test_migrations_are_numbered_and_ordered() -> None:
    found = migrations()
    versions = [version for version, _, _ in found]
    assert versions == sorted(set(versions)) and versions[0] == 1
    assert all(name.endswith(".sql") for _, name, _ in found)


async def test_migrate_applies_each_migration_once(empty_database: str) -> None:
    pool = await create_pool(empty_database, size=2)
    assert await pending_migrations(pool) == [name for _, name, _ in migrations()]
    assert await migrate(pool) == [name for _, name, _ in migrations()]
    assert await migrate(pool) == []
    assert await pending_migrations(pool) == []
    tables = {
        r["tablename"]
        for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"projects", "api_keys", "iam_rules", "provider_credentials", "usage_events"} <= tables
    await pool.close()


async def test_replicas_starting_together_migrate_once(empty_database: str) -> None:
    pools = [await create_pool(empty_database, size=1) for _ in range(4)]
    results = await asyncio.gather(*(migrate(pool) for pool in pools))
    applied = [names for names in results if names]
    assert len(applied) == 1 and applied[0] == [name for _, name, _ in migrations()]
    count = await pools[0].fetchval("SELECT count(*) FROM schema_migrations")
    assert count == len(migrations())
    for pool in pools:
        await pool.close()


async def test_an_unreachable_postgres_is_storage_unavailable() -> None:
    with pytest.raises(StorageUnavailable) as caught:
        await create_pool("postgresql://postgres@127.0.0.1:1/postgres", size=1)
    assert caught.value.backend == "postgres"
