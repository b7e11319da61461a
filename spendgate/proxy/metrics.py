"""Prometheus metrics. No per-key labels: keys are unbounded, projects and models are not.

One `Metrics` object per app, on its own registry. With several worker processes
(`spendgate serve --workers N`) prometheus-client's multiprocess mode keeps each value in a
file per process and a scrape of any worker adds them up, so totals are right whichever
worker answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self, TypeVar

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


M = TypeVar("M")


def _child(metric: M, labels: Callable[..., M], values: tuple[Any, ...], by_name: Any) -> M:
    """`labels()` with the children remembered by label values: the library's own
    validates the values and takes a lock on every call (~2 µs, several times per request).
    Label values here are bounded (routes, outcomes, providers, models, projects)."""
    if by_name:
        return labels(*values, **by_name)
    children: dict[tuple[Any, ...], M] = metric.__dict__.setdefault("_children", {})
    child = children.get(values)
    if child is None:
        child = children[values] = labels(*values)
    return child


class LabelledCounter(Counter):
    def labels(self, *values: Any, **by_name: Any) -> Self:
        return _child(self, super().labels, values, by_name)


class LabelledHistogram(Histogram):
    def labels(self, *values: Any, **by_name: Any) -> Self:
        return _child(self, super().labels, values, by_name)


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is not None:
            # Several workers: every value lives in a file per process (prometheus-client
            # picks this at import from PROMETHEUS_MULTIPROC_DIR; a forked worker sets it).
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess_dir = multiprocess_dir
        r = self.registry
        self.requests = LabelledCounter(
            "spendgate_requests", "Proxy requests by outcome", ["route", "outcome"], registry=r
        )
        self.duration = LabelledHistogram(
            "spendgate_request_duration_seconds",
            "Total time of a proxy request, streams included",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.overhead = LabelledHistogram(
            "spendgate_overhead_seconds",
            "Time spent in the gateway: total minus upstream",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_duration = LabelledHistogram(
            "spendgate_upstream_duration_seconds",
            "Time from sending to the provider to its last byte",
            ["provider"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_ttfb = LabelledHistogram(
            "spendgate_upstream_ttfb_seconds",
            "Time from sending to the provider to its answer's headers",
            ["provider"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.spend = LabelledCounter(
            "spendgate_spend_usd", "Charged spend", ["provider", "model", "project"], registry=r
        )
        self.tokens = LabelledCounter(
            "spendgate_tokens", "Charged tokens", ["provider", "model", "kind"], registry=r
        )
        self.limit_rejections = LabelledCounter(
            "spendgate_limit_rejections", "Requests refused by a limit", ["limit"], registry=r
        )
        self.iam_denials = LabelledCounter(
            "spendgate_iam_denials", "Requests refused by IAM rules", ["rule_type"], registry=r
        )
        self.backlog = Gauge(
            "spendgate_usage_backlog",
            "Usage events waiting for the ledger",
            registry=r,
            multiprocess_mode="max",  # every worker sees the same shared streams
        )
        self.ledger_writes = LabelledCounter(
            "spendgate_ledger_writes", "Ledger batch writes", ["result"], registry=r
        )
        self.redis_errors = Counter(
            "spendgate_redis_errors", "Redis calls that failed or timed out", registry=r
        )
        self.key_cache = LabelledCounter(
            "spendgate_key_cache", "Key lookups by the process cache", ["result"], registry=r
        )
        self._seen: dict[str, int] = {}

    def charged(self, event: UsageEvent) -> None:
        provider, model = event.provider, event.model
        if event.cost:
            self.spend.labels(provider, model, event.project_id).inc(event.cost / NANO_PER_USD)
        if event.usage.prompt_tokens:
            self.tokens.labels(provider, model, "prompt").inc(event.usage.prompt_tokens)
        if event.usage.completion_tokens:
            self.tokens.labels(provider, model, "completion").inc(event.usage.completion_tokens)

    def catch_up(self, name: str, total: int, counter: Counter) -> None:
        """Move `counter` by what a plain running total (kept by code that does not know
        Prometheus) has grown since the last scrape."""
        delta = total - self._seen.get(name, 0)
        if delta > 0:
            counter.inc(delta)
        self._seen[name] = total

    def exposition(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(combined)
