"""The composition root: `create_app(settings)` wires every long-lived resource."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from spendgate.config import Settings
from spendgate.config.catalog import Catalog, load_catalog
from spendgate.dashboard.routes import add_dashboard_routes
from spendgate.enforcement.keys import Clock, SystemClock
from spendgate.proxy.admin import ADMIN, PREFIX, AdminApi, admin_app, require_admin_token
from spendgate.proxy.admin_usage import cursor_secret
from spendgate.proxy.gateway import Gateway
from spendgate.proxy.health import Health
from spendgate.proxy.metrics import Metrics
from spendgate.proxy.mock_provider import MockProvider
from spendgate.proxy.observe import edge_middleware
from spendgate.proxy.settler import Settler
from spendgate.proxy.upstream import Upstreams, create_client
from spendgate.storage.backends import Backends, open_backends
from spendgate.storage.credentials import Credentials, SecretBox
from spendgate.storage.key_directory import KeyDirectory
from spendgate.storage.spend import SpendStore
from spendgate.storage.usage_writer import UsageWriter

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
BACKENDS = web.AppKey("backends", Backends)
GATEWAY = web.AppKey("gateway", Gateway)
WRITER = web.AppKey("usage_writer", UsageWriter)
METRICS = web.AppKey("metrics", Metrics)
HEALTH = web.AppKey("health", Health)
T = TypeVar("T")


def create_app(
    settings: Settings,
    clock: Clock | None = None,
    catalog: Catalog | None = None,
    *,
    write_ledger: bool = True,
) -> web.Application:
    """The whole gateway as one aiohttp application. `settings` must name the servers
    (`spendgate serve` fills in the embedded ones) and the admin token. The catalog is
    read from the providers file unless given. With `write_ledger`, the usage writer runs
    on this application's loop; `spendgate serve` runs it in a process of its own instead
    (ledger_process.py), and its workers use theirs only for the backlog gauge."""
    if settings.database_url is None or settings.redis_url is None:
        raise ValueError("create_app needs database_url and redis_url")
    if settings.admin_token is None:
        raise ValueError("create_app needs admin_token")
    clock = clock or SystemClock()
    admin_token = settings.admin_token
    if catalog is None:
        catalog = load_catalog(
            settings.providers_file, mock=settings.mock_provider, environ=os.environ
        )
    metrics = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    guard = partial(require_admin_token, admin_token=admin_token)
    app = web.Application(
        middlewares=[edge_middleware(metrics, guard)],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics

    async def resources(app: web.Application) -> AsyncIterator[None]:
        assert settings.redis_url is not None and catalog is not None
        async with open_backends(settings) as backends:
            if backends.migrations_applied:
                log.info("database migrated: %s", ", ".join(backends.migrations_applied))
            app[BACKENDS] = backends
            box = SecretBox(settings.secret_key) if settings.secret_key else None
            credentials = Credentials(
                backends.redis, backends.pool, box, prefix=settings.redis_prefix
            )
            app[ADMIN] = AdminApi(
                backends.repo,
                backends.records,
                clock,
                credentials,
                catalog,
                cursor_secret(admin_token),
            )
            directory = KeyDirectory(
                backends.redis,
                backends.listeners,
                backends.records,
                backends.repo,
                clock,
                ttl=settings.key_cache_ttl,
            )
            spend = SpendStore(backends.requests_redis, settings.redis_prefix, settings.buckets)
            settler = Settler(spend)
            writer = UsageWriter(
                backends.ledger_redis,
                backends.pool,
                prefix=settings.redis_prefix,
                buckets=settings.buckets,
                consumer=f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}",
                claim_idle_ms=settings.ledger_claim_idle_ms,
            )
            client = create_client(settings)
            mock = MockProvider(settings.mock_latency_ms) if settings.mock_provider else None
            app[GATEWAY] = Gateway(
                settings,
                catalog,
                directory,
                spend,
                Upstreams(client, mock),
                settler,
                credentials,
                metrics,
                clock,
            )
            app[WRITER] = writer
            health = Health(backends, metrics, writer, directory)
            app[HEALTH] = health
            metrics_site = None
            if settings.metrics_port is not None:
                metrics_site = await _serve_metrics(health, settings)
            listening = asyncio.Event()
            invalidations = asyncio.create_task(
                directory.listen(listening, {"byok": credentials.drop}), name="invalidations"
            )
            with suppress(TimeoutError):  # Redis down at start: the task keeps trying
                async with asyncio.timeout(2):
                    await listening.wait()
            settler.start()
            if write_ledger:
                await writer.start()
            flusher = asyncio.create_task(metrics.flush_every(), name="metrics-flush")
            try:
                yield
            finally:
                if metrics_site is not None:
                    await metrics_site.cleanup()
                for task in (invalidations, flusher):
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
                await settler.stop()
                await writer.stop()
                await client.close()
                metrics.flush()

    app.cleanup_ctx.append(resources)
    app.add_subapp(PREFIX, admin_app())
    add_dashboard_routes(app)
    app.router.add_post("/v1/chat/completions", _route(GATEWAY, Gateway.chat_completions))
    app.router.add_post("/v1/completions", _route(GATEWAY, Gateway.completions))
    app.router.add_post("/v1/embeddings", _route(GATEWAY, Gateway.embeddings))
    app.router.add_get("/v1/models", _route(GATEWAY, Gateway.models))
    app.router.add_get("/healthz", _route(HEALTH, Health.healthz))
    app.router.add_get("/readyz", _route(HEALTH, Health.readyz))
    if settings.metrics_port is None:
        app.router.add_get("/metrics", _route(HEALTH, Health.scrape))
    return app


async def _serve_metrics(health: Health, settings: Settings) -> web.AppRunner:
    """`/metrics` on its own port (SPENDGATE_METRICS_PORT), e.g. one only Prometheus
    reaches; every worker binds it with SO_REUSEPORT."""
    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", health.scrape)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.metrics_port, reuse_port=True).start()
    return runner


def _route(
    key: web.AppKey[T],
    method: Callable[[T, web.Request], Awaitable[web.StreamResponse]],
) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await method(request.app[key], request)

    return handler
