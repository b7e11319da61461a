from __future__ import annotations

import math
import socket
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import genai_prices
import pytest
from genai_prices import data_snapshot
from genai_prices import types as gp

from spendgate.config import ConfigError
from spendgate.config.catalog import (
    Catalog,
    Model,
    Price,
    PriceTier,
    Provider,
    load_catalog,
)
from spendgate.config.prices import _to_nano

FIXTURES = Path(__file__).parent / "fixtures" / "providers"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SNAPSHOT = data_snapshot.get_snapshot()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _load(tmp_path: Path, text: str, *, environ: dict[str, str] | None = None) -> Catalog:
    return load_catalog(_write(tmp_path, text), mock=True, environ=environ or {}, now=NOW)


def _genai_model(provider_id: str, model_id: str) -> gp.ModelInfo:
    provider = data_snapshot.find_provider_by_id(SNAPSHOT.providers, provider_id)
    assert provider is not None
    info = provider.find_model(model_id)
    assert info is not None
    return info


def _nano(usd: Decimal) -> int:
    nano = usd * 10**9
    assert nano == int(nano), "this test expects an exact price"
    return int(nano)


LOCAL = """
[providers.local]
base_url = "http://127.0.0.1:8000/v1/"
api_key = "sk-local"
models = ["llama-3-8b", "meta-llama/llama-3-8b", "bge-small"]
stream_usage = false
[providers.local.prices."llama-3-8b"]
input_per_mtok = "0.05"
output_per_mtok = "0.08"
cached_input_per_mtok = "0.025"
[providers.local.prices."meta-llama/llama-3-8b"]
input_per_mtok = "1"
output_per_mtok = "2.000000001"
[providers.local.prices."bge-small"]
input_per_mtok = "0.01"
kind = "embedding"
[providers.local.prices."only-in-prices"]
input_per_mtok = "0"
output_per_mtok = "0"
"""


# --- the mock provider ---


def test_mock_models_and_prices_are_exact() -> None:
    catalog = load_catalog(None, mock=True, environ={})
    assert list(catalog.providers) == ["mock"]
    assert catalog.providers["mock"] == Provider(
        "mock", None, None, True, ("echo-1", "free-1", "embed-1")
    )
    assert catalog.models() == [
        Model(
            "mock",
            "echo-1",
            Price(PriceTier(input=1_000_000_000, output=2_000_000_000, cached_input=1_000_000_000)),
            free=False,
            kind="chat",
        ),
        Model("mock", "free-1", Price(PriceTier(0, 0, 0)), free=True, kind="chat"),
        Model(
            "mock",
            "embed-1",
            Price(PriceTier(input=100_000_000, output=0, cached_input=100_000_000)),
            free=False,
            kind="embedding",
        ),
    ]


def test_mock_off_and_no_file_is_an_empty_catalog() -> None:
    catalog = load_catalog(None, mock=False, environ={})
    assert dict(catalog.providers) == {}
    assert catalog.models() == []
    assert catalog.resolve("mock/echo-1") is None
    assert catalog.resolve("echo-1") is None


def test_the_mock_provider_comes_after_the_file_providers(tmp_path: Path) -> None:
    catalog = _load(tmp_path, LOCAL)
    assert list(catalog.providers) == ["local", "mock"]
    assert [m.full_id for m in catalog.models()] == [
        "local/llama-3-8b",
        "local/meta-llama/llama-3-8b",
        "local/bge-small",
        "local/only-in-prices",
        "mock/echo-1",
        "mock/free-1",
        "mock/embed-1",
    ]
    without_mock = load_catalog(_write(tmp_path, LOCAL), mock=False, environ={})
    assert list(without_mock.providers) == ["local"]


# --- resolve ---


def test_resolve_provider_prefixed_and_bare_ids(tmp_path: Path) -> None:
    catalog = _load(tmp_path, LOCAL)
    echo = catalog.resolve("mock/echo-1")
    assert echo is not None and echo.full_id == "mock/echo-1"
    assert catalog.resolve("echo-1") is echo
    slashed = catalog.resolve("meta-llama/llama-3-8b")
    assert slashed is not None
    assert (slashed.provider, slashed.id) == ("local", "meta-llama/llama-3-8b")
    assert catalog.resolve("local/meta-llama/llama-3-8b") is slashed


