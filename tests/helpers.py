"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from spendgate.config import Settings
from spendgate.enforcement.usage import Usage
from spendgate.proxy.sse import reported_usage

AdminClient = TestClient[web.Request, web.Application]
ADMIN_TOKEN = "test-admin-token-0123456789"


def serve_env(settings: Settings, port: int, **more: str) -> dict[str, str]:
    """The environment of a `spendgate serve` subprocess on the test's servers and prefix:
    this one's, without any SPENDGATE_ setting of the caller's, plus `more`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}
    env.update(
        SPENDGATE_DATABASE_URL=str(settings.database_url),
        SPENDGATE_REDIS_URL=str(settings.redis_url),
        SPENDGATE_REDIS_PREFIX=settings.redis_prefix,
        SPENDGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        SPENDGATE_PORT=str(port),
        SPENDGATE_LOG_LEVEL="warning",
    )
    env.update(more)
    return env


async def answering(http: aiohttp.ClientSession, path: str) -> None:
    """Wait until `path` answers 200: a server starting in another process."""
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(path) as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.1)


class FakeClock:
    """A clock tests move by hand, so windows pass without sleeping."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


async def call(
    client: AdminClient, method: str, path: str, json: Any = None, status: int = 200
) -> Any:
    """One admin call; asserts the status and returns the decoded body (None for 204)."""
    response = await client.request(method, "/admin/v1" + path, json=json)
    text = await response.text()
    assert response.status == status, text
    return None if response.status == 204 else await response.json()


class TcpLink:
    """A real TCP hop to a server that the test can cut and restore: while cut,
    connections are reset and new ones refused, as when the server is down."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)
            writer.close()
            up_writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


def usage_of(event: bytes) -> Usage | None:
    """The usage an SSE chunk reports, as the relay reads it."""
    report = reported_usage(event)
    return None if report is None else report[0]


def usage_only(event: bytes) -> bool:
    """Whether an SSE chunk is the usage-only one that `include_usage` adds."""
    report = reported_usage(event)
    return report is not None and report[1]
