"""Fixtures for the fault tests: a Redis server the test may stop and restart on the same
port and data, and small helpers to read a key's spend state straight from Redis. The
gateway fixtures (make_gateway, via_fake, fake_upstream) come from tests/conftest.py.

Never stop or flush the shared Redis and Postgres: a test that takes a server down starts
its own (`redis_server`) or cuts a TcpLink in front of the shared one (`postgres_link`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from multidict import CIMultiDictProxy

from spendgate.config import Settings
from spendgate.enforcement.keys import bucket_of
from tests.proxy.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]
# "hi" to the fake upstream (fake/m1, $1/$2 per M), which reports 10 prompt and 5
# completion tokens whatever it is asked.
FAKE_COST = 10 * 1000 + 5 * 2000
# "hi" on mock/echo-1 with max_tokens=16: 1 prompt token, 16 completion tokens.
MOCK_COST = 1 * 1000 + 16 * 2000
# What admission estimates for that call: 2 bytes + 4 + 3 = 9 input tokens, 16 output.
INPUT_ESTIMATE = 9 * 1000
ONE_OUTPUT_TOKEN = 2000
BUCKETS = Settings().buckets  # the default; every Redis key of an API key carries {b<N>}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def chat(
    gateway: Gateway, token: str, **body: Any
) -> tuple[int, CIMultiDictProxy[str], dict[str, Any]]:
    """One chat completion through the gateway's test client, without the SDK (lighter
    when hundreds run at once), answered in JSON: a non-streamed answer or an error.
    Returns the status, the headers and the decoded body."""
    payload: dict[str, Any] = {"model": "mock/echo-1", "messages": HI} | body
    response = await gateway.admin.post(
        "/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {token}"}
    )
    answer = await response.json()
    return response.status, response.headers, answer


async def until_answered(gateway: Gateway, token: str) -> tuple[str | None, int]:
    """One client of a nearly spent key ("hi" on mock/echo-1, max_tokens=16): it retries
    while only in-flight reservations stand in the way, as a client told `Retry-After: 1`
    would (faster here), so the whole budget gets used. Returns the request id of the
    answered call (None once the limit refuses it for good) and the number of retries."""
    retries = 0
    while True:
        status, headers, answer = await chat(gateway, token, max_tokens=16)
        if status == 200:
            return headers["x-request-id"], retries
        assert status == 429, answer
        assert answer["error"]["code"] == "usage_limit_exceeded"
        if headers.get("Retry-After") != "1":
            return None, retries
        retries += 1
        await asyncio.sleep(0.01)


def assert_within_the_bound(mode: str, costs: list[int], limit: int) -> None:
    """DESIGN.md "Limits" for calls of MOCK_COST each that keep to their estimates:
    `reserve` stops once the limit is reached and overspends by less than one call;
    `hard` never goes over, and stops only when what is left cannot pay for one more
    call's input and one output token."""
    charged = sum(costs)
    if mode == "reserve":
        assert all(cost == MOCK_COST for cost in costs)
        assert limit <= charged < limit + MOCK_COST
    else:
        assert all(cost <= MOCK_COST for cost in costs)
        assert limit - (INPUT_ESTIMATE + ONE_OUTPUT_TOKEN) < charged <= limit


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.05
) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(every)


@dataclass(frozen=True)
class SpendState:
    """What Redis holds for one key: settled usage, reserved totals, reservations."""

    used: int
    reserved: int  # r_all: in-flight reservations counted against the all-time limit
    reservations: dict[str, bytes]  # request id -> "<nano>|<period>" ("x|..." = expired)
    expiries: int  # entries in the expiry zset


async def spend_state(client: redis.Redis, prefix: str, key_id: str) -> SpendState:
    tag = f"{prefix}:{{b{bucket_of(key_id, BUCKETS)}}}"
    used, reserved = await client.hmget(f"{tag}:key:{key_id}", ["used", "r_all"])
    held = await client.hgetall(f"{tag}:res:{key_id}")
    expiries = await client.zcard(f"{tag}:resx:{key_id}")
    return SpendState(
        used=int(used or 0),
        reserved=int(reserved or 0),
        reservations={_text(k): _bytes(v) for k, v in held.items()},
        expiries=int(expiries),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def usage_stream(prefix: str, key_id: str) -> str:
    return f"{prefix}:{{b{bucket_of(key_id, BUCKETS)}}}:usage"


class RedisServer:
    """A redis-server of the test's own on a fixed port, with AOF (fsync on every write)
    in its own directory: stop() takes it away, start() brings the same data back on the
    same address, as a restarted Redis does."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if await client.ping():
                        return
                except (redis.ConnectionError, OSError):
                    if time.monotonic() > deadline or self._process.returncode is not None:
                        raise
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """A clean shutdown (SIGTERM): the AOF is complete on disk."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            await process.wait()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port())
    await server.start()
    yield server
    await server.stop()
