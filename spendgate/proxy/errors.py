"""HTTP errors: one table from error class to (status, type, code), and the envelope.

Handlers raise errors of meaning (enforcement.errors, storage.errors, ApiError below);
the middleware (observe.py) turns them, with `error_envelope`, into OpenAI's envelope
`{"error": {"message", "type", "param", "code"}}`. Anything unknown becomes a 500 with the
request id, logged once here.

ApiError(status, type, code, message, param)    an HTTP-level refusal of the proxy itself
 ├── Unauthorized                                missing or wrong admin token
 ├── InvalidJSON                                 a body that is not a JSON object
 ├── UpstreamUnavailable                         the provider refused or dropped the call
 └── UpstreamTimeout                             the provider did not answer in time
"""

from __future__ import annotations

import logging
import os

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from spendgate.enforcement.errors import (
    AccessDenied,
    ApiKeyDisabled,
    InvalidApiKey,
    InvalidField,
    InvalidRequest,
    KeyLimitReached,
    LimitExceeded,
    ModelNotFound,
    NotFound,
)
from spendgate.storage.credentials import CredentialsDisabled, CredentialUnreadable
from spendgate.storage.errors import StorageUnavailable

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
CLIENT_CLOSED = 499  # no one reads it; logs and the ledger say the client went away
REQUEST_ID = web.RequestKey("request_id", str)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        type_: str,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


class Unauthorized(ApiError):
    def __init__(self) -> None:
        super().__init__(
            401, "invalid_request_error", "invalid_admin_token", "missing or wrong admin token"
        )


class InvalidJSON(ApiError):
    def __init__(self, message: str = "the body must be a JSON object") -> None:
        super().__init__(400, "invalid_request_error", "invalid_json", message)


class UpstreamUnavailable(ApiError):
    def __init__(self, provider: str) -> None:
        super().__init__(
            502, "api_error", "upstream_unavailable", f"the provider {provider} is unreachable"
        )


class UpstreamTimeout(ApiError):
    def __init__(self, provider: str) -> None:
        super().__init__(
            504, "api_error", "upstream_timeout", f"the provider {provider} did not answer in time"
        )


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


def error_body(status: int, type_: str, code: str, message: str, param: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": _safe(message), "type": type_, "param": _safe(param), "code": code}}
    )


def _safe(text: str | None) -> str | None:
    """Text that always encodes (a client's field name may hold a lone surrogate)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode()


def error_response(err: ApiError, request_id: str) -> web.Response:
    return web.Response(
        status=err.status,
        body=error_body(err.status, err.type, err.code, err.message, err.param),
        content_type="application/json",
        headers={REQUEST_ID_HEADER: request_id, **err.headers},
    )


def to_api_error(exc: BaseException) -> ApiError | None:
    """The table: an error of meaning -> the HTTP error it is answered with."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidField):
        return ApiError(400, "invalid_request_error", "invalid_field", str(exc), exc.field or None)
    if isinstance(exc, InvalidApiKey):
        return ApiError(401, "invalid_request_error", "invalid_api_key", str(exc))
    if isinstance(exc, ApiKeyDisabled):
        return ApiError(401, "invalid_request_error", "api_key_disabled", str(exc))
    if isinstance(exc, InvalidRequest):
        return ApiError(400, "invalid_request_error", exc.code, str(exc), exc.param)
    if isinstance(exc, ModelNotFound):
        return ApiError(404, "invalid_request_error", "model_not_found", str(exc), "model")
    if isinstance(exc, AccessDenied):
        return ApiError(403, "permission_error", exc.code, str(exc), "model")
    if isinstance(exc, LimitExceeded):
        return _limit_error(exc)
    if isinstance(exc, NotFound):
        return ApiError(404, "invalid_request_error", "not_found", str(exc))
    if isinstance(exc, KeyLimitReached):
        return ApiError(403, "permission_error", "key_limit_reached", str(exc))
    if isinstance(exc, CredentialsDisabled):
        return ApiError(400, "invalid_request_error", "byok_disabled", str(exc))
    if isinstance(exc, CredentialUnreadable):
        log.error("%s", exc)
        return ApiError(500, "api_error", "credential_unreadable", str(exc))
    if isinstance(exc, StorageUnavailable):
        cause = exc.__cause__
        log.warning("%s unavailable: %s: %s", exc.backend, type(cause).__name__, cause)
        code = "enforcement_unavailable" if exc.backend == "redis" else "storage_unavailable"
        return ApiError(503, "api_error", code, f"{exc.backend} is unavailable, try again")
    if isinstance(exc, RequestPayloadError):  # e.g. a Content-Encoding the body does not have
        return ApiError(400, "invalid_request_error", "invalid_json", "the body could not be read")
    if isinstance(exc, ConnectionError):  # the client hung up (e.g. while sending its body)
        return ApiError(CLIENT_CLOSED, "invalid_request_error", "client_closed", "client closed")
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return _http_exception(exc)
    return None


def _limit_error(exc: LimitExceeded) -> ApiError:
    code = "usage_limit_exceeded" if exc.limit == "all_time" else "period_usage_limit_exceeded"
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.resets_at is not None:
        headers["x-spendgate-period-resets-at"] = exc.resets_at.isoformat().replace("+00:00", "Z")
    return ApiError(429, "insufficient_quota", code, str(exc), headers=headers)


def _http_exception(exc: web.HTTPException) -> ApiError:
    codes: dict[int, tuple[str, str]] = {
        404: ("not_found", "no such route"),
        405: ("method_not_allowed", "method not allowed on this route"),
        413: ("request_too_large", "the request body is too large"),
    }
    code, message = codes.get(exc.status, ("invalid_request", exc.reason))
    headers = {}
    if exc.status == 405 and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    type_ = "api_error" if exc.status >= 500 else "invalid_request_error"
    return ApiError(exc.status, type_, code, message, headers=headers)


def error_envelope(exc: Exception, request: web.Request, request_id: str) -> web.Response:
    """The envelope of an error a handler raised. Anything unknown is a 500 naming the
    request id, logged here once."""
    err = to_api_error(exc)
    if err is None:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        err = ApiError(500, "api_error", "internal_error", "internal error: " + request_id)
    return error_response(err, request_id)
