"""The request path's Redis client (storage/resp.py) against a real Redis: pipelining keeps
every reply with its command, scripts load themselves, a lost connection is replaced, a
silent server times out, and a cancelled caller does not shift the replies."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.redis_client import redis_errors
from spendgate.storage.resp import ReplyError, RespClient, Script
from tests.faults.conftest import free_port


@pytest.fixture
async def resp(redis_url: str) -> AsyncIterator[RespClient]:
    client = RespClient(redis_url)
    yield client
    await client.aclose()


async def test_concurrent_commands_each_get_their_own_reply(
    resp: RespClient, raw_redis: redis.Redis, redis_prefix: str
) -> None:
    keys = [f"{redis_prefix}:resp:{i}" for i in range(300)]
    await raw_redis.mset({key: f"value-{i}" for i, key in enumerate(keys)})

    replies = await asyncio.gather(*(resp.execute("GET", key) for key in keys))

    assert replies == [f"value-{i}".encode() for i in range(300)]


async def test_commands_of_one_loop_turn_go_out_in_one_write(
    resp: RespClient,
    raw_redis: redis.Redis,  # deletes the counter afterwards
    redis_prefix: str,
) -> None:
    key = f"{redis_prefix}:resp:counter"
    await resp.connect()
    connection = resp._connection
    assert connection is not None and connection._transport is not None
    transport = connection._transport
    writes: list[bytes] = []
    write = transport.write

    def counting(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = counting  # type: ignore[method-assign]
    replies = await asyncio.gather(*(resp.execute("INCR", key) for _ in range(50)))

    assert replies == list(range(1, 51))
    assert len(writes) == 1 and writes[0].count(b"INCR") == 50


async def test_a_script_unknown_to_the_server_is_sent_whole_once(
    resp: RespClient, raw_redis: redis.Redis, redis_prefix: str
) -> None:
    script = Script(f"-- {uuid.uuid4()}\nreturn {{KEYS[1], tonumber(ARGV[1]) * 2}}")
    assert await raw_redis.script_exists(script.sha) == [False]

    first = await resp.run(script, [f"{redis_prefix}:k"], [21])
    again = await resp.run(script, [f"{redis_prefix}:k"], [5])

    assert first == [f"{redis_prefix}:k".encode(), 42]
    assert again == [f"{redis_prefix}:k".encode(), 10]
    assert await raw_redis.script_exists(script.sha) == [True]


async def test_an_error_reply_raises_and_leaves_the_connection_in_step(
    resp: RespClient, raw_redis: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:resp:list"
    await raw_redis.rpush(key, "a")

    results = await asyncio.gather(
        resp.execute("ECHO", "before"),
        resp.execute("INCR", key),  # WRONGTYPE
        resp.execute("ECHO", "after"),
        return_exceptions=True,
    )

    assert results[0] == b"before"
    assert isinstance(results[1], ReplyError) and "WRONGTYPE" in str(results[1])
    assert results[2] == b"after"
    assert await resp.execute("LLEN", key) == 1


async def test_a_connection_the_server_closed_is_replaced_and_the_command_retried(
    resp: RespClient, raw_redis: redis.Redis
) -> None:
    first_id = await resp.execute("CLIENT", "ID")
    assert await raw_redis.client_kill_filter(_id=first_id) == 1
    await asyncio.sleep(0.05)  # the close reaches the client

    second_id = await resp.execute("CLIENT", "ID")

    assert isinstance(second_id, int) and second_id != first_id


async def test_a_cancelled_caller_does_not_shift_the_replies(resp: RespClient) -> None:
    await resp.connect()
    abandoned = asyncio.create_task(resp.execute("ECHO", "abandoned"))
    await asyncio.sleep(0)  # sent, not answered yet
    abandoned.cancel()

    assert await resp.execute("ECHO", "mine") == b"mine"
    assert abandoned.cancelled()


async def test_the_database_of_the_url_is_selected(redis_url: str, redis_prefix: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    key = f"{redis_prefix}:resp:db"
    client = RespClient(f"{base}/3")
    other = redis.Redis.from_url(f"{base}/3")
    try:
        await client.execute("SET", key, "in-db-3")
        assert await other.get(key) == b"in-db-3"
    finally:
        await other.delete(key)
        await other.aclose()
        await client.aclose()


async def test_a_refused_connection_fails_at_once() -> None:
    client = RespClient(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        async with redis_errors():
            await client.execute("PING")
    assert time.monotonic() - started < 0.1


async def test_a_server_that_stops_answering_fails_every_waiting_command() -> None:
    """A peer that accepts and reads but never answers, as a stalled Redis does: every
    command waiting on the connection fails after the reply timeout, not later."""
    received = bytearray()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(f"redis://127.0.0.1:{port}/0", reply_timeout=0.2)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            client.execute("GET", "a"), client.execute("GET", "b"), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()

    assert [type(result) for result in results] == [TimeoutError, TimeoutError]
    assert 0.2 <= elapsed < 1.0
    assert received.count(b"GET") == 2


async def test_a_pipeline_returns_each_reply_and_each_refusal_in_order(
    resp: RespClient, raw_redis: redis.Redis, redis_prefix: str
) -> None:
    counter, listing = f"{redis_prefix}:resp:n", f"{redis_prefix}:resp:l"
    await raw_redis.rpush(listing, "x")

    replies = await resp.pipeline(
        [(counter, ("INCRBY", counter, 5)), (listing, ("INCR", listing)), (None, ("PING",))]
    )

    assert replies[0] == 5
    assert isinstance(replies[1], ReplyError) and "WRONGTYPE" in str(replies[1])
    assert replies[2] == b"PONG"


async def test_an_event_loop_busy_past_the_reply_timeout_is_not_a_stalled_server(
    redis_url: str,
) -> None:
    """The loop, not Redis, was slow: the command had not even been written when its
    timer came due. The reply that comes right after is taken, not a timeout."""
    client = RespClient(redis_url, reply_timeout=0.1)
    try:
        await client.connect()
        answer = asyncio.create_task(client.execute("ECHO", "late"))
        await asyncio.sleep(0)  # queued; the write goes out on the loop's next turn
        time.sleep(0.3)  # the loop is busy elsewhere, three reply timeouts long
        assert await answer == b"late"
    finally:
        await client.aclose()
