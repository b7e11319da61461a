"""BYOK credentials on real Redis and Postgres: sealed at rest, cached, invalidated."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis

from spendgate.enforcement.errors import InvalidField, NotFound
from spendgate.storage.credentials import (
    Credentials,
    CredentialsDisabled,
    CredentialUnreadable,
    SecretBox,
    invalidation_message,
)
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.postgres import create_pool, migrate
from spendgate.storage.redis_client import create_redis

SECRET = "server-secret-0123456789abcdef"
OTHER_SECRET = "another-secret-0123456789abcdef"
PROJECT = "prj_alpha"
OTHER_PROJECT = "prj_beta"
API_KEY = "sk-live-PLAINTEXT-never-stored-4242"
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connecting is refused

MakeCredentials = Callable[..., Credentials]


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, size=4)
    await migrate(pool)
    for project in (PROJECT, OTHER_PROJECT):
        await pool.execute(
            "INSERT INTO projects (id, name, plan) VALUES ($1, $2, 'free')", project, project
        )
    yield pool
    await pool.close()


@pytest.fixture
async def make(
    redis_url: str, redis_prefix: str, pool: asyncpg.Pool, raw_redis: redis.Redis
) -> AsyncIterator[MakeCredentials]:
    """Credentials as one process of the gateway sees them; each call is another process."""
    clients: list[redis.Redis] = []

    box = SecretBox(SECRET)

    def make(box: SecretBox | None = box, url: str = redis_url, **kwargs: object) -> Credentials:
        client = create_redis(url)
        clients.append(client)
        return Credentials(client, pool, box, prefix=redis_prefix, **kwargs)  # type: ignore[arg-type]

    yield make
    for client in clients:
        await client.aclose()
        await client.connection_pool.aclose()


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def credentials(make: MakeCredentials, monotonic: FakeMonotonic) -> Credentials:
    return make(monotonic=monotonic)


def as_bytes(value: object) -> bytes:
    assert isinstance(value, bytes)  # raw_redis does not decode replies
    return value


async def redis_dump(client: redis.Redis, prefix: str) -> bytes:
    """Every key name, field and value under the prefix, as one blob."""
    parts: list[bytes] = []
    async for name in client.scan_iter(match=f"{prefix}:*"):
        parts.append(name)
        kind = await client.type(name)
        if kind == b"hash":
            for field, value in (await client.hgetall(name)).items():
                parts += [as_bytes(field), as_bytes(value)]
        elif kind == b"string":
            parts.append(as_bytes(await client.get(name)))
    return b"\n".join(parts)


async def hash_of(
    client: redis.Redis, credentials: Credentials, project: str
) -> dict[bytes, bytes]:
    found = await client.hgetall(credentials.redis_key(project))
    return {as_bytes(field): as_bytes(value) for field, value in found.items()}


# -- SecretBox ----------------------------------------------------------------------------


def test_sealed_credentials_open_only_for_their_row() -> None:
    box = SecretBox(SECRET)
    sealed = box.seal(API_KEY, PROJECT, "openai")
    assert box.open(sealed, PROJECT, "openai") == API_KEY
    assert API_KEY.encode() not in sealed and sealed[0] == 1
    assert box.seal(API_KEY, PROJECT, "openai") != sealed  # a fresh nonce each time
    for project, provider in [(OTHER_PROJECT, "openai"), (PROJECT, "anthropic")]:
        with pytest.raises(CredentialUnreadable):
            box.open(sealed, project, provider)
    # The associated data is length-prefixed: moving characters between the two fails.
    tricky = box.seal(API_KEY, "ab", "c")
    with pytest.raises(CredentialUnreadable):
        box.open(tricky, "a", "bc")


def test_any_flipped_byte_makes_a_credential_unreadable() -> None:
    box = SecretBox(SECRET)
    sealed = box.seal(API_KEY, PROJECT, "openai")
    for position in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(CredentialUnreadable):
            box.open(bytes(tampered), PROJECT, "openai")
    for truncated in (b"", sealed[:1], sealed[:13], sealed[:-1]):
        with pytest.raises(CredentialUnreadable):
            box.open(truncated, PROJECT, "openai")


def test_another_secret_cannot_open_and_the_error_names_no_secret() -> None:
    sealed = SecretBox(SECRET).seal(API_KEY, PROJECT, "openai")
    with pytest.raises(CredentialUnreadable) as caught:
        SecretBox(OTHER_SECRET).open(sealed, PROJECT, "openai")
    text = str(caught.value) + repr(caught.value)
    assert API_KEY not in text and SECRET not in text and OTHER_SECRET not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert SECRET not in repr(SecretBox(SECRET))


def test_a_short_server_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16"):
        SecretBox("too-short")


# -- Credentials: storage ---------------------------------------------------------------


async def test_the_plaintext_is_stored_nowhere(
    credentials: Credentials, db: asyncpg.Connection, raw_redis: redis.Redis, redis_prefix: str
) -> None:
    await credentials.put(PROJECT, "openai", API_KEY)
    assert await credentials.lookup(PROJECT, "openai") == API_KEY

    rows = await db.fetch(
        "SELECT t::text AS row, encode(t.ciphertext, 'escape') AS raw FROM provider_credentials t"
    )
    assert len(rows) == 1
    assert API_KEY not in rows[0]["row"] and API_KEY not in rows[0]["raw"]
    assert API_KEY.encode().hex() not in rows[0]["row"]

    dump = await redis_dump(raw_redis, redis_prefix)
    assert b"openai" in dump  # the dump did see the hash
    assert API_KEY.encode() not in dump and API_KEY.encode().hex().encode() not in dump


async def test_providers_lists_names_only(credentials: Credentials) -> None:
    assert await credentials.providers(PROJECT) == []
    await credentials.put(PROJECT, "openai", API_KEY)
    await credentials.put(PROJECT, "anthropic", "sk-ant-other")
    await credentials.put(PROJECT, "openai", "sk-replaced")  # an upsert, not a second row
    assert await credentials.providers(PROJECT) == ["anthropic", "openai"]
    assert await credentials.providers(OTHER_PROJECT) == []


async def test_an_unknown_project_is_not_found(credentials: Credentials) -> None:
    with pytest.raises(NotFound) as caught:
        await credentials.put("prj_missing", "openai", API_KEY)
    assert (caught.value.kind, caught.value.ident) == ("project", "prj_missing")
    with pytest.raises(NotFound):
        await credentials.delete("prj_missing", "openai")
    with pytest.raises(NotFound):
        await credentials.providers("prj_missing")


async def test_the_marker_field_is_no_provider_name(credentials: Credentials) -> None:
    with pytest.raises(InvalidField):
        await credentials.put(PROJECT, "_", API_KEY)
    with pytest.raises(InvalidField):
        await credentials.put(PROJECT, "openai", "")


async def test_delete_says_whether_there_was_a_credential(
    credentials: Credentials, raw_redis: redis.Redis
) -> None:
    await credentials.put(PROJECT, "openai", API_KEY)
    await credentials.put(PROJECT, "anthropic", "sk-ant-other")
    assert await credentials.delete(PROJECT, "openai")
    assert not await credentials.delete(PROJECT, "openai")
    assert set(await hash_of(raw_redis, credentials, PROJECT)) == {b"_", b"anthropic"}
    credentials.drop(PROJECT)
    assert await credentials.lookup(PROJECT, "openai") is None
    assert await credentials.lookup(PROJECT, "anthropic") == "sk-ant-other"


async def test_put_and_delete_publish_an_invalidation(
    credentials: Credentials, raw_redis: redis.Redis, redis_prefix: str
) -> None:
    pubsub = raw_redis.pubsub()
    await pubsub.subscribe(f"{redis_prefix}:invalidate")
    assert (await pubsub.get_message(timeout=1.0) or {}).get("type") == "subscribe"

    await credentials.put(PROJECT, "openai", API_KEY)
    await credentials.delete(PROJECT, "openai")
    await credentials.delete(PROJECT, "openai")  # nothing to delete: still refreshed
    received = []
    for _ in range(3):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
        assert message is not None
        received.append(message["data"])
    expected = invalidation_message(PROJECT).encode()
    assert received == [expected] * 3 and expected == b"byok:" + PROJECT.encode()
    assert Credentials.invalidation_message(PROJECT) == invalidation_message(PROJECT)
    await pubsub.aclose()  # type: ignore[no-untyped-call]


# -- Credentials: the lookup path ---------------------------------------------------------


async def test_lookup_is_served_from_the_process_cache_until_dropped(
    credentials: Credentials, db: asyncpg.Connection, raw_redis: redis.Redis
) -> None:
    await credentials.put(PROJECT, "openai", API_KEY)
    assert await credentials.lookup(PROJECT, "openai") == API_KEY
    # Behind its back: neither Redis nor Postgres holds it any more.
    await db.execute("DELETE FROM provider_credentials")
    await raw_redis.delete(credentials.redis_key(PROJECT))
    assert await credentials.lookup(PROJECT, "openai") == API_KEY
    assert await credentials.lookup(PROJECT, "anthropic") is None
    credentials.drop(PROJECT)
    assert await credentials.lookup(PROJECT, "openai") is None


async def test_the_process_cache_expires_after_ttl(
    credentials: Credentials, monotonic: FakeMonotonic, raw_redis: redis.Redis
) -> None:
    await credentials.put(PROJECT, "openai", API_KEY)
    assert await credentials.lookup(PROJECT, "openai") == API_KEY
    await raw_redis.hset(credentials.redis_key(PROJECT), "openai", b"garbage")
    monotonic.now += 4.9
    assert await credentials.lookup(PROJECT, "openai") == API_KEY
    monotonic.now += 0.2
    with pytest.raises(CredentialUnreadable):  # re-read: Redis's (tampered) copy
        await credentials.lookup(PROJECT, "openai")


async def test_no_credentials_is_cached_too(
    credentials: Credentials, raw_redis: redis.Redis, db: asyncpg.Connection
) -> None:
    assert await credentials.lookup(PROJECT, "openai") is None
    assert await hash_of(raw_redis, credentials, PROJECT) == {b"_": b""}
    assert await raw_redis.ttl(credentials.redis_key(PROJECT)) > 0
    # Another process finds the marker in Redis and never asks Postgres.
    await db.execute(
        "INSERT INTO provider_credentials (project_id, provider, ciphertext) VALUES ($1, $2, $3)",
        PROJECT,
        "openai",
        SecretBox(SECRET).seal(API_KEY, PROJECT, "openai"),
    )
    credentials.drop(PROJECT)
    assert await credentials.lookup(PROJECT, "openai") is None


async def test_an_emptied_redis_is_refilled_from_postgres(
    credentials: Credentials, make: MakeCredentials, raw_redis: redis.Redis
) -> None:
    await credentials.put(PROJECT, "openai", API_KEY)
    before = await hash_of(raw_redis, credentials, PROJECT)
    await raw_redis.delete(credentials.redis_key(PROJECT))

    other_process = make()
    assert await other_process.lookup(PROJECT, "openai") == API_KEY
    assert await hash_of(raw_redis, credentials, PROJECT) == before


async def test_another_process_sees_a_change_once_invalidated(
    credentials: Credentials, make: MakeCredentials
) -> None:
    await credentials.put(PROJECT, "openai", API_KEY)
    other_process = make()
    assert await other_process.lookup(PROJECT, "openai") == API_KEY
    await credentials.put(PROJECT, "openai", "sk-rotated")
    assert await other_process.lookup(PROJECT, "openai") == API_KEY  # within its ttl
    other_process.drop(PROJECT)  # what its listener does on "byok:prj_alpha"
    assert await other_process.lookup(PROJECT, "openai") == "sk-rotated"


async def test_a_lookup_racing_an_invalidation_does_not_cache_what_it_read(
    credentials: Credentials,
) -> None:
    await credentials.put(PROJECT, "openai", API_KEY)
    started = asyncio.create_task(credentials.lookup(PROJECT, "openai"))
    await asyncio.sleep(0)  # the lookup is now waiting on Redis
    credentials.drop(PROJECT)
    assert await started == API_KEY
    assert PROJECT not in credentials._cache


class HeldLink:
    """A TCP hop to Redis whose client-to-server direction the test can hold: what the
    client sends meanwhile waits (and is counted) until release()."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.url = url  # through the link once started
        self._open = asyncio.Event()
        self._open.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.held = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = urlunsplit(urlsplit(self.url)._replace(netloc=f"127.0.0.1:{port}"))

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def close(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)

        async def upstream() -> None:
            while data := await reader.read(65536):
                if not self._open.is_set():
                    self.held += len(data)
                await self._open.wait()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        pipes = {asyncio.create_task(upstream()), asyncio.create_task(downstream())}
        self._tasks |= pipes
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            self._tasks -= pipes
            writer.close()
            up_writer.close()


