"""Per-request observation of the proxy routes: metrics and one JSON log line.

The gateway fills a `Facts` object as it learns them (key, model, cost, upstream time);
this middleware, just inside the error middleware, classifies the outcome from the
response or the exception raised, and records both. The log line names the request, key,
project and model; never a token, a credential or any part of a prompt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestPayloadError

from spendgate.enforcement.errors import (
    AccessDenied,
    ApiKeyDisabled,
    InvalidApiKey,
    InvalidRequest,
    LimitExceeded,
    ModelNotFound,
)
from spendgate.enforcement.money import format_usd
from spendgate.proxy.errors import (
    REQUEST_ID,
    UpstreamTimeout,
    UpstreamUnavailable,
    to_api_error,
)
from spendgate.proxy.metrics import Metrics
from spendgate.storage.errors import StorageUnavailable

access_log = logging.getLogger("spendgate.access")


@dataclass(slots=True)
class Facts:
    key_id: str | None = None
    project_id: str | None = None
    model: str | None = None
    provider: str | None = None
    stream: bool = False
    cost: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    upstream_seconds: float = 0.0
    outcome: str | None = None  # set by the gateway when the status does not tell


FACTS = web.RequestKey("facts", Facts)


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, InvalidApiKey | ApiKeyDisabled):
        return "auth_failed"
    if isinstance(exc, AccessDenied):
        return "iam_denied"
    if isinstance(exc, LimitExceeded):
        return "limit_exceeded"
    if isinstance(exc, UpstreamUnavailable | UpstreamTimeout):
        return "upstream_error"
    if isinstance(exc, StorageUnavailable):
        return "unavailable"
    if isinstance(
        exc,
        InvalidRequest
        | ModelNotFound
        | web.HTTPClientError
        | ConnectionError
        | RequestPayloadError,
    ):
        return "bad_request"
    return "error"


def observe_middleware(metrics: Metrics) -> Middleware:
    perf_counter = time.perf_counter

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        facts = Facts()
        request[FACTS] = facts
        started = perf_counter()
        status = 500
        outcome = "error"
        try:
            response = await handler(request)
            status = response.status
            outcome = facts.outcome or ("upstream_error" if status >= 500 else "forwarded")
            return response
        except Exception as exc:
            outcome = outcome_of(exc)
            status = _status_of(exc)
            _count_rejection(metrics, exc)
            raise
        finally:
            elapsed = perf_counter() - started
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unrouted"
            metrics.requests.labels(route, outcome).inc()
            metrics.duration.labels(route).observe(elapsed)
            metrics.overhead.labels(route).observe(max(0.0, elapsed - facts.upstream_seconds))
            _log(request, facts, route, status, outcome, elapsed)

    return middleware


def _status_of(exc: Exception) -> int:
    err = to_api_error(exc)
    return err.status if err is not None else 500


def _count_rejection(metrics: Metrics, exc: Exception) -> None:
    if isinstance(exc, LimitExceeded):
        metrics.limit_rejections.labels(exc.limit).inc()
    elif isinstance(exc, AccessDenied):
        metrics.iam_denials.labels(exc.rule_type).inc()
    elif isinstance(exc, StorageUnavailable) and exc.backend == "redis":
        metrics.redis_errors.inc()


def _log(
    request: web.Request, facts: Facts, route: str, status: int, outcome: str, elapsed: float
) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    access_log.info(
        "request",
        extra={
            "request_id": request.get(REQUEST_ID),
            "route": route,
            "status": status,
            "outcome": outcome,
            "key_id": facts.key_id,
            "project_id": facts.project_id,
            "model": facts.model,
            "provider": facts.provider,
            "stream": facts.stream,
            "cost": None if facts.cost is None else format_usd(facts.cost),
            "prompt_tokens": facts.prompt_tokens,
            "completion_tokens": facts.completion_tokens,
            "duration_ms": round(elapsed * 1000, 3),
            "upstream_ms": round(facts.upstream_seconds * 1000, 3),
        },
    )
