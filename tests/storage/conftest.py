"""Fixtures of the storage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from spendgate.storage.postgres import create_pool, migrate


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the test database, with the schema migrated."""
    pool = await create_pool(database_url, size=2)
    await migrate(pool)
    yield pool
    await pool.close()