async def test_a_writer_waits_for_a_refill_so_the_older_snapshot_never_lands_last(
    make: MakeCredentials,
    database_url: str,
    redis_url: str,
    raw_redis: redis.Redis,
    db: asyncpg.Connection,
) -> None:
    """The refill's dangerous moment is between its Postgres read and its Redis write: a
    writer that committed and rewrote Redis then would be overwritten with what the refill
    read before. So the refill holds the project row, and the writer waits for it."""
    link = HeldLink(redis_url)
    await link.start()
    reader, writer = make(url=link.url), make()
    blocker = await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():
            # Hold the refill inside its Postgres read, after it has found Redis empty.
            await blocker.execute("LOCK TABLE provider_credentials IN ACCESS EXCLUSIVE MODE")
            refill = asyncio.create_task(reader.lookup(PROJECT, "openai"))
            for _ in range(250):
                if await blocker.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the refill never reached Postgres")
            link.hold()
        for _ in range(250):  # the refill has read Postgres; its write to Redis waits
            if link.held:
                break
            await asyncio.sleep(0.01)
        put = asyncio.create_task(writer.put(PROJECT, "openai", "sk-from-writer"))
        await asyncio.sleep(0.2)  # ample time to commit and rewrite Redis, were it free to
        assert not put.done()
        link.release()
        assert await refill is None  # what was committed when it read
        await put
    finally:
        await blocker.close()
        await link.close()
    rows = await db.fetch("SELECT provider, ciphertext FROM provider_credentials")
    in_postgres = {r["provider"].encode(): bytes(r["ciphertext"]) for r in rows}
    assert await hash_of(raw_redis, writer, PROJECT) == {b"_": b"", **in_postgres}
    assert await make().lookup(PROJECT, "openai") == "sk-from-writer"


