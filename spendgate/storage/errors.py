"""Storage errors; foreign exceptions (redis, asyncpg, OSError) are translated here.

StorageError
 └── StorageUnavailable(backend)     Postgres or Redis cannot be reached or timed out
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of storage failures; `__cause__` keeps the original exception."""


class StorageUnavailable(StorageError):
    """`backend` is "postgres" or "redis"."""

    def __init__(self, backend: str) -> None:
        super().__init__(f"{backend} is unavailable")
        self.backend = backend
