"""One currency table for money and prices: every price an expert may set can be counted as Money."""

from __future__ import annotations

import pytest

from signalling.billing.money import Money
from signalling.core.currencies import MAX_PRICE_AMOUNT, PRICE_CURRENCIES
from signalling.core.errors import InvalidInput
from signalling.experts.model import ProfilePrice


@pytest.mark.parametrize("currency", sorted(PRICE_CURRENCIES))
def test_every_price_currency_is_money(currency: str) -> None:
    price = ProfilePrice("per_minute", MAX_PRICE_AMOUNT, currency)
    assert Money(price.amount, price.currency).currency == currency


@pytest.mark.parametrize("fund", ["CLF", "USN", "BOV"])
def test_a_fund_is_money_but_not_a_price(fund: str) -> None:
    Money(100, fund)
    with pytest.raises(InvalidInput) as refused:
        ProfilePrice("per_minute", 100, fund)
    assert refused.value.code == "invalid_currency"