@pytest.mark.parametrize(
    "requested",
    ["", "gpt-4o", "mock/", "/echo-1", "mock/echo-2", "local/echo-1", "MOCK/echo-1", "echo-1 "],
)
def test_resolve_unknown_is_none(tmp_path: Path, requested: str) -> None:
    assert _load(tmp_path, LOCAL).resolve(requested) is None


def test_a_bare_id_goes_to_the_first_provider_that_serves_it(tmp_path: Path) -> None:
    text = """
[providers.first]
base_url = "http://127.0.0.1:8001/v1"
models = ["shared", "echo-1"]
[providers.first.prices.shared]
input_per_mtok = "1"
output_per_mtok = "1"
[providers.first.prices."echo-1"]
input_per_mtok = "5"
output_per_mtok = "5"

[providers.second]
base_url = "http://127.0.0.1:8002/v1"
models = ["shared"]
[providers.second.prices.shared]
input_per_mtok = "2"
output_per_mtok = "2"
"""
    catalog = _load(tmp_path, text)
    shared = catalog.resolve("shared")
    assert shared is not None and shared.provider == "first"
    second = catalog.resolve("second/shared")
    assert second is not None and second.price.base.input == 2_000_000_000
    # A file provider also wins over the mock for a bare id.
    echo = catalog.resolve("echo-1")
    assert echo is not None and echo.provider == "first"
    mock_echo = catalog.resolve("mock/echo-1")
    assert mock_echo is not None and mock_echo.provider == "mock"


def test_a_prefix_that_is_a_provider_not_serving_the_model_falls_back_to_a_bare_id(
    tmp_path: Path,
) -> None:
    text = """
[providers.openai]
base_url = "https://api.openai.com/v1"
models = ["gpt-4o-mini"]

[providers.router]
base_url = "https://router.example/api/v1"
models = ["openai/gpt-4o"]
[providers.router.prices."openai/gpt-4o"]
input_per_mtok = "2.5"
output_per_mtok = "10"
"""
    catalog = _load(tmp_path, text)
    routed = catalog.resolve("openai/gpt-4o")
    assert routed is not None and routed.full_id == "router/openai/gpt-4o"
    direct = catalog.resolve("openai/gpt-4o-mini")
    assert direct is not None and direct.full_id == "openai/gpt-4o-mini"


# --- providers ---


def test_provider_fields(tmp_path: Path) -> None:
    catalog = _load(tmp_path, LOCAL)
    assert catalog.providers["local"] == Provider(
        name="local",
        base_url="http://127.0.0.1:8000/v1",
        api_key="sk-local",
        stream_usage=False,
        models=("llama-3-8b", "meta-llama/llama-3-8b", "bge-small", "only-in-prices"),
    )


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"OPENAI_API_KEY": "sk-from-env"}, "sk-from-env"),
        ({}, None),
        ({"OPENAI_API_KEY": ""}, None),
    ],
)
def test_api_key_env_is_read_from_the_given_environ(
    tmp_path: Path, environ: dict[str, str], expected: str | None
) -> None:
    text = """
[providers.openai]
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
models = ["gpt-4o-mini"]
"""
    provider = _load(tmp_path, text, environ=environ).providers["openai"]
    assert provider.api_key == expected
    assert provider.stream_usage is True


def test_no_credential_is_none(tmp_path: Path) -> None:
    text = '[providers.openai]\nbase_url = "https://api.openai.com/v1"\nmodels = ["gpt-4o"]\n'
    assert _load(tmp_path, text).providers["openai"].api_key is None


# --- prices ---


def test_file_prices_are_exact_nano(tmp_path: Path) -> None:
    catalog = _load(tmp_path, LOCAL)
    llama = catalog.resolve("local/llama-3-8b")
    assert llama is not None
    assert llama.price == Price(PriceTier(50_000_000, 80_000_000, 25_000_000))
    assert (llama.kind, llama.free) == ("chat", False)
    nine_decimals = catalog.resolve("local/meta-llama/llama-3-8b")
    assert nine_decimals is not None
    assert nine_decimals.price == Price(PriceTier(1_000_000_000, 2_000_000_001, 1_000_000_000))
    bge = catalog.resolve("bge-small")
    assert bge is not None
    assert bge.price == Price(PriceTier(10_000_000, 0, 10_000_000))
    assert (bge.kind, bge.free) == ("embedding", False)


