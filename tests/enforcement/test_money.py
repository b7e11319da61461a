from __future__ import annotations

import json
from decimal import Decimal
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendgate.enforcement.money import MoneyError, format_usd, parse_usd

LARGEST: Final = 2**63 - 1


@pytest.mark.parametrize(
    ("value", "nano"),
    [
        ("0", 0),
        ("0.0", 0),
        ("00", 0),
        ("1", 1_000_000_000),
        ("12.5", 12_500_000_000),
        ("12.50", 12_500_000_000),
        ("0.00015", 150_000),
        ("0.000000001", 1),
        (".5", 500_000_000),
        ("5.", 5_000_000_000),
        ("+3", 3_000_000_000),
        (" 7.25 ", 7_250_000_000),
        ("1e3", 1_000_000_000_000),
        ("1E-9", 1),
        ("2.5e-7", 250),
        ("9223372036.854775807", LARGEST),
        ("922337203.6854775807e1", LARGEST),
        ("0.0000000000", 0),
        ("-0", 0),
        (0, 0),
        (50, 50_000_000_000),
        (9_223_372_036, 9_223_372_036_000_000_000),
        (Decimal("0.15"), 150_000_000),
        (Decimal("1.000000000"), 1_000_000_000),
        (Decimal("1.5E+2"), 150_000_000_000),
        (Decimal("0E-12"), 0),
    ],
)
def test_parse_usd_accepts(value: str | int | Decimal, nano: int) -> None:
    assert parse_usd(value) == nano


def test_parse_usd_of_a_json_number_parsed_as_decimal() -> None:
    body = json.loads('{"usage_limit": 0.1, "big": 12345678.123456789}', parse_float=Decimal)
    assert parse_usd(body["usage_limit"]) == 100_000_000
    assert parse_usd(body["big"]) == 12_345_678_123_456_789


@pytest.mark.parametrize(
    "value",
    [
        0.1,
        1.0,
        0.0,
        True,
        False,
        None,
        [1],
        {"usd": 1},
        b"1",
        "-1",
        "-0.000000001",
        Decimal("-2.5"),
        -1,
        "0.0000000001",
        "1.0000000001",
        "0.1234567891",
        "1e-10",
        Decimal("1E-10"),
        "NaN",
        "nan",
        "sNaN",
        Decimal("NaN"),
        Decimal("-Infinity"),
        "Infinity",
        "inf",
        "-inf",
        "1e19",
        "1e999999999",
        "9223372036.854775808",
        "9999999999",
        2**63,
        10**10,
        "",
        "   ",
        "abc",
        "1,5",
        "1_000",
        "$5",
        "5 USD",
        "1.2.3",
        "--1",
        "+-1",
        "e5",
        "1e",
        ".",
        "0x10",
        "1/2",
        "\u0661\u0662",  # Arabic-Indic digits: str.isdigit() is true, but not a USD amount
        "\uff11",  # fullwidth 1
        9_223_372_037,
        "1" * 65,
    ],
)
def test_parse_usd_rejects(value: object) -> None:
    with pytest.raises(MoneyError):
        parse_usd(value)


@pytest.mark.parametrize(
    "value",
    ["1" * 5000, "1" * 4301 + ".5", 10**5000],
    ids=["5000-digit-string", "4302-digit-decimal", "5001-digit-int"],
)
def test_parse_usd_rejects_enormous_inputs_as_money_errors(value: object) -> None:
    # A request body may carry a number with thousands of digits; it is a 400, not a 500.
    with pytest.raises(MoneyError):
        parse_usd(value)


def test_overlong_money_strings_are_refused_unread() -> None:
    # Exactly 1 USD, but a wire value this long is refused before Decimal parses it.
    assert parse_usd("1." + "0" * 8) == 1_000_000_000
    with pytest.raises(MoneyError):
        parse_usd("1." + "0" * 70)


@pytest.mark.parametrize(
    ("nano", "text"),
    [
        (0, "0"),
        (1, "0.000000001"),
        (150_000, "0.00015"),
        (12_500_000_000, "12.5"),
        (1_000_000_000, "1"),
        (10_000_000_000, "10"),
        (1_230_000_000_000, "1230"),
        (100_000_001, "0.100000001"),
        (LARGEST, "9223372036.854775807"),
        (-12_500_000_000, "-12.5"),
    ],
)
def test_format_usd_is_the_shortest_exact_form(nano: int, text: str) -> None:
    assert format_usd(nano) == text


@given(st.integers(0, LARGEST))
def test_format_then_parse_round_trips(nano: int) -> None:
    text = format_usd(nano)
    assert parse_usd(text) == nano
    assert format_usd(parse_usd(text)) == text
    # Shortest exact form: plain digits, no exponent, no trailing zeros after a point.
    assert "e" not in text.lower()
    assert not text.endswith(".")
    if "." in text:
        whole, frac = text.split(".")
        assert not frac.endswith("0") and len(frac) <= 9
    else:
        whole = text
    assert whole == "0" or not whole.startswith("0")
    # Same value as exact decimal arithmetic.
    assert Decimal(text) * 10**9 == nano


@given(st.integers(0, LARGEST))
def test_parse_accepts_the_same_amount_as_int_decimal_and_string(nano: int) -> None:
    text = format_usd(nano)
    assert parse_usd(Decimal(text)) == nano
    padded = text + "000" if "." in text else text + ".000"
    assert parse_usd(padded) == nano
    if nano % 10**9 == 0:
        assert parse_usd(nano // 10**9) == nano


@given(st.integers(1, LARGEST), st.integers(10, 30))
def test_more_than_nine_significant_decimals_is_refused(nano: int, decimals: int) -> None:
    # nano-USD with one extra non-zero digit appended beyond the ninth decimal.
    whole, frac = divmod(nano, 10**9)
    text = f"{whole}.{frac:09d}" + "0" * (decimals - 10) + "1"
    with pytest.raises(MoneyError):
        parse_usd(text)