async def test_concurrent_writers_leave_redis_equal_to_postgres(
    credentials: Credentials, raw_redis: redis.Redis, db: asyncpg.Connection
) -> None:
    providers = [f"provider{i}" for i in range(12)]
    await asyncio.gather(*(credentials.put(PROJECT, p, f"sk-{p}") for p in providers))
    await asyncio.gather(*(credentials.delete(PROJECT, p) for p in providers[::3]))
    in_postgres = {
        r["provider"]: bytes(r["ciphertext"])
        for r in await db.fetch("SELECT provider, ciphertext FROM provider_credentials")
    }
    in_redis = await hash_of(raw_redis, credentials, PROJECT)
    assert {k.decode(): v for k, v in in_redis.items() if k != b"_"} == in_postgres
    assert sorted(in_postgres) == sorted(set(providers) - set(providers[::3]))


# -- Credentials: failures --------------------------------------------------------------


async def test_a_changed_secret_makes_lookup_fail_without_logging_the_value(
    credentials: Credentials, make: MakeCredentials, caplog: pytest.LogCaptureFixture
) -> None:
    await credentials.put(PROJECT, "openai", API_KEY)
    rekeyed = make(box=SecretBox(OTHER_SECRET))
    with caplog.at_level(logging.ERROR, logger="spendgate.storage.credentials"):
        with pytest.raises(CredentialUnreadable) as caught:
            await rekeyed.lookup(PROJECT, "openai")
    assert API_KEY not in str(caught.value)
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert API_KEY not in logged and SECRET not in logged and OTHER_SECRET not in logged
    assert await rekeyed.lookup(PROJECT, "anthropic") is None  # other providers still work