def test_kind_and_free_labels(tmp_path: Path) -> None:
    text = """
[providers.local]
base_url = "http://127.0.0.1:8000/v1"
models = ["bge-small", "nomic-Embed-text", "zero-priced", "gift"]
[providers.local.prices."bge-small"]
input_per_mtok = "0.01"
kind = "embedding"
[providers.local.prices."nomic-Embed-text"]
input_per_mtok = "0.02"
[providers.local.prices."zero-priced"]
input_per_mtok = "0"
output_per_mtok = "0"
free = false
[providers.local.prices.gift]
input_per_mtok = "3"
output_per_mtok = "4"
free = true
[providers.local.prices."embed-but-chat"]
input_per_mtok = "1"
output_per_mtok = "1"
kind = "chat"
"""
    catalog = _load(tmp_path, text)
    labels = {m.id: (m.kind, m.free) for m in catalog.models() if m.provider == "local"}
    assert labels == {
        "bge-small": ("embedding", False),
        "nomic-Embed-text": ("embedding", False),
        "zero-priced": ("chat", False),
        "gift": ("chat", True),
        "embed-but-chat": ("chat", False),
    }
    zero = catalog.resolve("zero-priced")
    assert zero is not None and zero.price.is_free


def test_only_in_prices_is_free_by_default(tmp_path: Path) -> None:
    model = _load(tmp_path, LOCAL).resolve("only-in-prices")
    assert model is not None and model.free is True and model.price.is_free


def test_default_prices_come_from_the_genai_prices_snapshot(tmp_path: Path) -> None:
    text = """
[providers.openai]
base_url = "https://api.openai.com/v1"
models = ["gpt-4o-mini", "text-embedding-3-small"]
"""
    catalog = _load(tmp_path, text)
    model = catalog.resolve("openai/gpt-4o-mini")
    assert model is not None
    expected = _genai_model("openai", "gpt-4o-mini").prices
    assert isinstance(expected, gp.ModelPrice)
    assert isinstance(expected.input_mtok, Decimal)
    assert isinstance(expected.output_mtok, Decimal)
    assert isinstance(expected.cache_read_mtok, Decimal)
    assert model.price == Price(
        PriceTier(
            input=_nano(expected.input_mtok),
            output=_nano(expected.output_mtok),
            cached_input=_nano(expected.cache_read_mtok),
        )
    )
    assert (model.kind, model.free) == ("chat", False)
    embedding = catalog.resolve("text-embedding-3-small")
    assert embedding is not None and embedding.kind == "embedding"
    assert embedding.price.base.output == 0


def test_a_file_price_overrides_genai_prices(tmp_path: Path) -> None:
    text = """
[providers.openai]
base_url = "https://api.openai.com/v1"
models = ["gpt-4o-mini"]
[providers.openai.prices."gpt-4o-mini"]
input_per_mtok = "0.01"
output_per_mtok = "0.02"
"""
    model = _load(tmp_path, text).resolve("gpt-4o-mini")
    assert model is not None
    assert model.price == Price(PriceTier(10_000_000, 20_000_000, 10_000_000))


def test_prices_from_names_the_genai_prices_provider(tmp_path: Path) -> None:
    text = """
[providers.gateway]
base_url = "https://gateway.example/v1"
prices_from = "openai"
models = ["gpt-4o-mini"]
[providers.gateway.prices."gpt-4o-mini"]
free = true
"""
    model = _load(tmp_path, text).resolve("gateway/gpt-4o-mini")
    assert model is not None
    expected = _genai_model("openai", "gpt-4o-mini").prices
    assert isinstance(expected, gp.ModelPrice) and isinstance(expected.input_mtok, Decimal)
    assert model.price.base.input == _nano(expected.input_mtok) > 0
    assert model.free is True  # a label only: the genai-prices price stays


