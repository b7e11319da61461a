"""The providers file: the providers, the models they serve, and their prices, in TOML.

Providers file (TOML, named by SPENDGATE_PROVIDERS_FILE)::

    [providers.openai]
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"      # or: api_key = "sk-local"; neither = no credential
    models = ["gpt-4o-mini", "gpt-4o"]  # or "*" = every model genai-prices prices for it
    stream_usage = true                 # optional, default true
    prices_from = "openai"              # optional, default = the provider name

    [providers.local]
    base_url = "http://127.0.0.1:8000/v1"
    models = ["llama-3-8b", "bge-small"]
    [providers.local.prices."llama-3-8b"]   # USD per million tokens: decimal strings (or integers)
    input_per_mtok = "0.05"
    output_per_mtok = "0.08"
    cached_input_per_mtok = "0.025"         # optional, default = input_per_mtok
    free = false                            # optional, default: true when all prices are 0
    [providers.local.prices."bge-small"]
    input_per_mtok = "0.01"                 # output_per_mtok may be left out for embeddings
    kind = "embedding"                      # optional: "chat" (also /v1/completions) or
                                            # "embedding"; default: "embedding" when the id
                                            # contains "embed", else "chat"

Rules:
- Every key is checked: a misspelled key, a wrong type or a bad value stops start-up with the
  file and the field named. Provider names use letters, digits, `_`, `-` and `.`; `mock` is
  reserved for the built-in mock provider.
- `base_url` must start with http:// or https://; a trailing `/` is dropped. `api_key_env`
  names an environment variable; unset or empty means no credential.
- A model listed under `prices` but not in `models` is served too. A `prices` entry with
  any `*_per_mtok` key replaces the whole default price (tiers included); one with only
  `free`/`kind` keeps the default price.
- Default prices come from the snapshot bundled with the installed `genai-prices` package,
  never fetched. `prices_from` (default: the provider name) is matched the way genai-prices
  matches provider ids (exact id, then its aliases: "xai" -> x-ai). Model ids are matched
  with genai-prices' own model matching, so dated ids ("gpt-4o-mini-2024-07-18") find
  their price.
- Converted from genai-prices: `input_mtok`, `output_mtok` and `cache_read_mtok` (default:
  the input price). A model without an input price, or a chat model without an output price,
  has no known price (and `"*"` leaves it out). Other units (cache writes, web searches,
  audio, per-request fees) and request-dependent variants (service tiers, batch) are not
  charged. Prices that change on a start date use the price current at start-up; prices that
  change with the time of day (DeepSeek's off-peak discounts) use the highest of them.
- genai-prices does not mark embedding models: a model is an embedding model when its id
  contains "embed" (any case) unless `kind` says otherwise.
- Prices are converted to integer nano-USD per million tokens exactly; a genai-prices price
  finer than 1 nano-USD per million tokens is rounded up. File prices may have at most 9
  decimals.
- Tiered prices follow genai-prices ("cliff" pricing): a tier applies to every token of a
  request whose prompt tokens (cached ones included) are strictly greater than the tier's
  threshold.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from genai_prices import data_snapshot
from genai_prices import types as gp

from spendgate.config.catalog_types import (
    KINDS,
    MOCK,
    NANO_PER_USD,
    Kind,
    Model,
    Price,
    PriceTier,
    Provider,
)
from spendgate.config.errors import ConfigError
from spendgate.config.prices import _to_nano, convert

ENV_NAME = "SPENDGATE_PROVIDERS_FILE"
MAX_PRICE_NANO = 1_000_000 * NANO_PER_USD  # $1,000,000 per million tokens

_PROVIDER_KEYS = frozenset(
    {"base_url", "api_key", "api_key_env", "models", "stream_usage", "prices_from", "prices"}
)
_PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")
_PRICE_KEYS = frozenset({*_PRICE_FIELDS, "free", "kind"})
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_MAX_DECIMAL_CHARS = 40


@dataclass(frozen=True, slots=True)
class _Override:
    price: Price | None
    free: bool | None
    kind: Kind | None


def _default_kind(model_id: str) -> Kind:
    return "embedding" if "embed" in model_id.lower() else "chat"


def read_providers_file(
    file: Path, environ: Mapping[str, str], now: datetime
) -> list[tuple[Provider, list[Model]]]:
    """Each provider of the file, with the models it serves, in file order. `now` picks
    genai-prices' dated prices; `environ` resolves `api_key_env`."""
    return _Loader(file, environ, now).load()


