"""BYOK: each project's own provider credentials, encrypted with the server secret.

Postgres (`provider_credentials`) is the record. Redis caches each project's ciphertexts:

    <prefix>:byok:<project_id>   HASH   provider -> sealed credential, plus the marker field
                                        "_" so that a project without any is cached too
    <prefix>:invalidate          pub/sub channel; "byok:<project_id>" drops the project's
                                 decrypted credentials in every process

Plaintext exists only in process memory: Postgres and Redis hold AES-256-GCM ciphertexts
whose associated data names the (project, provider) they belong to.

StorageError
 ├── CredentialsDisabled         no server secret is configured, so nothing can be stored
 └── CredentialUnreadable        a stored credential does not decrypt (the secret changed)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.typing import EncodableT, FieldT

from spendgate.enforcement.errors import InvalidField, NotFound
from spendgate.storage.errors import StorageError, StorageUnavailable
from spendgate.storage.postgres import postgres_errors
from spendgate.storage.redis_client import RedisClient, redis_errors

log = logging.getLogger(__name__)

MIN_SECRET_LENGTH = 16
MARKER = "_"
# A safety net: a Redis copy that somehow went stale still heals within the hour.
REDIS_TTL_SECONDS = 3600
_VERSION = b"\x01"
_NONCE_SIZE = 12
_TAG_SIZE = 16
_INFO = b"spendgate/byok-credentials/v1"  # changing it makes every stored credential unreadable


class CredentialsDisabled(StorageError):
    """No server secret (SPENDGATE_SECRET_KEY) is configured: BYOK credentials are off."""

    def __init__(self) -> None:
        super().__init__("BYOK credentials need a server secret (SPENDGATE_SECRET_KEY)")


class CredentialUnreadable(StorageError):
    """The stored credential does not decrypt: tampered with, copied from another row, or
    sealed with another server secret. The message names neither secret nor value."""

    def __init__(self, project_id: str, provider: str) -> None:
        super().__init__(f"the stored {provider} credential of project {project_id} is unreadable")
        self.project_id = project_id
        self.provider = provider


def _associated_data(project_id: str, provider: str) -> bytes:
    # Length-prefixed, so no other (project, provider) pair encodes to the same bytes.
    return f"{len(project_id)}:{project_id}:{provider}".encode()


class SecretBox:
    """AES-256-GCM with a key derived from the server secret (HKDF-SHA256, a fixed label).

    A sealed value is version byte + 12-byte random nonce + ciphertext and tag; the
    associated data binds it to (project_id, provider), so a ciphertext copied to another
    row does not decrypt."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the server secret must be at least {MIN_SECRET_LENGTH} characters")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
        self._aead = AESGCM(hkdf.derive(secret.encode()))

    def __repr__(self) -> str:
        return "SecretBox(...)"

    def seal(self, plaintext: str, project_id: str, provider: str) -> bytes:
        nonce = os.urandom(_NONCE_SIZE)
        sealed = self._aead.encrypt(
            nonce, plaintext.encode(), _associated_data(project_id, provider)
        )
        return _VERSION + nonce + sealed

    def open(self, sealed: bytes, project_id: str, provider: str) -> str:
        if len(sealed) < 1 + _NONCE_SIZE + _TAG_SIZE or sealed[:1] != _VERSION:
            raise CredentialUnreadable(project_id, provider)
        nonce, body = sealed[1 : 1 + _NONCE_SIZE], sealed[1 + _NONCE_SIZE :]
        try:
            plain = self._aead.decrypt(nonce, body, _associated_data(project_id, provider))
            return plain.decode()
        except (InvalidTag, UnicodeDecodeError):
            raise CredentialUnreadable(project_id, provider) from None


def invalidation_message(project_id: str) -> str:
    """What put() and delete() publish on `<prefix>:invalidate`: drop the project."""
    return f"byok:{project_id}"


@dataclass(frozen=True)
class _Entry:
    expires: float
    values: dict[str, str]
    unreadable: frozenset[str] = field(default_factory=frozenset)