def test_star_expands_to_every_priced_genai_model(tmp_path: Path) -> None:
    text = """
[providers.openai]
base_url = "https://api.openai.com/v1"
models = "*"
[providers.openai.prices."gpt-4o"]
input_per_mtok = "7"
output_per_mtok = "8"
[providers.openai.prices."my-fine-tune"]
input_per_mtok = "1"
output_per_mtok = "1"
"""
    catalog = _load(tmp_path, text)
    served = catalog.providers["openai"].models
    assert len(served) > 50
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"} <= set(served)
    assert served[-1] == "my-fine-tune"
    assert len(set(served)) == len(served)
    known = {info.id for info in _genai_provider("openai").models}
    assert set(served) - known == {"my-fine-tune"}
    gpt_4o = catalog.resolve("openai/gpt-4o")
    assert gpt_4o is not None and gpt_4o.price == Price(PriceTier(7 * 10**9, 8 * 10**9, 7 * 10**9))
    embedding = catalog.resolve("openai/text-embedding-3-small")
    assert embedding is not None and embedding.kind == "embedding"


def test_prices_never_touch_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the catalog must not open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    text = '[providers.openrouter]\nbase_url = "https://openrouter.ai/api/v1"\nmodels = "*"\n'
    catalog = _load(tmp_path, text)
    assert len(catalog.providers["openrouter"].models) > 100
    assert data_snapshot.get_snapshot().from_auto_update is False


def _genai_provider(provider_id: str) -> gp.Provider:
    provider = data_snapshot.find_provider_by_id(SNAPSHOT.providers, provider_id)
    assert provider is not None
    return provider


def _tiered_model() -> tuple[gp.Provider, gp.ModelInfo]:
    for provider in SNAPSHOT.providers:
        for info in provider.models:
            price = info.prices
            if (
                isinstance(price, gp.ModelPrice)
                and isinstance(price.input_mtok, gp.TieredPrices)
                and isinstance(price.output_mtok, gp.TieredPrices)
                and not info.price_variants
            ):
                return provider, info
    raise AssertionError("the snapshot has no tiered model")


def test_tiers_follow_genai_prices_cliff_semantics(tmp_path: Path) -> None:
    provider, info = _tiered_model()
    text = f"""
[providers.p]
base_url = "https://p.example/v1"
prices_from = "{provider.id}"
models = ["{info.id}"]
"""
    model = _load(tmp_path, text).resolve(f"p/{info.id}")
    assert model is not None and model.price.tiers
    for threshold, _ in model.price.tiers:
        for prompt in (threshold - 1, threshold, threshold + 1):
            usage = genai_prices.Usage(input_tokens=prompt, output_tokens=1000)
            theirs = genai_prices.calc_price(
                usage, info.id, provider_id=provider.id, genai_request_timestamp=NOW
            )
            tier = model.price.for_prompt_tokens(prompt)
            ours = Fraction(prompt * tier.input + 1000 * tier.output, 10**6 * 10**9)
            assert ours == Fraction(theirs.total_price), (prompt, tier)
    highest = model.price.highest()
    assert highest == model.price.tiers[-1][1]
    assert highest.input > model.price.base.input


def _dated_model() -> tuple[gp.Provider, gp.ModelInfo, date]:
    """A model whose price changes on a start date, with no time-of-day price."""
    for provider in SNAPSHOT.providers:
        for info in provider.models:
            prices = info.prices
            if isinstance(prices, list) and len(prices) == 2 and prices[0].constraint is None:
                constraint = prices[1].constraint
                old, new = prices[0].prices.input_mtok, prices[1].prices.input_mtok
                if (
                    isinstance(constraint, gp.StartDateConstraint)
                    and isinstance(old, Decimal)
                    and isinstance(new, Decimal)
                    and old != new
                    and prices[0].prices.output_mtok is not None
                    and prices[1].prices.output_mtok is not None
                ):
                    return provider, info, constraint.start_date
    raise AssertionError("the snapshot has no dated price")


