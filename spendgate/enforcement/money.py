"""Money: integer nano-USD inside, decimal USD strings on the wire."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from spendgate.types import Nano

NANO_PER_USD = 1_000_000_000
MAX_NANO = 2**63 - 1  # fits a Postgres BIGINT and a Redis integer


class MoneyError(ValueError):
    """A money value that is not a non-negative decimal with at most 9 decimals."""


def parse_usd(value: object) -> Nano:
    """A decimal string or JSON number (as its text) in USD -> nano-USD.

    JSON numbers must reach here as Decimal (orjson/json parse_float=Decimal) or int,
    never as a binary float.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise MoneyError("must be a decimal string or number in USD")
    text = value if isinstance(value, str) else str(value)
    text = text.strip()
    if not text or not all(c.isdigit() or c in ".-+eE" for c in text):
        raise MoneyError("must be a decimal string or number in USD")
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:
        raise MoneyError("must be a decimal string or number in USD") from exc
    if not amount.is_finite():
        raise MoneyError("must be a finite number")
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    # Exact integer arithmetic: Decimal's context would round long inputs.
    coefficient = int("".join(map(str, digits)) or "0")
    if coefficient == 0:
        return 0
    if sign:
        raise MoneyError("must not be negative")
    while coefficient % 10 == 0:
        coefficient //= 10
        exponent += 1
    if exponent < -9:
        raise MoneyError("has more than 9 decimals")
    if len(str(coefficient)) + exponent + 9 > 19:
        raise MoneyError("is too large")
    nano: int = coefficient * 10 ** (exponent + 9)
    if nano > MAX_NANO:
        raise MoneyError("is too large")
    return nano


def format_usd(nano: Nano) -> str:
    """nano-USD -> the shortest exact decimal string: '12.5', '0.00015', '0'."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:09d}".rstrip("0")
