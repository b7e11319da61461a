"""What the catalog is made of: providers, the models they serve, and their prices.

A leaf: `providers_file` builds these values and `catalog` looks them up; both import them
from here (`catalog` re-exports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

MOCK = "mock"  # the built-in mock provider's name, reserved in the providers file
NANO_PER_USD = 1_000_000_000

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
