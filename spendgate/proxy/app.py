"""The composition root: `create_app(settings)` wires every long-lived resource."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web
from redis.asyncio.client import Redis

from spendgate.config import Settings
from spendgate.enforcement.keys import Clock, SystemClock
from spendgate.proxy.admin import ADMIN, PREFIX, AdminApi, admin_app, admin_auth_middleware
from spendgate.proxy.errors import error_middleware
from spendgate.storage.postgres import create_pool, migrate
from spendgate.storage.redis_client import create_redis
from spendgate.storage.redis_keys import KeyRecords
from spendgate.storage.repository import Repository

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
PG_POOL = web.AppKey("pg_pool", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)


def create_app(settings: Settings, clock: Clock | None = None) -> web.Application:
    """The whole gateway as one aiohttp application. `settings` must name the servers
    (`spendgate serve` fills in the embedded ones) and the admin token."""
    if settings.database_url is None or settings.redis_url is None:
        raise ValueError("create_app needs database_url and redis_url")
    if settings.admin_token is None:
        raise ValueError("create_app needs admin_token")
    clock = clock or SystemClock()
    app = web.Application(
        middlewares=[error_middleware, admin_auth_middleware(settings.admin_token)],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings

    async def resources(app: web.Application) -> AsyncIterator[None]:
        assert settings.database_url is not None and settings.redis_url is not None
        pool = await create_pool(settings.database_url)
        redis = create_redis(settings.redis_url)
        try:
            applied = await migrate(pool)
            if applied:
                log.info("database migrated: %s", ", ".join(applied))
            app[PG_POOL] = pool
            app[REDIS] = redis
            records = KeyRecords(redis, settings.redis_prefix, settings.buckets)
            app[ADMIN] = AdminApi(Repository(pool), records, clock)
            yield
        finally:
            await redis.aclose()
            await pool.close()

    app.cleanup_ctx.append(resources)
    app.add_subapp(PREFIX, admin_app())
    return app
