"""Running the gateway: embedded servers when none are configured, the admin token, the
HTTP listener. `spendgate serve` and `spendgate migrate` call into here."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path

from aiohttp import web

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None  # type: ignore[assignment]

from spendgate.config import Settings
from spendgate.proxy.app import create_app
from spendgate.proxy.ledger_process import run_ledger
from spendgate.proxy.logs import configure_logging
from spendgate.storage.embedded import start_postgres, start_valkey
from spendgate.storage.postgres import create_pool, migrate

log = logging.getLogger(__name__)
ADMIN_TOKEN_FILE = "admin_token"
WORKER, LEDGER = "worker", "ledger process"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def say(message: str) -> None:
    """Start-up facts for the person at the terminal (not the request log)."""
    print(f"spendgate: {message}", file=sys.stderr, flush=True)


def with_servers(settings: Settings, stack: ExitStack, *, redis: bool = True) -> Settings:
    """Fill in the embedded PostgreSQL and Valkey for the servers not configured;
    `stack` stops them."""
    changes: dict[str, str] = {}
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        postgres = start_postgres(settings.data_dir)
        stack.callback(postgres.stop)
        changes["database_url"] = postgres.url
        say(f"SPENDGATE_DATABASE_URL not set: started embedded PostgreSQL in {settings.data_dir}")
    if redis and settings.redis_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        valkey = start_valkey(settings.data_dir)
        stack.callback(valkey.stop)
        changes["redis_url"] = valkey.url
        say(f"SPENDGATE_REDIS_URL not set: started embedded Valkey at {valkey.url}")
    return settings.replace(**changes) if changes else settings


def with_admin_token(settings: Settings) -> Settings:
    """Without SPENDGATE_ADMIN_TOKEN, use the one kept in the data dir (made once)."""
    if settings.admin_token is not None:
        return settings
    path = admin_token_path(settings.data_dir)
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = "sga_" + secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(token + "\n", encoding="utf-8")
    say(f"SPENDGATE_ADMIN_TOKEN not set: admin token (kept in {path}): {token}")
    return settings.replace(admin_token=token)


def admin_token_path(data_dir: Path) -> Path:
    return data_dir / ADMIN_TOKEN_FILE


def serve(settings: Settings) -> None:
    """Run the gateway: `workers` pre-forked processes sharing the port through SO_REUSEPORT
    (default: one per core) and the ledger process (ledger_process.py), under a supervisor
    that replaces any that dies. The embedded servers, if any, and the migrations belong to
    the supervisor; the workers only serve."""
    configure_logging(settings.log_level)
    workers = settings.workers or os.cpu_count() or 1
    with ExitStack() as stack:
        settings = with_admin_token(with_servers(settings, stack))
        applied = run_migrations(settings)
        if applied:
            say(f"database migrated: {', '.join(applied)}")
        say(
            f"listening on http://{settings.host}:{settings.port} (admin API at /admin/v1),"
            f" {workers} worker{'s' if workers > 1 else ''} and the ledger writer"
        )
        # Every process's metrics in a file of its own, summed at each scrape.
        metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="spendgate-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        _supervise(settings, workers)


def _run_worker(settings: Settings, *, reuse_port: bool) -> None:
    app = create_app(settings, write_ledger=False)
    app.on_startup.append(_freeze_startup_objects)  # after the resources' start-up
    web.run_app(
        app,
        loop=_new_loop(),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        handle_signals=True,
        reuse_port=reuse_port,
    )


async def _freeze_startup_objects(app: web.Application) -> None:
    """Exempt what start-up built (modules, the price catalog, pools) from the garbage
    collector. A full collection otherwise walks all of it, a pause of about 10 ms (the
    catalog alone) that lands on whichever requests are in flight: the bench's p99."""
    gc.collect()
    gc.freeze()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): a faster event loop, same semantics."""
    return asyncio.new_event_loop() if uvloop is None else uvloop.new_event_loop()


def _supervise(settings: Settings, workers: int) -> None:
    """Fork the workers and the ledger process, replace any that dies, and pass SIGTERM and
    SIGINT on: to the workers first, to the ledger process once they have all exited (it
    then writes what their last settles appended)."""
    supervisor = os.getpid()
    # The same name for every ledger process of this supervisor: one started after another
    # died reads the entries pending for its predecessor first.
    consumer = f"{socket.gethostname()}-{supervisor}-ledger"
    children: dict[int, str] = {}  # pid -> WORKER or LEDGER
    stopping = False

    def spawn(role: str) -> None:
        pid = os.fork()
        if pid == 0:  # the child: run until told to stop, skip the supervisor's clean-up
            code = 0
            try:
                _die_with(supervisor)
                if role == WORKER:
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    _run_worker(settings, reuse_port=workers > 1)
                else:
                    run_ledger(settings, consumer, _new_loop())
            except BaseException:
                log.exception("%s %d failed", role, os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = role
        if stopping:  # SIGTERM came while this one was being forked
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def terminate(role: str) -> None:
        for pid in [pid for pid, of in children.items() if of == role]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        terminate(WORKER if WORKER in children.values() else LEDGER)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        spawn(LEDGER)
        for _ in range(workers):
            spawn(WORKER)
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            role = children.pop(pid)
            if stopping:
                if WORKER not in children.values():  # the last worker is gone: drain
                    terminate(LEDGER)
                continue
            log.error("%s %d exited (status %d); starting another", role, pid, status)
            time.sleep(0.5)
            if not stopping:  # SIGTERM may have come during the pause
                spawn(role)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _die_with(supervisor: int) -> None:
    """A child whose supervisor is killed outright (SIGKILL, the OOM killer) must not serve
    on unsupervised, nor stay behind holding the port: on Linux, the kernel kills it too."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:  # it died before prctl took effect
        os._exit(1)


def run_migrations(settings: Settings) -> list[str]:
    async def apply(dsn: str) -> list[str]:
        pool = await create_pool(dsn, size=1)
        try:
            return await migrate(pool)
        finally:
            await pool.close()

    with ExitStack() as stack:
        settings = with_servers(settings, stack, redis=False)
        assert settings.database_url is not None
        return asyncio.run(apply(settings.database_url))
