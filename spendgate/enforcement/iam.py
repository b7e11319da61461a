"""IAM rules: which models, providers and prices a key may reach.

A key has zero or more rules, each `{id, effect: allow|deny, status: active|inactive}` plus
exactly one of `models` (canonical ids or `provider/id`, `*` globs), `providers`, or
`pricing` (`tier` free|paid, `max_input_per_mtok`, `max_output_per_mtok` in USD per
million tokens, any subset; a model matches when it has that tier and its base prices are
at most the ceilings).

Evaluation: no active rules -> allowed. Any matching active deny rule -> denied. For each
rule type with active allow rules, at least one of them must match (allow rules of one
type are OR-ed, of different types AND-ed). Rule order never changes the outcome, nor the
rule ids a denial names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

from spendgate.config.catalog import Model
from spendgate.enforcement.errors import InvalidField
from spendgate.enforcement.money import MoneyError, format_usd, parse_usd
from spendgate.types import JSONObject

RuleType = Literal["models", "providers", "pricing"]
RULE_TYPES: Final[tuple[RuleType, ...]] = ("models", "providers", "pricing")
DENIAL_CODES: Final[dict[str, str]] = {
    "models": "model_not_allowed",
    "providers": "provider_not_allowed",
    "pricing": "pricing_not_allowed",
}
MAX_RULES = 100
MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Pricing:
    tier: Literal["free", "paid"] | None = None
    max_input: int | None = None  # nano-USD per million tokens
    max_output: int | None = None

    def matches(self, model: Model) -> bool:
        if self.tier is not None and (self.tier == "free") != model.free:
            return False
        base = model.price.base
        if self.max_input is not None and base.input > self.max_input:
            return False
        return self.max_output is None or base.output <= self.max_output

    def json(self) -> JSONObject:
        out: JSONObject = {}
        if self.tier is not None:
            out["tier"] = self.tier
        if self.max_input is not None:
            out["max_input_per_mtok"] = format_usd(self.max_input)
        if self.max_output is not None:
            out["max_output_per_mtok"] = format_usd(self.max_output)
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    effect: Literal["allow", "deny"]
    active: bool
    type: RuleType
    values: tuple[str, ...] = ()  # model patterns or provider names
    pricing: Pricing | None = None

    def matches(self, model: Model) -> bool:
        if self.type == "providers":
            return model.provider in self.values
        if self.type == "models":
            return _pattern(self.values).fullmatch(model.id) is not None or (
                _pattern(self.values).fullmatch(model.full_id) is not None
            )
        assert self.pricing is not None
        return self.pricing.matches(model)

    def json(self) -> JSONObject:
        spec: Any = self.pricing.json() if self.pricing is not None else list(self.values)
        status = "active" if self.active else "inactive"
        return {"id": self.id, "effect": self.effect, "status": status, self.type: spec}


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a model is out of reach: the rule type and the deciding rule ids."""

    type: RuleType
    rule_ids: tuple[str, ...]

    @property
    def code(self) -> str:
        return DENIAL_CODES[self.type]

    @property
    def message(self) -> str:
        rules = ", ".join(self.rule_ids)
        return f"this API key may not use that model ({self.type} rule {rules})"


def evaluate(rules: Sequence[Rule], model: Model) -> Denial | None:
    """None when `model` is allowed. Order-independent: denials are checked by rule type
    in a fixed order and name their rule ids sorted."""
    active = [rule for rule in rules if rule.active]
    if not active:
        return None
    for rule_type in RULE_TYPES:
        denying = sorted(
            r.id for r in active if r.type == rule_type and r.effect == "deny" and r.matches(model)
        )
        if denying:
            return Denial(rule_type, tuple(denying))
    for rule_type in RULE_TYPES:
        allows = [r for r in active if r.type == rule_type and r.effect == "allow"]
        if allows and not any(r.matches(model) for r in allows):
            return Denial(rule_type, tuple(sorted(r.id for r in allows)))
    return None


