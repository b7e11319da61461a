"""The JSON Schema subset of spendgate's OpenAPI document: strategies for instances that
conform and instances that (mostly) do not, and a validator that tells them apart.

Supported keywords: `$ref` (to `#/components/schemas/...`), `type` (a name or a list),
`enum`, `oneOf`, `allOf`, `properties`, `required`, `additionalProperties: false`,
`minProperties`, `items`, `minItems`, `maxItems`, `minLength`, `maxLength`, `pattern`,
`minimum`, `maximum` and `format: date-time`. Numbers generated as conforming are written
as JSON number text (`Raw`) so that a decimal keeps its digits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.values import (
    EDGE_STRINGS,
    Raw,
    characters,
    json_values,
    long_string,
    numbers,
    strings,
    weighted,
)

Schema = Mapping[str, Any]

# RFC 3339 date-time, as the validator accepts it (`format` is an annotation in 2020-12,
# but the usage endpoint's parameters do enforce it).
RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)
MAX_GENERATED_ITEMS = 6
INT64 = 2**63


def rfc3339_times() -> st.SearchStrategy[str]:
    """Valid RFC 3339 times around the test clock, with every spelling of the zone."""
    start = datetime(2025, 11, 1, tzinfo=UTC)
    span = int((datetime(2026, 3, 1, tzinfo=UTC) - start).total_seconds())

    def spell(seconds: int, micros: int, offset: int, digits: int, z: str) -> str:
        local = (start + timedelta(seconds=seconds, microseconds=micros)).astimezone(
            timezone(timedelta(minutes=offset))
        )
        text = local.strftime("%Y-%m-%dT%H:%M:%S")
        if digits:
            text += "." + f"{local.microsecond:06d}123"[:digits]
        if offset == 0 and z:
            return text + z
        zone = local.strftime("%z")
        return text + zone[:3] + ":" + zone[3:]

    return st.builds(
        spell,
        st.integers(0, span),
        st.integers(0, 999_999),
        st.sampled_from([0, 0, 60, -60, 330, -570, 14 * 60, -14 * 60, 45]),
        st.integers(0, 9),
        st.sampled_from(["Z", "z", ""]),
    )


# Patterns of the document with a cheaper generator than `st.from_regex`.
MONEY_PATTERN = r"^[0-9]+(\.[0-9]{1,9})?$"
PATTERN_STRATEGIES: dict[str, st.SearchStrategy[str]] = {
    MONEY_PATTERN: st.builds(
        lambda whole, fraction: f"{whole}{'.' + fraction if fraction else ''}",
        st.integers(0, 10**12).map(str) | st.sampled_from(["0", "00", "007"]),
        st.none() | st.text("0123456789", min_size=1, max_size=9),
    ),
}


class Schemas:
    """The document's schemas, with `$ref`s resolved against it."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document

    def resolve(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            ref = schema["$ref"]
            assert ref.startswith("#/"), ref
            target: Any = self.document
            for part in ref[2:].split("/"):
                target = target[part]
            schema = target
        return schema

    # -- conforming instances ----------------------------------------------------------

    def valid(self, schema: Schema, at_limits: bool = True) -> st.SearchStrategy[Any]:
        """Conforming instances; with `at_limits`, strings and arrays exactly at their
        maximum size too (never nested in one another: a list of 100 rules of 100 patterns
        of 255 characters would be megabytes)."""
        schema = self.resolve(schema)
        if "allOf" in schema:
            merged: dict[str, Any] = {"properties": {}, "required": []}
            for part in schema["allOf"]:
                part = self.resolve(part)
                merged["properties"].update(part.get("properties", {}))
                merged["required"] += part.get("required", [])
            return self.valid(merged | {"type": "object"}, at_limits)
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "oneOf" in schema and "type" not in schema:
            return st.one_of([self.valid(branch, at_limits) for branch in schema["oneOf"]])
        types = schema.get("type", ["null", "boolean", "integer", "string"])
        if isinstance(types, str):
            types = [types]
        return st.one_of([self._valid_typed(kind, schema, at_limits) for kind in types])

    def _valid_typed(self, kind: str, schema: Schema, at_limits: bool) -> st.SearchStrategy[Any]:
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            low, high = schema.get("minimum", -INT64), schema.get("maximum", INT64 - 1)
            return st.integers(low, high) | st.sampled_from([low, high])
        if kind == "number":
            low, high = schema.get("minimum"), schema.get("maximum")
            decimals = st.decimals(
                min_value=low, max_value=high, allow_nan=False, allow_infinity=False, places=9
            ).map(lambda d: Raw(str(d.normalize()) if d else "0"))
            return st.integers(low, high) | decimals
        if kind == "string":
            return self._valid_string(schema, at_limits)
        if kind == "array":
            items = self.valid(schema.get("items", {}), at_limits)
            low = schema.get("minItems", 0)
            high = min(schema.get("maxItems", MAX_GENERATED_ITEMS), MAX_GENERATED_ITEMS)
            lists = st.lists(items, min_size=low, max_size=max(low, high))
            if "maxItems" not in schema or not at_limits:
                return lists
            small = self.valid(schema.get("items", {}), at_limits=False)
            return weighted((9, lists), (1, _repeated(small, schema["maxItems"])))
        if kind == "object":
            return self._valid_object(schema, at_limits)
        raise NotImplementedError(kind)

    def _valid_string(self, schema: Schema, at_limits: bool) -> st.SearchStrategy[str]:
        if "pattern" in schema:
            pattern: str = schema["pattern"]
            known = PATTERN_STRATEGIES.get(pattern)
            return known if known is not None else st.from_regex(pattern, fullmatch=True)
        if schema.get("format") == "date-time":
            return rfc3339_times()
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        # Any characters: a JSON string may hold lone surrogates, NUL, RTL marks... and the
        # schema allows them all.
        edge = [t for t in EDGE_STRINGS if low <= len(t) <= (high or len(t))]
        short = st.text(characters, min_size=low, max_size=min(high or 40, 40))
        short = weighted((4, short), (1, st.sampled_from(edge)))
        if high is None or not at_limits:
            return short
        # Exactly at the maximum: a short random text repeated (drawing `high` characters
        # one by one would make each example cost milliseconds).
        at_max = st.text(characters, min_size=1, max_size=8).map(lambda t: (t * high)[:high])
        return short | at_max

    def _valid_object(
        self, schema: Schema, at_limits: bool = True
    ) -> st.SearchStrategy[dict[str, Any]]:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        # `oneOf` of `required` lists only: exactly one of those properties is present.
        branches = [set(b.get("required", ())) for b in schema.get("oneOf", ())] or [set()]
        options = []
        for branch in branches:
            others = set().union(*branches) - branch
            must = {
                name: self.valid(properties[name], at_limits) for name in sorted(required | branch)
            }
            may = {
                name: self.valid(sub, at_limits)
                for name, sub in properties.items()
                if name not in must and name not in others
            }
            objects = st.fixed_dictionaries(must, optional=may)
            if schema.get("minProperties"):
                objects = objects.filter(lambda o: len(o) >= schema["minProperties"])
            options.append(objects)
        return st.one_of(options)

    # -- non-conforming instances ------------------------------------------------------

    def invalid(self, schema: Schema) -> st.SearchStrategy[Any]:
        """Instances that break one rule of `schema` (or, for the odd junk value, none)."""
        schema = self.resolve(schema)
        options: list[tuple[int, st.SearchStrategy[Any]]] = [(2, json_values)]
        types = schema.get("type")
        if isinstance(types, str):
            types = [types]
        types = types or []
        if "enum" in schema:
            options.append((2, strings))
        if "string" in types:
            if "maxLength" in schema:
                top = schema["maxLength"]
                options.append((2, long_string(top + 1, top + 1)))
                options.append((1, long_string(top + 2, top * 4 + 1_000)))
            if schema.get("minLength"):
                options.append((1, st.just("")))
            options.append((1, st.just("\x00")))
        if "integer" in types or "number" in types:
            options.append((3, numbers))
            if "minimum" in schema:
                options.append((1, st.just(schema["minimum"] - 1)))
            if "maximum" in schema:
                options.append((1, st.just(schema["maximum"] + 1)))
            options.append((1, st.sampled_from([1.5, Raw("1.0000000001"), True, "1", None])))
        if "oneOf" in schema and "type" not in schema:  # money: strings and numbers
            options.append((3, numbers))
            options.append(
                (3, st.sampled_from(["-1", "1.0000000001", "1e3", "NaN", " 1", "1 ", "+1", ""]))
            )
        if "array" in types:
            items = schema.get("items", {})
            options.append((3, st.lists(self.invalid(items), min_size=1, max_size=3)))
            if "maxItems" in schema:
                small = self.valid(items, at_limits=False)
                options.append((1, _repeated(small, schema["maxItems"] + 1)))
            if schema.get("minItems"):
                options.append((1, st.just([])))
        if "object" in types or "allOf" in schema:
            options.extend(self._invalid_object(schema))
        return weighted(*options)

    def _invalid_object(self, schema: Schema) -> list[tuple[int, st.SearchStrategy[Any]]]:
        properties = schema.get("properties", {})
        valid = self._valid_object(schema)
        options: list[tuple[int, st.SearchStrategy[Any]]] = []

        def without(obj: dict[str, Any], name: str) -> dict[str, Any]:
            return {k: v for k, v in obj.items() if k != name}

        required = schema.get("required", [])
        if required:
            options.append(
                (2, st.tuples(valid, st.sampled_from(required)).map(lambda p: without(*p)))
            )
        extra = st.tuples(valid, strings | st.sampled_from(["id", "key", "__proto__"]), json_values)
        options.append((2, extra.map(lambda p: p[0] | {p[1]: p[2]})))
        names = sorted(properties)
        if names:

            def broken(name: str) -> st.SearchStrategy[dict[str, Any]]:
                return st.tuples(valid, self.invalid(properties[name])).map(
                    lambda p: p[0] | {name: p[1]}
                )

            options.append((8, st.sampled_from(names).flatmap(broken)))
            # every property at once, valid or not
            options.append(
                (
                    1,
                    st.fixed_dictionaries(
                        {}, optional={n: self.invalid(properties[n]) for n in names}
                    ),
                )
            )
        if schema.get("oneOf"):  # two of the exclusive properties at once
            options.append(
                (1, st.fixed_dictionaries({n: self.valid(properties[n]) for n in names}))
            )
        if schema.get("minProperties"):
            options.append((1, st.just({})))
        return options

    # -- validation --------------------------------------------------------------------

    def errors(self, instance: Any, schema: Schema, where: str = "$") -> list[str]:
        """What about `instance` breaks `schema`; [] when it conforms."""
        schema = self.resolve(schema)
        found: list[str] = []
        for part in schema.get("allOf", ()):
            found += self.errors(instance, part, where)
        if "oneOf" in schema:
            matches = sum(not self.errors(instance, branch, where) for branch in schema["oneOf"])
            if matches != 1:
                found.append(f"{where}: matches {matches} of oneOf")
        if "enum" in schema and not any(_same(instance, e) for e in schema["enum"]):
            found.append(f"{where}: {instance!r:.60} not in {schema['enum']}")
        types = schema.get("type")
        if types is not None:
            types = [types] if isinstance(types, str) else types
            if not any(_is_type(instance, kind) for kind in types):
                found.append(f"{where}: {type(instance).__name__} is not {types}")
                return found
        if isinstance(instance, str):
            found += _string_errors(instance, schema, where)
        elif _is_type(instance, "number"):
            if "minimum" in schema and instance < schema["minimum"]:
                found.append(f"{where}: {instance} < {schema['minimum']}")
            if "maximum" in schema and instance > schema["maximum"]:
                found.append(f"{where}: {instance} > {schema['maximum']}")
        elif isinstance(instance, list):
            if len(instance) < schema.get("minItems", 0):
                found.append(f"{where}: fewer than {schema['minItems']} items")
            if "maxItems" in schema and len(instance) > schema["maxItems"]:
                found.append(f"{where}: more than {schema['maxItems']} items")
            if "items" in schema:
                for i, item in enumerate(instance):
                    found += self.errors(item, schema["items"], f"{where}[{i}]")
        elif isinstance(instance, dict):
            found += self._object_errors(instance, schema, where)
        return found

    def _object_errors(self, instance: dict[str, Any], schema: Schema, where: str) -> list[str]:
        found = [f"{where}.{n}: required" for n in schema.get("required", ()) if n not in instance]
        properties = schema.get("properties", {})
        for name, value in instance.items():
            if name in properties:
                found += self.errors(value, properties[name], f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                found.append(f"{where}.{name}: not allowed")
        if len(instance) < schema.get("minProperties", 0):
            found.append(f"{where}: fewer than {schema['minProperties']} properties")
        return found


def _repeated(items: st.SearchStrategy[Any], count: int) -> st.SearchStrategy[list[Any]]:
    """`count` copies of one item: a list at its size limit without drawing `count` items
    (a list of 100 rules of 100 patterns each would be megabytes)."""
    return items.map(lambda item: [item] * count)


def _string_errors(instance: str, schema: Schema, where: str) -> list[str]:
    found = []
    if len(instance) < schema.get("minLength", 0):
        found.append(f"{where}: shorter than {schema['minLength']}")
    if "maxLength" in schema and len(instance) > schema["maxLength"]:
        found.append(f"{where}: longer than {schema['maxLength']}")
    if "pattern" in schema and not re.search(schema["pattern"], instance):
        found.append(f"{where}: does not match {schema['pattern']}")
    if schema.get("format") == "date-time" and not _is_time(instance):
        found.append(f"{where}: {instance!r:.60} is not an RFC 3339 date-time")
    return found


def _is_time(text: str) -> bool:
    if not RFC3339.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _is_type(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return False
    if kind == "number":
        return True
    assert kind == "integer", kind
    if isinstance(value, int):
        return True
    if isinstance(value, Decimal):
        return value.is_finite() and value == value.to_integral_value()
    return math.isfinite(value) and value == int(value)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b