class _Loader:
    def __init__(self, file: Path, environ: Mapping[str, str], now: datetime) -> None:
        self.file = file
        self.environ = environ
        self.now = now
        self.snapshot = data_snapshot.get_snapshot()  # the bundled data; nothing is fetched

    def fail(self, where: str, what: str) -> ConfigError:
        return ConfigError(ENV_NAME, f"{self.file}: {where}: {what}")

    def load(self) -> list[tuple[Provider, list[Model]]]:
        try:
            with self.file.open("rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(ENV_NAME, f"{self.file}: cannot read: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(ENV_NAME, f"{self.file}: invalid TOML: {exc}") from exc
        self.check_keys(raw, "", frozenset({"providers"}))
        tables = raw.get("providers")
        if not isinstance(tables, dict) or not tables:
            raise self.fail("providers", "no providers; add a [providers.<name>] table")
        return [self.provider(name, table) for name, table in tables.items()]

    def check_keys(self, table: Mapping[str, Any], where: str, allowed: frozenset[str]) -> None:
        for key in table:
            if key not in allowed:
                expected = ", ".join(sorted(allowed))
                field = f"{where}.{key}" if where else key
                raise self.fail(field, f"unknown key (expected one of: {expected})")

    def provider(self, name: str, table: Any) -> tuple[Provider, list[Model]]:
        where = f"providers.{name}"
        if name == MOCK:
            raise self.fail(where, "the name 'mock' is reserved for the built-in mock provider")
        if not _PROVIDER_NAME.fullmatch(name):
            raise self.fail(where, "provider names use only letters, digits, '_', '-' and '.'")
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table")
        self.check_keys(table, where, _PROVIDER_KEYS)
        base_url = self.base_url(table.get("base_url"), f"{where}.base_url")
        api_key = self.api_key(table, where)
        stream_usage = table.get("stream_usage", True)
        if not isinstance(stream_usage, bool):
            raise self.fail(f"{where}.stream_usage", "must be true or false")
        overrides = self.overrides(table.get("prices"), where)
        source = self.price_source(table.get("prices_from"), name, where)
        defaults = self.listed_models(table.get("models"), where, source, overrides)
        models = [
            self.model(name, model_id, defaults.get(model_id), overrides.get(model_id), where)
            for model_id in [*defaults, *(m for m in overrides if m not in defaults)]
        ]
        provider = Provider(
            name=name,
            base_url=base_url,
            api_key=api_key,
            stream_usage=stream_usage,
            models=tuple(model.id for model in models),
        )
        return provider, models

    def base_url(self, value: Any, where: str) -> str:
        if value is None:
            raise self.fail(where, 'missing; e.g. base_url = "https://api.openai.com/v1"')
        if not isinstance(value, str):
            raise self.fail(where, "must be a string")
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            raise self.fail(where, f"is not a valid URL: {exc}") from exc
        if not value.lower().startswith(("http://", "https://")) or not parts.hostname:
            raise self.fail(where, f"must be an http:// or https:// URL, not {value!r}")
        if parts.query or parts.fragment:
            raise self.fail(where, "must not have a query or fragment")
        return value.rstrip("/")

    def api_key(self, table: Mapping[str, Any], where: str) -> str | None:
        if "api_key" in table and "api_key_env" in table:
            raise self.fail(f"{where}.api_key", "set api_key or api_key_env, not both")
        for key in ("api_key", "api_key_env"):
            value = table.get(key)
            if key in table and (not isinstance(value, str) or not value):
                raise self.fail(f"{where}.{key}", "must be a non-empty string")
        if "api_key_env" in table:
            return self.environ.get(table["api_key_env"]) or None
        api_key: str | None = table.get("api_key")
        return api_key

    def price_source(self, value: Any, name: str, where: str) -> gp.Provider | None:
        if value is None:
            return data_snapshot.find_provider_by_id(self.snapshot.providers, name)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where}.prices_from", "must be a genai-prices provider id")
        found = data_snapshot.find_provider_by_id(self.snapshot.providers, value)
        if found is None:
            raise self.fail(f"{where}.prices_from", f"genai-prices knows no provider {value!r}")
        return found

    def listed_models(
        self,
        value: Any,
        where: str,
        source: gp.Provider | None,
        overrides: Mapping[str, _Override],
    ) -> dict[str, Price | None]:
        """The `models` ids, each with its genai-prices price when it has one."""
        where = f"{where}.models"
        if value is None:
            if overrides:
                return {}
            raise self.fail(where, 'missing; list the model ids, or "*"')
        if value == "*":
            if source is None:
                raise self.fail(where, '"*" needs a genai-prices provider; set prices_from')
            found: dict[str, Price | None] = {}
            for info in source.models:
                kind = _kind(overrides.get(info.id), info.id)
                if (price := convert(info, kind, self.now)) is not None:
                    found.setdefault(info.id, price)
            if not found and not overrides:
                raise self.fail(where, f'"*": genai-prices prices no model of {source.id!r}')
            return found
        if not isinstance(value, list):
            raise self.fail(where, 'must be a list of model ids or "*"')
        if not value:
            raise self.fail(where, 'must not be empty; list the model ids, or "*"')
        listed: dict[str, Price | None] = {}
        for model_id in value:
            if not isinstance(model_id, str) or not model_id.strip():
                raise self.fail(where, "model ids must be non-empty strings")
            if model_id in listed:
                raise self.fail(where, f"{model_id!r} is listed twice")
            override = overrides.get(model_id)
            has_own_price = override is not None and override.price is not None
            listed[model_id] = None if has_own_price else self.lookup(source, model_id, override)
        return listed

    def lookup(
        self, source: gp.Provider | None, model_id: str, override: _Override | None
    ) -> Price | None:
        if source is None:
            return None
        info = source.find_model(model_id, all_providers=self.snapshot.providers)
        return None if info is None else convert(info, _kind(override, model_id), self.now)

    def model(
        self,
        provider: str,
        model_id: str,
        default: Price | None,
        override: _Override | None,
        where: str,
    ) -> Model:
        price = default if override is None or override.price is None else override.price
        if price is None:
            raise self.fail(
                f"{where}.models",
                f'no price known for {model_id!r}; add [{where}.prices."{model_id}"]',
            )
        free = override.free if override is not None and override.free is not None else None
        return Model(
            provider=provider,
            id=model_id,
            price=price,
            free=price.is_free if free is None else free,
            kind=_kind(override, model_id),
        )

    def overrides(self, value: Any, where: str) -> dict[str, _Override]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{where}.prices", 'must hold [prices."<model>"] tables')
        return {model_id: self.override(model_id, t, where) for model_id, t in value.items()}

    def override(self, model_id: str, table: Any, where: str) -> _Override:
        where = f'{where}.prices."{model_id}"'
        if not model_id.strip():
            raise self.fail(where, "the model id must not be empty")
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table")
        self.check_keys(table, where, _PRICE_KEYS)
        kind = table.get("kind")
        if kind is not None and kind not in KINDS:
            raise self.fail(f"{where}.kind", 'must be "chat" or "embedding"')
        free = table.get("free")
        if free is not None and not isinstance(free, bool):
            raise self.fail(f"{where}.free", "must be true or false")
        price = None
        if any(key in table for key in _PRICE_FIELDS):
            if "input_per_mtok" not in table:
                raise self.fail(f"{where}.input_per_mtok", "missing")
            if "output_per_mtok" not in table and (kind or _default_kind(model_id)) == "chat":
                raise self.fail(f"{where}.output_per_mtok", "missing (only embeddings may omit it)")
            per_mtok = {
                key: self.usd(table[key], f"{where}.{key}") for key in _PRICE_FIELDS if key in table
            }
            input_price = per_mtok["input_per_mtok"]
            price = Price(
                PriceTier(
                    input=input_price,
                    output=per_mtok.get("output_per_mtok", 0),
                    cached_input=per_mtok.get("cached_input_per_mtok", input_price),
                )
            )
        return _Override(price, free, kind)

    def usd(self, value: Any, where: str) -> int:
        """A price in USD per million tokens, as a decimal string -> nano-USD."""
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.fail(where, 'must be a decimal string in USD, like "0.15"')
        text = str(value).strip()
        if text.startswith("-"):
            raise self.fail(where, "must not be negative")
        if not _DECIMAL.fullmatch(text):
            raise self.fail(where, f'must be a decimal string in USD, like "0.15", not {value!r}')
        if len(text) > _MAX_DECIMAL_CHARS:
            raise self.fail(where, "is too large")
        nano, exact = _to_nano(Decimal(text))
        if not exact:
            raise self.fail(where, "has more than 9 decimals")
        if nano > MAX_PRICE_NANO:
            raise self.fail(where, "is too large (at most 1000000 USD per million tokens)")
        return nano


def _kind(override: _Override | None, model_id: str) -> Kind:
    if override is not None and override.kind is not None:
        return override.kind
    return _default_kind(model_id)
