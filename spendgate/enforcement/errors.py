"""Errors of meaning, raised by any layer and mapped to HTTP in one place (proxy/errors.py).

EnforcementError
 ├── InvalidField(field, message)      an admin request field is missing, malformed or out of range
 ├── NotFound(kind, id)                no such project or key
 ├── KeyLimitReached(limit)            the project's plan allows no more keys
 ├── InvalidApiKey                     no, malformed or unknown API token
 ├── ApiKeyDisabled                    the key is inactive
 ├── InvalidRequest(code, message)     a proxy body the gateway cannot act on
 ├── ModelNotFound(model)              no provider serves the model
 ├── AccessDenied(code, message)       an IAM rule keeps the key from the model
 └── LimitExceeded(limit, in_flight, resets_at)   the all-time or recurring limit is reached
"""

from __future__ import annotations

from datetime import datetime


class EnforcementError(Exception):
    """Base of the errors a decision can end in."""


class InvalidField(EnforcementError):
    """`field` (a dotted path such as `recurring_limit.every`) is invalid."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.detail = message


class NotFound(EnforcementError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} not found")
        self.kind = kind
        self.ident = ident


class KeyLimitReached(EnforcementError):
    def __init__(self, plan: str, limit: int) -> None:
        super().__init__(
            f"the project's {plan} plan allows {limit} API keys; "
            "delete unused keys or upgrade the plan"
        )
        self.plan = plan
        self.limit = limit


class InvalidApiKey(EnforcementError):
    """No token, a malformed one, or one no key has."""

    def __init__(self, message: str = "invalid API key") -> None:
        super().__init__(message)


class ApiKeyDisabled(EnforcementError):
    def __init__(self) -> None:
        super().__init__("this API key is disabled")


class InvalidRequest(EnforcementError):
    """A proxy request body the gateway cannot act on; `code` is the DESIGN.md code."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


class ModelNotFound(EnforcementError):
    def __init__(self, model: str, message: str | None = None) -> None:
        super().__init__(message or f"the model {model!r} does not exist or is not served here")
        self.model = model


class AccessDenied(EnforcementError):
    """An IAM denial; `code` is model_not_allowed, provider_not_allowed or
    pricing_not_allowed and the message names the deciding rule ids."""

    def __init__(self, code: str, message: str, rule_type: str) -> None:
        super().__init__(message)
        self.code = code
        self.rule_type = rule_type


class LimitExceeded(EnforcementError):
    """`limit` is "all_time" or "recurring". `in_flight` is True when settled usage is
    still under the limit and other requests' reservations are what fill it; such a
    request may retry in a second. `resets_at` is the end of the recurring period."""

    def __init__(
        self,
        limit: str,
        in_flight: bool,
        resets_at: datetime | None,
        retry_after: int | None = None,
    ) -> None:
        which = "all-time usage limit" if limit == "all_time" else "recurring usage limit"
        message = f"this API key has reached its {which}"
        if in_flight:
            message = f"requests in flight are holding the rest of this API key's {which}"
        elif resets_at is not None:
            message += f"; the period resets at {resets_at.isoformat().replace('+00:00', 'Z')}"
        super().__init__(message)
        self.limit = limit
        self.in_flight = in_flight
        self.resets_at = resets_at
        self.retry_after = retry_after  # whole seconds, rounded up
