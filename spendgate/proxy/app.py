"""The composition root: `create_app(settings)` wires every long-lived resource."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from spendgate.config import Settings
from spendgate.enforcement.keys import Clock, SystemClock
from spendgate.proxy.admin import ADMIN, PREFIX, AdminApi, admin_app, admin_auth_middleware
from spendgate.proxy.errors import error_middleware
from spendgate.storage.backends import Backends, open_backends

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
BACKENDS = web.AppKey("backends", Backends)


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
        async with open_backends(settings) as backends:
            if backends.migrations_applied:
                log.info("database migrated: %s", ", ".join(backends.migrations_applied))
            app[BACKENDS] = backends
            app[ADMIN] = AdminApi(backends.repo, backends.records, clock)
            yield

    app.cleanup_ctx.append(resources)
    app.add_subapp(PREFIX, admin_app())
    return app
