"""The ledger process: under `spendgate serve`, the usage writer runs in a process of its own
beside the workers, at a lower CPU priority.

Why. A writer round is milliseconds of CPU: reading every bucket's stream, parsing the
events, encoding the batch. On a worker's event loop every request in flight waited behind
its slices at each of its steps, and that was most of the p99 the bench adds at 500
requests/s (docs/BENCHMARKS.md, "Where the time goes"). In a process of its own, niced, the
kernel preempts it the moment a worker has work. One writer per `serve` also reads the
streams once instead of once per worker.

Nothing changes in what the ledger guarantees (storage/usage_writer.py): the events wait in
Redis until this process has written them; if it dies, the supervisor starts another under
the same consumer name, which reads its predecessor's pending entries first. Shutdown: the
supervisor sends SIGTERM only after every worker has exited, so the events of the workers'
last settles are in the streams when it drains. A Ctrl-C reaches the whole process group;
SIGINT is ignored here for the same reason.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import suppress

from spendgate.config import Settings
from spendgate.proxy.metrics import FLUSH_EVERY, Metrics
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.postgres import create_pool
from spendgate.storage.redis_client import redis_errors
from spendgate.storage.redis_deployment import redis_clients
from spendgate.storage.usage_writer import UsageWriter

NICENESS = 10  # below the workers: a round can wait a millisecond, a request should not
POOL_SIZE = 2  # one round writes at a time; the second covers a reconnect


def run_ledger(settings: Settings, consumer: str, loop: asyncio.AbstractEventLoop) -> None:
    """The body of the ledger process: write the ledger until SIGTERM, then drain."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with suppress(OSError):  # not allowed to: same priority as the workers, still correct
        os.nice(NICENESS)
    try:
        loop.run_until_complete(_write_ledger(settings, consumer))
    finally:
        loop.close()


async def _write_ledger(settings: Settings, consumer: str) -> None:
    assert settings.database_url is not None  # serve() fills in the embedded servers
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    metrics = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    pool = await create_pool(settings.database_url, size=POOL_SIZE)
    clients = redis_clients(settings)
    try:
        with suppress(StorageUnavailable):  # Redis down at start: the writer keeps trying
            async with redis_errors():
                await clients.ledger.connect()
        writer = UsageWriter(
            clients.ledger,
            pool,
            prefix=settings.redis_prefix,
            buckets=settings.buckets,
            consumer=consumer,
            claim_idle_ms=settings.ledger_claim_idle_ms,
        )
        await writer.start()
        try:
            while not stopping.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), FLUSH_EVERY)
                metrics.count_ledger_writes(writer.writes_ok, writer.writes_failed)
                metrics.flush()
        finally:
            await writer.stop()
            metrics.count_ledger_writes(writer.writes_ok, writer.writes_failed)
            metrics.flush()
    finally:
        await clients.aclose()
        await pool.close()
