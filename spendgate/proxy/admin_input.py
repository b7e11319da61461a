"""Admin API bodies: JSON text -> typed, validated values, or InvalidField naming the field.

JSON numbers are parsed as Decimal from their text, never through a binary float, so a
limit of 0.1 USD is exactly 100,000,000 nano-USD.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from spendgate.enforcement.errors import InvalidField
from spendgate.enforcement.keys import (
    NAME_MAX,
    PLAN_KEY_LIMITS,
    UNSET,
    KeyChanges,
    RecurringLimit,
    Unset,
)
from spendgate.enforcement.money import MoneyError, parse_usd
from spendgate.enforcement.windows import Window, WindowError
from spendgate.types import JSONObject, Nano

MAX_CUSTOM_KEY_LIMIT = 1_000_000


class BodyError(ValueError):
    """The body is not valid JSON or not an object."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Any JSON value; numbers with a fraction or exponent become Decimal."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BodyError("the body is not valid JSON") from exc
    try:  # what cannot be written back (lone surrogates, nesting over 255) is refused now
        orjson.dumps(value, default=str)
    except TypeError as exc:
        raise BodyError("the body has an unpaired surrogate or is nested too deeply") from exc
    return value


def _only(body: JSONObject, allowed: tuple[str, ...], prefix: str = "") -> None:
    for name in body:
        if name not in allowed:
            raise InvalidField(prefix + name, f"unknown field; expected {', '.join(allowed)}")


def _name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= NAME_MAX or not value.strip():
        raise InvalidField(field, f"must be a string of 1 to {NAME_MAX} characters")
    if "\x00" in value:
        raise InvalidField(field, "must not contain NUL characters")
    return value


def _money(value: Any, field: str) -> Nano:
    try:
        return parse_usd(value)
    except MoneyError as exc:
        raise InvalidField(field, str(exc)) from exc


def _optional_money(value: Any, field: str) -> Nano | None:
    return None if value is None else _money(value, field)


def _recurring(value: Any, field: str = "recurring_limit") -> RecurringLimit | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidField(field, "must be an object {amount, every, unit} or null")
    _only(value, ("amount", "every", "unit"), field + ".")
    for part in ("amount", "every", "unit"):
        if part not in value:
            raise InvalidField(f"{field}.{part}", "is required")
    amount = _money(value["amount"], field + ".amount")
    unit = value["unit"]
    if not isinstance(unit, str):
        raise InvalidField(field + ".unit", "must be one of hour, day, week, month")
    every = value["every"]
    if isinstance(every, Decimal) and every == every.to_integral_value():
        every = int(every)
    try:
        window = Window(every, unit)  # type: ignore[arg-type]
    except WindowError as exc:
        raise InvalidField(f"{field}.{exc.field}", str(exc)) from exc
    return RecurringLimit(amount, window)


def _plan(value: Any) -> str:
    if not isinstance(value, str) or value not in PLAN_KEY_LIMITS:
        raise InvalidField("plan", "must be one of free, pro, enterprise")
    assert isinstance(value, str)
    return value


def _custom_limit(value: Any, plan: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField("key_limit", "must be an integer")
    if not 0 <= value <= MAX_CUSTOM_KEY_LIMIT:
        raise InvalidField("key_limit", f"must be 0 to {MAX_CUSTOM_KEY_LIMIT}")
    if plan != "enterprise":
        raise InvalidField("key_limit", "only an enterprise project sets its own key limit")
    return value


@dataclass(frozen=True, slots=True)
class NewProject:
    name: str
    plan: str
    key_limit: int | None


def new_project(body: JSONObject) -> NewProject:
    _only(body, ("name", "plan", "key_limit"))
    if "name" not in body:
        raise InvalidField("name", "is required")
    name = _name(body["name"])
    plan = _plan(body.get("plan", "free"))
    return NewProject(name, plan, _custom_limit(body.get("key_limit"), plan))


@dataclass(frozen=True, slots=True)
class ProjectChanges:
    name: str | None
    plan: str
    key_limit: int | None


def project_changes(body: JSONObject, plan: str, key_limit: int | None) -> ProjectChanges:
    """`plan` and `key_limit` are the project's current values. Leaving the enterprise plan
    drops the project's own key limit."""
    _only(body, ("name", "plan", "key_limit"))
    name = _name(body["name"]) if "name" in body else None
    new_plan = _plan(body["plan"]) if "plan" in body else plan
    if "key_limit" in body:
        limit = _custom_limit(body["key_limit"], new_plan)
    else:
        limit = key_limit if new_plan == "enterprise" else None
    return ProjectChanges(name, new_plan, limit)


@dataclass(frozen=True, slots=True)
class KeyRequest:
    name: str
    usage_limit: Nano | None
    recurring_limit: RecurringLimit | None


def new_key(body: JSONObject) -> KeyRequest:
    _only(body, ("name", "usage_limit", "recurring_limit"))
    if "name" not in body:
        raise InvalidField("name", "is required")
    return KeyRequest(
        name=_name(body["name"]),
        usage_limit=_optional_money(body.get("usage_limit"), "usage_limit"),
        recurring_limit=_recurring(body.get("recurring_limit")),
    )


def key_changes(body: JSONObject) -> KeyChanges:
    _only(body, ("name", "status", "usage_limit", "recurring_limit"))
    name: str | Unset = _name(body["name"]) if "name" in body else UNSET
    status: Any = UNSET
    if "status" in body:
        status = body["status"]
        if status not in ("active", "inactive"):
            raise InvalidField("status", "must be active or inactive")
    usage_limit: Nano | None | Unset = UNSET
    if "usage_limit" in body:
        usage_limit = _optional_money(body["usage_limit"], "usage_limit")
    recurring: RecurringLimit | None | Unset = UNSET
    if "recurring_limit" in body:
        recurring = _recurring(body["recurring_limit"])
    return KeyChanges(name=name, status=status, usage_limit=usage_limit, recurring_limit=recurring)


MAX_CREDENTIAL = 4096


def credential(body: JSONObject) -> str:
    """`{api_key}` of a BYOK PUT."""
    _only(body, ("api_key",))
    value = body.get("api_key")
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_CREDENTIAL:
        raise InvalidField("api_key", f"must be a string of 1 to {MAX_CREDENTIAL} characters")
    if value.strip() != value or any(c in value for c in "\r\n\x00"):
        raise InvalidField("api_key", "must not contain line breaks, NUL or surrounding space")
    return value
