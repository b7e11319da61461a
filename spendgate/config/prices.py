"""Default prices: a genai-prices model price converted to a catalog Price.

How the conversion rounds, which units it charges, and which of several dated or
time-of-day prices it picks are described in `spendgate.config.providers_file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

from genai_prices import types as gp

from spendgate.config.catalog_types import Kind, Price, PriceTier


def convert(info: gp.ModelInfo, kind: Kind, now: datetime) -> Price | None:
    """The price of `info` at `now`, or None when genai-prices has no usable price for it."""
    prices = [_from_model_price(p, kind) for p in _current_prices(info, now)]
    if any(p is None for p in prices):
        return None
    return _max_price([p for p in prices if p is not None])


def _current_prices(info: gp.ModelInfo, now: datetime) -> list[gp.ModelPrice]:
    """The price current at start-up, plus any later time-of-day prices that can
    replace it during the day (genai-prices tries conditional prices last to first)."""
    if isinstance(info.prices, gp.ModelPrice):
        return [info.prices]
    by_time_of_day: list[gp.ModelPrice] = []
    for conditional in reversed(info.prices):
        constraint = conditional.constraint
        if isinstance(constraint, gp.TimeOfDateConstraint):
            by_time_of_day.append(conditional.prices)
        elif constraint is None or constraint.active(now):
            return [conditional.prices, *by_time_of_day]
    return [info.prices[0].prices, *by_time_of_day]


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
