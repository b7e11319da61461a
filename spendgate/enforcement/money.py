"""Money: integer nano-USD inside, decimal USD strings on the wire."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from spendgate.types import Nano

NANO_PER_USD = 1_000_000_000
MAX_NANO = 2**63 - 1  # fits a Postgres BIGINT and a Redis integer
MAX_TEXT = 64  # characters of a money string; longer ones are refused unread
_NUMBER_CHARS = frozenset("0123456789.-+eE")


class MoneyError(ValueError):
    """A money value that is not a non-negative decimal with at most 9 decimals."""


def parse_usd(value: object) -> Nano:
    """A decimal string or JSON number (as its text) in USD -> nano-USD.

    JSON numbers must reach here as Decimal (orjson/json parse_float=Decimal) or int,
    never as a binary float.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise MoneyError("must be a decimal string or number in USD")
    if isinstance(value, int):
        if value < 0:
            raise MoneyError("must not be negative")
        if value > MAX_NANO // NANO_PER_USD:
            raise MoneyError("is too large")
        return value * NANO_PER_USD
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_TEXT or not text or not all(c in _NUMBER_CHARS for c in text):
            raise MoneyError("must be a decimal string or number in USD")
        try:
            value = Decimal(text)
        except InvalidOperation as exc:
            raise MoneyError("must be a decimal string or number in USD") from exc
    if not value.is_finite():
        raise MoneyError("must be a finite number")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    # Exact arithmetic on the digits: Decimal's context would round long inputs.
    while digits and digits[-1] == 0:
        digits = digits[:-1]
        exponent += 1
    if not digits:
        return 0
    if sign:
        raise MoneyError("must not be negative")
    if exponent < -9:
        raise MoneyError("has more than 9 decimals")
    if len(digits) + exponent + 9 > 19:
        raise MoneyError("is too large")
    nano: int = int("".join(map(str, digits))) * 10 ** (exponent + 9)
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
