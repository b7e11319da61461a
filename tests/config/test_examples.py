"""examples/providers.toml loads, serves what it lists, and prices every model."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spendgate.config.catalog import load_catalog

EXAMPLE = Path(__file__).parents[2] / "examples" / "providers.toml"

# name -> (base_url, the environment variable of its API key; None: no credential)
PROVIDERS: dict[str, tuple[str, str | None]] = {
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "groq": ("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mistral": ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "deepseek": ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "vllm": ("http://127.0.0.1:8000/v1", None),
}
EMBEDDINGS = ["openai/text-embedding-3-small", "mistral/mistral-embed"]
ALL_KEYS = {env: f"fake-{env.lower()}" for _, env in PROVIDERS.values() if env is not None}
ENVIRONS = [pytest.param({}, id="no-keys"), pytest.param(ALL_KEYS, id="all-keys")]


def _tables() -> dict[str, dict[str, Any]]:
    with EXAMPLE.open("rb") as f:
        providers: dict[str, dict[str, Any]] = tomllib.load(f)["providers"]
    return providers


def _nano(usd: str) -> int:
    """USD per million tokens -> integer nano-USD per million tokens ("0.05" -> 50_000_000)."""
    nano = Decimal(usd) * 10**9
    assert nano == nano.to_integral_value(), f"{usd} is finer than 1 nano-USD"
    return int(nano)


def test_nano() -> None:
    assert _nano("0.05") == 50_000_000
    assert _nano("2") == 2_000_000_000


@pytest.mark.parametrize("environ", ENVIRONS)
def test_example_loads_every_provider_with_its_credential(environ: dict[str, str]) -> None:
    catalog = load_catalog(EXAMPLE, mock=False, environ=environ)
    tables = _tables()
    assert set(catalog.providers) == set(PROVIDERS)
    for name, (base_url, key_env) in PROVIDERS.items():
        provider = catalog.providers[name]
        assert provider.base_url == base_url
        assert tables[name].get("api_key_env") == key_env
        if key_env is None:
            assert provider.api_key == tables[name].get("api_key")
        else:
            assert provider.api_key == environ.get(key_env)
            assert (provider.api_key is None) == (not environ)


@pytest.mark.parametrize("environ", ENVIRONS)
def test_every_listed_model_resolves_with_a_price(environ: dict[str, str]) -> None:
    catalog = load_catalog(EXAMPLE, mock=False, environ=environ)
    for name, table in _tables().items():
        prices: dict[str, dict[str, Any]] = table.get("prices", {})
        listed = table.get("models", [])
        if listed == "*":  # every model genai-prices prices: whatever the catalog holds
            listed = list(catalog.providers[name].models)
            assert len(listed) > 10, name
        else:
            assert isinstance(listed, list)
            listed = [*listed, *(m for m in prices if m not in listed)]
            assert catalog.providers[name].models == tuple(listed)
        for model_id in listed:
            model = catalog.resolve(f"{name}/{model_id}")
            assert model is not None, f"{name}/{model_id}"
            assert (model.provider, model.id) == (name, model_id)
            if prices.get(model_id, {}).get("free") is True:
                assert model.free, model.full_id
                continue
            assert not model.free, model.full_id
            assert not model.price.is_free, model.full_id
            assert model.price.base.input > 0, model.full_id
            if model.kind == "chat":
                assert model.price.base.output > 0, model.full_id


def test_openrouter_serves_well_known_models() -> None:
    catalog = load_catalog(EXAMPLE, mock=False, environ={})
    for model_id in ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4"):
        model = catalog.resolve(f"openrouter/{model_id}")
        assert model is not None and model.provider == "openrouter", model_id
    # A bare "openai/..." id is the openai provider's model, not OpenRouter's.
    direct = catalog.resolve("openai/gpt-4o-mini")
    assert direct is not None and direct.provider == "openai"


@pytest.mark.parametrize("full_id", EMBEDDINGS)
def test_embedding_models(full_id: str) -> None:
    model = load_catalog(EXAMPLE, mock=False, environ={}).resolve(full_id)
    assert model is not None and model.full_id == full_id
    assert model.kind == "embedding"


def test_vllm_model_has_exactly_the_files_price() -> None:
    catalog = load_catalog(EXAMPLE, mock=False, environ={})
    prices: dict[str, dict[str, Any]] = _tables()["vllm"]["prices"]
    assert len(prices) == 1
    [(model_id, price)] = prices.items()
    model = catalog.resolve(f"vllm/{model_id}")
    assert model is not None and model.provider == "vllm"
    assert model.kind == "chat" and not model.free
    input_price = _nano(price["input_per_mtok"])
    expected = (
        input_price,
        _nano(price["output_per_mtok"]),
        _nano(price.get("cached_input_per_mtok", price["input_per_mtok"])),
    )
    base = model.price.base
    assert (base.input, base.output, base.cached_input) == expected
    assert model.price.tiers == ()