async def test_a_ciphertext_copied_to_another_project_does_not_decrypt(
    credentials: Credentials, db: asyncpg.Connection
) -> None:
    await credentials.put(PROJECT, "openai", API_KEY)
    await db.execute(
        "INSERT INTO provider_credentials (project_id, provider, ciphertext)"
        " SELECT $1, provider, ciphertext FROM provider_credentials WHERE project_id = $2",
        OTHER_PROJECT,
        PROJECT,
    )
    with pytest.raises(CredentialUnreadable):
        await credentials.lookup(OTHER_PROJECT, "openai")


async def test_without_a_server_secret_byok_is_off_and_lookup_touches_nothing(
    make: MakeCredentials, database_url: str
) -> None:
    disabled = make(box=None)
    with pytest.raises(CredentialsDisabled):
        await disabled.put(PROJECT, "openai", API_KEY)
    closed = await create_pool(database_url, size=1)
    await closed.close()
    # Any Redis or Postgres call here would fail: neither is reachable.
    dead = create_redis(DEAD_REDIS)
    untouched = Credentials(dead, closed, None, prefix="unused")
    assert await untouched.lookup(PROJECT, "openai") is None
    await dead.aclose()


async def test_an_unreachable_redis_fails_the_write_and_rolls_it_back(
    make: MakeCredentials, db: asyncpg.Connection
) -> None:
    unreachable = make(url=DEAD_REDIS)
    with pytest.raises(StorageUnavailable):
        await unreachable.put(PROJECT, "openai", API_KEY)
    assert await db.fetchval("SELECT count(*) FROM provider_credentials") == 0
    with pytest.raises(StorageUnavailable):
        await unreachable.lookup(PROJECT, "openai")
