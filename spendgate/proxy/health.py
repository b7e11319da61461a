"""`/healthz` (the process answers) and `/readyz` (it can serve: Redis and Postgres reachable,
the schema migrated), and `/metrics`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
from aiohttp import web

from spendgate.proxy.metrics import CONTENT_TYPE, Metrics
from spendgate.storage.backends import Backends
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.key_directory import KeyDirectory
from spendgate.storage.postgres import pending_migrations
from spendgate.storage.redis_client import redis_errors
from spendgate.storage.usage_writer import UsageWriter

CHECK_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Health:
    backends: Backends
    metrics: Metrics
    writer: UsageWriter
    directory: KeyDirectory

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """503 naming every dependency that failed."""
        checks = {"redis": self._redis(), "postgres": self._postgres()}
        results = await asyncio.gather(*checks.values())
        failed = {name: why for name, why in zip(checks, results, strict=True) if why}
        if failed:
            return _json({"status": "unavailable", "failed": failed}, 503)
        return _json({"status": "ready"})

    async def _redis(self) -> str | None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT), redis_errors():
                await self.backends.redis.ping()
        except (StorageUnavailable, TimeoutError):
            return "unreachable"
        return None

    async def _postgres(self) -> str | None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                pending = await pending_migrations(self.backends.pool)
        except (StorageUnavailable, TimeoutError):
            return "unreachable"
        return f"migrations pending: {', '.join(pending)}" if pending else None

    async def scrape(self, request: web.Request) -> web.Response:
        m = self.metrics
        m.count_ledger_writes(self.writer.writes_ok, self.writer.writes_failed)
        m.catch_up("cache_hit", self.directory.hits, m.key_cache.held("hit"))
        m.catch_up("cache_miss", self.directory.misses, m.key_cache.held("miss"))
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                m.backlog.set(await self.writer.backlog())
        except (StorageUnavailable, TimeoutError):
            m.redis_errors.inc()
        return web.Response(body=m.exposition(), headers={"Content-Type": CONTENT_TYPE})


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
