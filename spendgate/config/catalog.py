"""The model catalog: providers, the models they serve, and their prices.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

from genai_prices import data_snapshot
from genai_prices import types as gp

from spendgate.config.errors import ConfigError

ENV_NAME = "SPENDGATE_PROVIDERS_FILE"
MOCK = "mock"
NANO_PER_USD = 1_000_000_000
MAX_PRICE_NANO = 1_000_000 * NANO_PER_USD  # $1,000,000 per million tokens

Kind: TypeAlias = Literal["chat", "embedding"]
KINDS: tuple[Kind, ...] = ("chat", "embedding")


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Prices in integer nano-USD per 1,000,000 tokens ($0.15/M = 150_000_000)."""

    input: int
    output: int
    cached_input: int

    def __post_init__(self) -> None:
        if min(self.input, self.output, self.cached_input) < 0:
            raise ValueError("prices must not be negative")


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price: the base tier, then tiers by prompt size.

    `tiers` holds (threshold, tier) pairs in strictly ascending threshold order; a tier applies
    when a request's prompt tokens are strictly greater than its threshold (genai-prices'
    semantics), and the greatest such threshold wins.
    """

    base: PriceTier
    tiers: tuple[tuple[int, PriceTier], ...] = ()

    def __post_init__(self) -> None:
        thresholds = [threshold for threshold, _ in self.tiers]
        if any(t < 0 for t in thresholds) or thresholds != sorted(set(thresholds)):
            raise ValueError("tier thresholds must be non-negative and strictly ascending")

    def for_prompt_tokens(self, prompt_tokens: int) -> PriceTier:
        """The tier a request with this many prompt tokens is charged at (settle)."""
        for threshold, tier in reversed(self.tiers):
            if prompt_tokens > threshold:
                return tier
        return self.base

    def highest(self) -> PriceTier:
        """The most expensive tier (estimates). When no one tier is highest in all three
        prices, the price-by-price maximum: an upper bound either way."""
        if not self.tiers:
            return self.base
        tiers = (self.base, *(tier for _, tier in self.tiers))
        return PriceTier(
            max(t.input for t in tiers),
            max(t.output for t in tiers),
            max(t.cached_input for t in tiers),
        )

    @property
    def is_free(self) -> bool:
        tiers = (self.base, *(tier for _, tier in self.tiers))
        return all(t.input == t.output == t.cached_input == 0 for t in tiers)


@dataclass(frozen=True, slots=True)
class Model:
    provider: str
    id: str  # the id sent upstream
    price: Price
    free: bool  # the IAM pricing tier: "free" or "paid"
    kind: Kind  # "chat" also serves /v1/completions

    @property
    def full_id(self) -> str:
        return f"{self.provider}/{self.id}"


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    base_url: str | None  # None only for the built-in mock
    api_key: str | None  # None: no credential (BYOK may still supply one)
    stream_usage: bool  # honours stream_options.include_usage
    models: tuple[str, ...]  # model ids in file order


class Catalog:
    """Every model spendgate routes to, found by the id a request names.

    `resolve` takes "provider/model" when the part before the first "/" is a provider serving
    that model; otherwise the whole string is a bare model id (ids may contain "/"), served by
    the first provider in file order that has it (the mock provider comes last).
    """

    __slots__ = ("_by_bare", "_by_full", "_models", "providers")

    def __init__(self, providers: Sequence[Provider], models: Iterable[Model]) -> None:
        by_full = {model.full_id: model for model in models}
        ordered = [by_full.get(f"{p.name}/{model_id}") for p in providers for model_id in p.models]
        if None in ordered or len(ordered) != len(by_full):
            raise ValueError("the models must be exactly those the providers list")
        self.providers: Mapping[str, Provider] = MappingProxyType({p.name: p for p in providers})
        self._models = tuple(m for m in ordered if m is not None)
        self._by_full = by_full
        self._by_bare: dict[str, Model] = {}
        for model in self._models:
            self._by_bare.setdefault(model.id, model)

    def resolve(self, requested: str) -> Model | None:
        return self._by_full.get(requested) or self._by_bare.get(requested)

    def models(self) -> list[Model]:
        """Every model, in provider order, then model order."""
        return list(self._models)


def _mock_models() -> tuple[Provider, list[Model]]:
    usd = NANO_PER_USD
    echo, free, embed = (
        PriceTier(usd, 2 * usd, usd),
        PriceTier(0, 0, 0),
        PriceTier(usd // 10, 0, usd // 10),
    )
    models = [
        Model(MOCK, "echo-1", Price(echo), free=False, kind="chat"),
        Model(MOCK, "free-1", Price(free), free=True, kind="chat"),
        Model(MOCK, "embed-1", Price(embed), free=False, kind="embedding"),
    ]
    provider = Provider(MOCK, None, None, True, tuple(m.id for m in models))
    return provider, models


def load_catalog(
    providers_file: Path | None,
    *,
    mock: bool,
    environ: Mapping[str, str],
    now: datetime | None = None,
) -> Catalog:
    """The catalog from the providers file (if any) and the built-in mock provider (if on).

    `now` picks genai-prices' dated prices (default: the current time).
    """
    providers: list[Provider] = []
    models: list[Model] = []
    if providers_file is not None:
        loader = _Loader(providers_file, environ, now or datetime.now(UTC))
        for provider, served in loader.load():
            providers.append(provider)
            models.extend(served)
    if mock:
        provider, served = _mock_models()
        providers.append(provider)
        models.extend(served)
    return Catalog(providers, models)


# --- the providers file ---------------------------------------------------------------------

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


def _to_nano(usd: Decimal) -> tuple[int, bool]:
    """USD -> (nano-USD rounded up, whether that was exact), in exact integer arithmetic."""
    _, digits, exponent = usd.as_tuple()
    assert isinstance(exponent, int)  # callers pass finite values
    units = int("".join(map(str, digits)) or "0")
    exponent += 9
    if exponent >= 0:
        return units * 10**exponent, True
    scale = 10**-exponent
    return -(-units // scale), units % scale == 0


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
                if (price := self.convert(info, kind)) is not None:
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
        return None if info is None else self.convert(info, _kind(override, model_id))

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

    # --- genai-prices -> Price ---

    def convert(self, info: gp.ModelInfo, kind: Kind) -> Price | None:
        prices = [_from_model_price(p, kind) for p in self.current_prices(info)]
        if any(p is None for p in prices):
            return None
        return _max_price([p for p in prices if p is not None])

    def current_prices(self, info: gp.ModelInfo) -> list[gp.ModelPrice]:
        """The price current at start-up, plus any later time-of-day prices that can
        replace it during the day (genai-prices tries conditional prices last to first)."""
        if isinstance(info.prices, gp.ModelPrice):
            return [info.prices]
        by_time_of_day: list[gp.ModelPrice] = []
        for conditional in reversed(info.prices):
            constraint = conditional.constraint
            if isinstance(constraint, gp.TimeOfDateConstraint):
                by_time_of_day.append(conditional.prices)
            elif constraint is None or constraint.active(self.now):
                return [conditional.prices, *by_time_of_day]
        return [info.prices[0].prices, *by_time_of_day]


def _kind(override: _Override | None, model_id: str) -> Kind:
    if override is not None and override.kind is not None:
        return override.kind
    return _default_kind(model_id)


_GenaiValue: TypeAlias = "Decimal | gp.TieredPrices"


def _from_model_price(price: gp.ModelPrice, kind: Kind) -> Price | None:
    input_price = price.input_mtok
    output_price = price.output_mtok
    if input_price is None or (output_price is None and kind == "chat"):
        return None
    cached = price.cache_read_mtok
    fields: tuple[_GenaiValue, ...] = (
        input_price,
        Decimal(0) if output_price is None else output_price,
        input_price if cached is None else cached,
    )
    thresholds = sorted(
        {tier.start for f in fields if isinstance(f, gp.TieredPrices) for tier in f.tiers}
    )
    base = PriceTier(*(_nano_at(f, None) for f in fields))
    tiers = tuple((t, PriceTier(*(_nano_at(f, t) for f in fields))) for t in thresholds)
    return Price(base, tiers)


def _nano_at(value: _GenaiValue, threshold: int | None) -> int:
    """The price of one field for prompts just above `threshold` (None: the base)."""
    usd = value
    if isinstance(value, gp.TieredPrices):
        usd = value.base
        for tier in value.tiers:  # ascending
            if threshold is not None and tier.start <= threshold:
                usd = tier.price
    assert isinstance(usd, Decimal) and usd.is_finite() and usd >= 0
    return _to_nano(usd)[0]


def _max_price(prices: Sequence[Price]) -> Price:
    """The price-by-price maximum of several prices, tiers included."""
    if len(prices) == 1:
        return prices[0]
    thresholds = sorted({t for price in prices for t, _ in price.tiers})

    def highest(tiers: Sequence[PriceTier]) -> PriceTier:
        return PriceTier(
            max(t.input for t in tiers),
            max(t.output for t in tiers),
            max(t.cached_input for t in tiers),
        )

    base = highest([p.base for p in prices])
    tiers = tuple((t, highest([p.for_prompt_tokens(t + 1) for p in prices])) for t in thresholds)
    return Price(base, tiers)