@lru_cache(maxsize=4096)
def _pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for a rule's patterns: `*` matches any run of characters, nothing else is
    special."""
    return re.compile("|".join(".*".join(map(re.escape, p.split("*"))) for p in patterns))


# -- reading rules ---------------------------------------------------------------------


def parse_rules(data: Any, new_id: Any = None) -> list[Rule]:
    """Rules from JSON: the admin API's body (`new_id` assigns ids; an `id` there is
    refused) or a stored list (ids kept). Raises InvalidField naming the field, e.g.
    `[2].pricing.max_input_per_mtok`."""
    if not isinstance(data, list):
        raise InvalidField("", "the body must be a JSON array of rules")
    if len(data) > MAX_RULES:
        raise InvalidField("", f"at most {MAX_RULES} rules per key")
    return [_rule(item, f"[{i}]", new_id) for i, item in enumerate(data)]


def _rule(item: Any, at: str, new_id: Any) -> Rule:
    if not isinstance(item, dict):
        raise InvalidField(at, "must be an object")
    allowed = {"effect", "status", *RULE_TYPES} | ({"id"} if new_id is None else set())
    for name in item:
        if name not in allowed:
            why = "ids are assigned by the server" if name == "id" else "unknown field"
            raise InvalidField(f"{at}.{name}", why)
    effect = item.get("effect")
    if effect not in ("allow", "deny"):
        raise InvalidField(f"{at}.effect", "must be allow or deny")
    status = item.get("status", "active")
    if status not in ("active", "inactive"):
        raise InvalidField(f"{at}.status", "must be active or inactive")
    types = [t for t in RULE_TYPES if t in item]
    if len(types) != 1:
        raise InvalidField(at, "must have exactly one of models, providers, pricing")
    rule_type = types[0]
    rule_id = new_id() if new_id is not None else item.get("id")
    if not isinstance(rule_id, str):
        raise InvalidField(f"{at}.id", "must be a string")
    spec = item[rule_type]
    where = f"{at}.{rule_type}"
    if rule_type == "pricing":
        return Rule(rule_id, effect, status == "active", rule_type, pricing=_pricing(spec, where))
    return Rule(rule_id, effect, status == "active", rule_type, values=_names(spec, where))


def _names(spec: Any, where: str) -> tuple[str, ...]:
    if not isinstance(spec, list) or not spec:
        raise InvalidField(where, "must be a non-empty list of strings")
    if len(spec) > MAX_PATTERNS:
        raise InvalidField(where, f"at most {MAX_PATTERNS} entries")
    for i, value in enumerate(spec):
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_PATTERN_LENGTH:
            raise InvalidField(f"{where}[{i}]", f"must be 1 to {MAX_PATTERN_LENGTH} characters")
        if value.strip() != value or "\x00" in value:
            raise InvalidField(f"{where}[{i}]", "must not have surrounding space or NUL")
    return tuple(spec)


def _pricing(spec: Any, where: str) -> Pricing:
    if not isinstance(spec, dict) or not spec:
        raise InvalidField(where, "must be an object with tier and/or price ceilings")
    for name in spec:
        if name not in ("tier", "max_input_per_mtok", "max_output_per_mtok"):
            raise InvalidField(f"{where}.{name}", "unknown field")
    tier = spec.get("tier")
    if tier is not None and tier not in ("free", "paid"):
        raise InvalidField(f"{where}.tier", "must be free or paid")
    ceilings = []
    for name in ("max_input_per_mtok", "max_output_per_mtok"):
        value = spec.get(name)
        try:
            ceilings.append(None if value is None else parse_usd(value))
        except MoneyError as exc:
            raise InvalidField(f"{where}.{name}", f"USD per million tokens: {exc}") from exc
    return Pricing(tier, ceilings[0], ceilings[1])


def rules_json(rules: Sequence[Rule]) -> list[JSONObject]:
    return [rule.json() for rule in rules]