class Credentials:
    """Per-project provider credentials: Postgres is the record, Redis caches each project's
    ciphertexts, and each process keeps the decrypted values for `ttl` seconds, dropping a
    project at once on an invalidation message."""

    def __init__(
        self,
        redis: RedisClient,
        pool: asyncpg.Pool,
        box: SecretBox | None,
        *,
        prefix: str,
        ttl: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._box = box
        self._prefix = prefix
        self._ttl = ttl
        self._monotonic = monotonic
        self._cache: dict[str, _Entry] = {}
        # Bumped by every drop: a lookup that began before a drop must not cache what it read.
        self._drops = 0

    @property
    def invalidation_channel(self) -> str:
        return f"{self._prefix}:invalidate"

    @staticmethod
    def invalidation_message(project_id: str) -> str:
        return invalidation_message(project_id)

    def redis_key(self, project_id: str) -> str:
        return f"{self._prefix}:byok:{project_id}"

    async def put(self, project_id: str, provider: str, api_key: str) -> None:
        """Store (or replace) the project's credential for `provider`."""
        if self._box is None:
            raise CredentialsDisabled()
        if not provider or provider == MARKER:
            raise InvalidField("provider", "must be a provider name")
        if not api_key:
            raise InvalidField("api_key", "must not be empty")
        sealed = self._box.seal(api_key, project_id, provider)
        await self._change(
            project_id,
            "INSERT INTO provider_credentials (project_id, provider, ciphertext)"
            " VALUES ($1, $2, $3) ON CONFLICT (project_id, provider)"
            " DO UPDATE SET ciphertext = EXCLUDED.ciphertext, updated_at = now()",
            provider,
            sealed,
        )

    async def delete(self, project_id: str, provider: str) -> bool:
        """Remove the credential; False if the project had none for `provider`."""
        status = await self._change(
            project_id,
            "DELETE FROM provider_credentials WHERE project_id = $1 AND provider = $2",
            provider,
        )
        return status != "DELETE 0"

    async def providers(self, project_id: str) -> list[str]:
        """The providers the project has a credential for (never the values)."""
        async with postgres_errors():
            names: list[str] | None = await self._pool.fetchval(
                "SELECT ARRAY(SELECT provider FROM provider_credentials"
                " WHERE project_id = p.id ORDER BY provider) FROM projects p WHERE p.id = $1",
                project_id,
            )
        if names is None:
            raise NotFound("project", project_id)
        return names

    async def lookup(self, project_id: str, provider: str) -> str | None:
        """The project's own credential for `provider`, or None to use the gateway's."""
        if self._box is None:
            return None
        entry = self._cache.get(project_id)
        if entry is None or entry.expires <= self._monotonic():
            drops = self._drops
            entry = self._decrypt(project_id, await self._sealed(project_id))
            if drops == self._drops:
                self._cache[project_id] = entry
        if provider in entry.unreadable:
            raise CredentialUnreadable(project_id, provider)
        return entry.values.get(provider)

    def drop(self, project_id: str) -> None:
        self._drops += 1
        self._cache.pop(project_id, None)

    # -- internals ----------------------------------------------------------------------

    async def _change(self, project_id: str, sql: str, *args: object) -> str:
        """Run one write under the project row's lock and rewrite the Redis copy before
        committing: writers of one project are serialized all the way to Redis, so an
        older snapshot never lands after a newer one."""
        name = self.redis_key(project_id)
        rewritten = False
        async with postgres_errors(), self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    found = await conn.fetchval(
                        "SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", project_id
                    )
                    if found is None:
                        raise NotFound("project", project_id)
                    status: str = await conn.execute(sql, project_id, *args)
                    rows = await conn.fetch(
                        "SELECT provider, ciphertext FROM provider_credentials"
                        " WHERE project_id = $1",
                        project_id,
                    )
                    rewritten = True  # from here Redis may hold this uncommitted snapshot
                    await self._write_redis(name, {r["provider"]: r["ciphertext"] for r in rows})
            except BaseException:
                if rewritten:
                    # The write or the commit failed: let the next lookup refill from
                    # Postgres rather than trust that copy (REDIS_TTL_SECONDS if Redis
                    # is down too).
                    with contextlib.suppress(StorageUnavailable):
                        async with redis_errors():
                            await self._redis.delete(name)
                raise
        async with redis_errors():
            await self._redis.publish(self.invalidation_channel, invalidation_message(project_id))
        return status

    async def _write_redis(self, name: str, sealed: Mapping[str, bytes]) -> None:
        """Replace the Redis copy; called with the project row locked. Without MULTI
        (redis-py's cluster client runs each command of a MULTI in a thread of its own): a
        reader that finds the hash gone between DEL and HSET refills it under the row's
        lock, so only once this writer is done, and from what it committed."""
        async with redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(name)
            pipe.hset(name, mapping=_hash_of(sealed))
            pipe.expire(name, REDIS_TTL_SECONDS)
            await pipe.execute()

    async def _sealed(self, project_id: str) -> dict[str, bytes]:
        """The project's ciphertexts from Redis, refilled from Postgres when missing."""
        name = self.redis_key(project_id)
        async with redis_errors():
            found = await self._redis.hgetall(name)
        if found:
            return _decode(found)
        # Refill under a share lock on the project row. Writers lock it FOR UPDATE and
        # rewrite Redis before they commit, so none is half-way while we read and write:
        # what we read is what the last of them committed, and the next one waits until
        # our copy is in Redis, then replaces it. An older snapshot never lands last.
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT FROM projects WHERE id = $1 FOR SHARE", project_id)
            rows = await conn.fetch(
                "SELECT provider, ciphertext FROM provider_credentials WHERE project_id = $1",
                project_id,
            )
            sealed: dict[str, bytes] = {r["provider"]: r["ciphertext"] for r in rows}
            await self._write_redis(name, sealed)
        return sealed

    def _decrypt(self, project_id: str, sealed: Mapping[str, bytes]) -> _Entry:
        assert self._box is not None
        values: dict[str, str] = {}
        unreadable: set[str] = set()
        for provider, ciphertext in sealed.items():
            try:
                values[provider] = self._box.open(ciphertext, project_id, provider)
            except CredentialUnreadable:
                log.error(
                    "the stored %s credential of project %s does not decrypt;"
                    " was SPENDGATE_SECRET_KEY changed?",
                    provider,
                    project_id,
                )
                unreadable.add(provider)
        return _Entry(self._monotonic() + self._ttl, values, frozenset(unreadable))


def _hash_of(sealed: Mapping[str, bytes]) -> dict[FieldT, EncodableT]:
    fields: dict[FieldT, EncodableT] = {MARKER: b""}
    fields.update(sealed)
    return fields


def _decode(found: Mapping[bytes | str, bytes | str]) -> dict[str, bytes]:
    """The provider -> ciphertext fields of a Redis hash, without the marker."""
    sealed = {}
    for key, value in found.items():
        name = key.decode() if isinstance(key, bytes) else key
        if name != MARKER:
            sealed[name] = value if isinstance(value, bytes) else value.encode()
    return sealed
