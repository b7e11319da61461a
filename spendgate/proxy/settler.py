"""Settles that could not run inline: one queue, one task, drained at shutdown.

A request settles in its own `finally`. When that cannot happen (Redis unreachable at
that moment, or the handler cancelled at shutdown) the usage event goes to this queue;
its task retries with backoff until Redis takes it. Settle is idempotent on the request
id, so a settle that did reach Redis before it failed on the way back is harmless to
repeat. Reservations that were never settled expire on their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any

from spendgate.enforcement.usage import UsageEvent
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.spend import SpendStore

log = logging.getLogger(__name__)

MAX_BACKOFF = 2.0


class Settler:
    def __init__(self, spend: SpendStore) -> None:
        self._spend = spend
        self._queue: asyncio.Queue[UsageEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()

    async def settle(self, event: UsageEvent) -> None:
        """Settle now; if that is not possible, leave it to the queue. Never raises
        StorageUnavailable; re-raises cancellation after queueing."""
        try:
            await self._spend.settle(event)
        except StorageUnavailable:
            log.warning("settle of %s deferred: Redis unavailable", event.request_id)
            self._queue.put_nowait(event)
        except asyncio.CancelledError:
            self._queue.put_nowait(event)
            raise

    def defer(self, event: UsageEvent) -> None:
        self._queue.put_nowait(event)

    def finish(self, work: Coroutine[Any, Any, None]) -> None:
        """Run what a cancelled handler could not finish (e.g. reading the provider's usage
        of an abandoned stream, then settling); stop() waits for it."""
        task = asyncio.create_task(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spendgate-settler")

    async def stop(self, timeout: float = 10.0) -> None:
        """Let unfinished work and the queue drain (bounded by `timeout`), then stop."""
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self._finishing:
                    await asyncio.wait(set(self._finishing))
                await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if not self._queue.empty():
            lost = [self._queue.get_nowait().request_id for _ in range(self._queue.qsize())]
            log.error("shutdown with unsettled requests (reservations will expire): %s", lost)

    async def _run(self) -> None:
        delay = 0.05
        while True:
            event = await self._queue.get()
            try:
                while True:
                    try:
                        await self._spend.settle(event)
                        delay = 0.05
                        break
                    except StorageUnavailable:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, MAX_BACKOFF)
            except asyncio.CancelledError:
                self._queue.put_nowait(event)  # for stop() to report
                raise
            finally:
                self._queue.task_done()
