from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalling.billing.money import Money, MoneyError
from signalling.core.currencies import EXPONENTS, MAX_AMOUNT


def test_exponents_follow_iso_4217() -> None:
    assert (EXPONENTS["USD"], EXPONENTS["JPY"], EXPONENTS["KWD"], EXPONENTS["CLF"]) == (2, 0, 3, 4)


@pytest.mark.parametrize(
    "money, text",
    [
        (Money(1250, "USD"), "12.50 USD"),
        (Money(5, "USD"), "0.05 USD"),
        (Money(-5, "EUR"), "-0.05 EUR"),
        (Money(1250, "JPY"), "1250 JPY"),
        (Money(1250, "KWD"), "1.250 KWD"),
        (Money(0, "KWD"), "0.000 KWD"),
    ],
)
def test_format(money: Money, text: str) -> None:
    assert money.format() == text


def test_parse_is_exact_and_refuses_extra_decimals() -> None:
    assert Money.parse("12.5", "USD") == Money(1250, "USD")
    assert Money.parse("7", "JPY") == Money(7, "JPY")
    assert Money.parse("-0.001", "KWD") == Money(-1, "KWD")
    with pytest.raises(MoneyError) as exc:
        Money.parse("0.001", "USD")
    assert exc.value.code == "bad_amount"
    with pytest.raises(MoneyError):
        Money.parse("1e3", "USD")


@pytest.mark.parametrize("amount", [1.5, 1.0, True, "1", None, MAX_AMOUNT + 1])
def test_refuses_non_integer_or_huge_amounts(amount: object) -> None:
    with pytest.raises(MoneyError) as exc:
        Money(amount, "USD")  # type: ignore[arg-type]
    assert exc.value.code == "bad_amount"


@pytest.mark.parametrize("currency", ["usd", "XXX", "XAU", "", "DOLLAR", None])
def test_refuses_unknown_currencies(currency: object) -> None:
    with pytest.raises(MoneyError) as exc:
        Money(1, currency)  # type: ignore[arg-type]
    assert exc.value.code == "bad_currency"


def test_arithmetic_needs_one_currency() -> None:
    assert Money(150, "USD") + Money(50, "USD") == Money(200, "USD")
    assert Money(150, "USD") - Money(50, "USD") == Money(100, "USD")
    assert 3 * Money(7, "JPY") == Money(21, "JPY")
    assert Money(1, "USD") < Money(2, "USD")
    with pytest.raises(MoneyError) as exc:
        Money(1, "USD") + Money(1, "EUR")
    assert exc.value.code == "currency_mismatch"
    with pytest.raises(TypeError):
        Money(1, "USD") * 1.5  # type: ignore[operator]


@given(st.integers(-(10**15), 10**15), st.sampled_from(sorted(EXPONENTS)))
def test_decimal_string_round_trips(amount: int, currency: str) -> None:
    money = Money(amount, currency)
    assert Money.parse(money.decimal_str(), currency) == money
    assert Money.from_dict(money.to_dict()) == money
