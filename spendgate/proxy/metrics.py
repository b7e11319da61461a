"""Prometheus metrics. No per-key labels: keys are unbounded, projects and models are not.

One `Metrics` object per app, on its own registry. With several worker processes
(`spendgate serve --workers N`) prometheus-client's multiprocess mode keeps each value in a
file per process and a scrape of any worker adds them up, so totals are right whichever
worker answers.

The per-request counters and histograms are held in plain numbers and applied to the
library's values in one go: at every scrape of this process, and every FLUSH_EVERY
seconds (so another worker's scrape is at most that much behind). The library takes a lock
on every increment and walks a histogram's buckets in Python on every observation: with
eight of them a request, ~8 µs.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from spendgate.enforcement.money import NANO_PER_USD
from spendgate.enforcement.usage import UsageEvent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = (
    "forwarded",
    "auth_failed",
    "iam_denied",
    "limit_exceeded",
    "bad_request",
    "upstream_error",
    "unavailable",
)
# The gateway's own time is sub-millisecond when healthy; requests take up to minutes.
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FLUSH_EVERY = 1.0  # seconds between two flushes of the held values


class Increments(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class HeldCount:
    """A counter child's increments, held until the next flush."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._pending: float = 0

    def inc(self, amount: float = 1) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            self._child.inc(self._pending)
            self._pending = 0


class HeldObservations:
    """A histogram child's observations, held as bucket counts and a sum until the next
    flush; the bucket is the first whose upper bound is >= the amount, as the library's."""

    __slots__ = ("_child", "_bounds", "_counts", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = child._upper_bounds
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        child = self._child
        child._sum.inc(self._sum)
        for bucket, count in enumerate(counts):
            if count:
                child._buckets[bucket].inc(count)
        self._counts = [0] * len(counts)
        self._sum = 0.0


H = TypeVar("H", HeldCount, HeldObservations)


class HeldCounter(Counter):
    """A Counter whose increments are held: `held(*label_values).inc()`."""

    holder: _Held

    def held(self, *values: Any) -> HeldCount:
        return self.holder.child(self, values, HeldCount)


class HeldHistogram(Histogram):
    """A Histogram whose observations are held: `held(*label_values).observe()`."""

    holder: _Held

    def held(self, *values: Any) -> HeldObservations:
        return self.holder.child(self, values, HeldObservations)


class _Held:
    """The held children of every metric, by metric and label values (bounded: routes,
    outcomes, providers, models, projects), for the flush."""

    def __init__(self) -> None:
        self.children: dict[tuple[int, tuple[Any, ...]], Any] = {}

    def child(self, metric: Any, values: tuple[Any, ...], hold: Callable[[Any], H]) -> H:
        key = (id(metric), values)
        held = self.children.get(key)
        if held is None:
            held = self.children[key] = hold(metric.labels(*values))
        return held

    def flush(self) -> None:
        for held in self.children.values():
            held.flush()


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is not None:
            # Several workers: every value lives in a file per process (prometheus-client
            # picks this at import from PROMETHEUS_MULTIPROC_DIR; a forked worker sets it).
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess_dir = multiprocess_dir
        r = self.registry
        self.requests = HeldCounter(
            "spendgate_requests", "Proxy requests by outcome", ["route", "outcome"], registry=r
        )
        self.duration = HeldHistogram(
            "spendgate_request_duration_seconds",
            "Total time of a proxy request, streams included",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.overhead = HeldHistogram(
            "spendgate_overhead_seconds",
            "Time spent in the gateway: total minus upstream",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_duration = HeldHistogram(
            "spendgate_upstream_duration_seconds",
            "Time from sending to the provider to its last byte",
            ["provider"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_ttfb = HeldHistogram(
            "spendgate_upstream_ttfb_seconds",
            "Time from sending to the provider to its answer's headers",
            ["provider"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.spend = HeldCounter(
            "spendgate_spend_usd", "Charged spend", ["provider", "model", "project"], registry=r
        )
        self.tokens = HeldCounter(
            "spendgate_tokens", "Charged tokens", ["provider", "model", "kind"], registry=r
        )
        self.limit_rejections = HeldCounter(
            "spendgate_limit_rejections", "Requests refused by a limit", ["limit"], registry=r
        )
        self.iam_denials = HeldCounter(
            "spendgate_iam_denials", "Requests refused by IAM rules", ["rule_type"], registry=r
        )
        self.backlog = Gauge(
            "spendgate_usage_backlog",
            "Usage events waiting for the ledger",
            registry=r,
            multiprocess_mode="max",  # every worker sees the same shared streams
        )
        self.ledger_writes = HeldCounter(
            "spendgate_ledger_writes", "Ledger batch writes", ["result"], registry=r
        )
        self.redis_errors = Counter(
            "spendgate_redis_errors", "Redis calls that failed or timed out", registry=r
        )
        self.key_cache = HeldCounter(
            "spendgate_key_cache", "Key lookups by the process cache", ["result"], registry=r
        )
        self._seen: dict[str, int] = {}
        self._held = _Held()
        for metric in list(vars(self).values()):  # every held metric, new ones included
            if isinstance(metric, HeldCounter | HeldHistogram):
                metric.holder = self._held

    def charged(self, event: UsageEvent) -> None:
        provider, model = event.provider, event.model
        if event.cost:
            self.spend.held(provider, model, event.project_id).inc(event.cost / NANO_PER_USD)
        if event.usage.prompt_tokens:
            self.tokens.held(provider, model, "prompt").inc(event.usage.prompt_tokens)
        if event.usage.completion_tokens:
            self.tokens.held(provider, model, "completion").inc(event.usage.completion_tokens)

    def catch_up(self, name: str, total: int, counter: Increments) -> None:
        """Move `counter` by what a plain running total (kept by code that does not know
        Prometheus) has grown since the last scrape."""
        delta = total - self._seen.get(name, 0)
        if delta > 0:
            counter.inc(delta)
        self._seen[name] = total

    def count_ledger_writes(self, ok: int, failed: int) -> None:
        """Catch up with a usage writer's running totals of batch writes."""
        self.catch_up("ledger_ok", ok, self.ledger_writes.held("ok"))
        self.catch_up("ledger_error", failed, self.ledger_writes.held("error"))

    def flush(self) -> None:
        """Apply the held values to the library's (this process's file, with workers)."""
        self._held.flush()

    async def flush_every(self, seconds: float = FLUSH_EVERY) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.flush()

    def exposition(self) -> bytes:
        self.flush()
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(combined)
