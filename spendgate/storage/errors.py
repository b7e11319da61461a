"""Storage errors; foreign exceptions (redis, asyncpg, OSError) are translated here.

StorageError
 ├── StorageUnavailable(backend)     Postgres or Redis cannot be reached or timed out
 ├── RecordStale(key_id)             the caller's copy of a key record is out of date
 └── RecordMissing(key_id)           Redis has no complete record of the key
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of storage failures; `__cause__` keeps the original exception."""


class StorageUnavailable(StorageError):
    """`backend` is "postgres" or "redis"."""

    def __init__(self, backend: str) -> None:
        super().__init__(f"{backend} is unavailable")
        self.backend = backend


class RecordStale(StorageError):
    """The caller's copy of a key record is older than Redis's: look it up again."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key record of {key_id} changed")
        self.key_id = key_id


class RecordMissing(StorageError):
    """Redis has no complete record of the key (it restarted empty): rebuild it."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key record of {key_id}")
        self.key_id = key_id
