"""Errors of meaning, raised by any layer and mapped to HTTP in one place (proxy/errors.py).

EnforcementError
 ├── InvalidField(field, message)      a request field is missing, malformed or out of range
 ├── NotFound(kind, id)                no such project or key
 └── KeyLimitReached(limit)            the project's plan allows no more keys
"""

from __future__ import annotations


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