def test_dated_prices_use_the_price_current_at_start_up(tmp_path: Path) -> None:
    provider, info, start = _dated_model()
    assert isinstance(info.prices, list)
    text = f"""
[providers.p]
base_url = "https://p.example/v1"
prices_from = "{provider.id}"
models = ["{info.id}"]
"""
    path = _write(tmp_path, text)
    day_before = datetime.combine(start - timedelta(days=1), datetime.min.time(), UTC)
    on_the_day = datetime.combine(start, datetime.min.time(), UTC)
    for now, expected in ((day_before, info.prices[0]), (on_the_day, info.prices[1])):
        model = load_catalog(path, mock=False, environ={}, now=now).models()[0]
        usd = expected.prices.input_mtok
        assert isinstance(usd, Decimal)
        assert model.price.base.input == math.ceil(usd * 10**9)


def test_time_of_day_prices_charge_the_highest(tmp_path: Path) -> None:
    info = _genai_model("deepseek", "deepseek-chat")
    assert isinstance(info.prices, list)
    inputs = [p.prices.input_mtok for p in info.prices]
    outputs = [p.prices.output_mtok for p in info.prices]
    assert any(isinstance(p.constraint, gp.TimeOfDateConstraint) for p in info.prices)
    text = (
        '[providers.deepseek]\nbase_url = "https://api.deepseek.com"\nmodels = ["deepseek-chat"]\n'
    )
    model = _load(tmp_path, text).models()[0]
    assert model.price.base.input == max(_nano(d) for d in inputs if isinstance(d, Decimal))
    assert model.price.base.output == max(_nano(d) for d in outputs if isinstance(d, Decimal))


def test_genai_prices_finer_than_a_nano_round_up() -> None:
    price = Price(PriceTier(1, 2, 3), tiers=((10, PriceTier(4, 5, 6)),))
    assert price.for_prompt_tokens(10) == PriceTier(1, 2, 3)
    assert price.for_prompt_tokens(11) == PriceTier(4, 5, 6)
    assert _to_nano(Decimal("1.0399999999999998")) == (1_040_000_000, False)
    assert _to_nano(Decimal("0.08333333333333334")) == (83_333_334, False)
    assert _to_nano(Decimal("0.15")) == (150_000_000, True)
    assert _to_nano(Decimal("12")) == (12_000_000_000, True)
    assert _to_nano(Decimal("0.0000000010")) == (1, True)


def test_price_highest_is_an_upper_bound_of_every_tier() -> None:
    price = Price(PriceTier(5, 1, 1), tiers=((100, PriceTier(1, 9, 2)), (200, PriceTier(2, 3, 7))))
    assert price.highest() == PriceTier(5, 9, 7)
    assert not price.is_free
    assert Price(PriceTier(0, 0, 0), tiers=((1, PriceTier(0, 0, 0)),)).is_free
    assert not Price(PriceTier(0, 0, 0), tiers=((1, PriceTier(0, 1, 0)),)).is_free


@pytest.mark.parametrize(
    "tiers", [((5, PriceTier(1, 1, 1)), (5, PriceTier(2, 2, 2))), ((-1, PriceTier(1, 1, 1)),)]
)
def test_price_rejects_unordered_tiers(tiers: tuple[tuple[int, PriceTier], ...]) -> None:
    with pytest.raises(ValueError):
        Price(PriceTier(0, 0, 0), tiers)


# --- invalid files ---


def _expected(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: '"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.toml")), ids=lambda p: p.stem)
def test_invalid_files_name_the_file_and_field(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_catalog(path, mock=True, environ={"OPENAI_API_KEY": "sk"}, now=NOW)
    assert caught.value.name == "SPENDGATE_PROVIDERS_FILE"
    assert str(caught.value).startswith(f"SPENDGATE_PROVIDERS_FILE: {path}: ")
    assert _expected(path) in str(caught.value)


def test_there_is_a_fixture_per_invalid_case() -> None:
    names = {p.stem for p in FIXTURES.glob("*.toml")}
    assert {
        "unknown_key",
        "missing_base_url",
        "unpriced_model",
        "bad_price",
        "both_keys",
        "mock_redefined",
        "empty_models",
        "bad_url",
        "negative_price",
        "too_many_decimals",
        "invalid_toml",
    } <= names


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml: cannot read"):
        load_catalog(missing, mock=True, environ={})
