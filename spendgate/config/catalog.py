"""The model catalog: providers, the models they serve, and their prices.

The providers file's format, and how default prices come from genai-prices, are described
in `spendgate.config.providers_file`. The value types live in `catalog_types` (a leaf, so
that the parser can build them without importing this module) and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

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
from spendgate.config.providers_file import read_providers_file

__all__ = [
    "KINDS",
    "MOCK",
    "NANO_PER_USD",
    "Catalog",
    "Kind",
    "Model",
    "Price",
    "PriceTier",
    "Provider",
    "load_catalog",
]


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
        for provider, served in read_providers_file(
            providers_file, environ, now or datetime.now(UTC)
        ):
            providers.append(provider)
            models.extend(served)
    if mock:
        provider, served = _mock_models()
        providers.append(provider)
        models.extend(served)
    return Catalog(providers, models)
