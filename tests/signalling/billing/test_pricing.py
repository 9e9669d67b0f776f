from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalling.billing.money import Money
from signalling.billing.pricing import (
    BillingPolicy,
    Price,
    PriceKind,
    PricingError,
    platform_fee,
    split,
    split_increment,
)
from signalling.core.settings import Settings

amounts = st.integers(0, 10**12)
fees = st.integers(0, 10_000)
currencies = st.sampled_from(["USD", "JPY", "KWD", "EUR"])


@given(amounts, fees, currencies)
def test_fee_plus_payout_is_gross(gross: int, bps: int, currency: str) -> None:
    s = split(Money(gross, currency), bps)
    assert s.fee.amount + s.payout.amount == gross
    assert 0 <= s.fee.amount <= gross and s.payout.amount >= 0
    # floor: the platform never takes more than its share, and less by under one minor unit.
    assert s.fee.amount * 10_000 <= gross * bps < (s.fee.amount + 1) * 10_000


@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=50), fees, currencies)
def test_unit_fees_add_up_to_the_fee_on_the_session_total(rates: list[int], bps: int, currency: str) -> None:
    total = Money.zero(currency)
    fee_sum = payout_sum = 0
    for rate in rates:
        s = split_increment(total, Money(rate, currency), bps)
        assert s.fee.amount + s.payout.amount == rate
        assert 0 <= s.fee.amount <= rate
        fee_sum += s.fee.amount
        payout_sum += s.payout.amount
        total += Money(rate, currency)
    assert fee_sum == platform_fee(total.amount, bps)
    assert fee_sum + payout_sum == total.amount


def test_rounding_examples() -> None:
    # 20% of 1.99 USD is 39.8 cents: the platform takes 39, the expert 160.
    assert split(Money(199, "USD"), 2000).fee == Money(39, "USD")
    # Three units of 0.01 USD at 50%: fees 0, 1, 0 -> 1 cent, exactly floor(3 * 0.5).
    total = Money.zero("USD")
    got = []
    for _ in range(3):
        got.append(split_increment(total, Money(1, "USD"), 5000).fee.amount)
        total += Money(1, "USD")
    assert got == [0, 1, 0]


def test_prices_validate() -> None:
    assert Price.free().kind is PriceKind.FREE
    assert Price.from_dict(Price.per_minute(Money(150, "USD")).to_dict()) == Price.per_minute(Money(150, "USD"))
    for bad in (
        lambda: Price.per_minute(Money(0, "USD")),
        lambda: Price.per_session(Money(-1, "USD")),
        lambda: Price(PriceKind.FREE, Money(1, "USD")),
        lambda: Price.from_dict({"kind": "per_hour", "amount": 1, "currency": "USD"}),
        lambda: Price.from_dict({"kind": "per_minute", "amount": 1.5, "currency": "USD"}),
    ):
        with pytest.raises(PricingError):
            bad()


def test_policy_validates_and_reads_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = Settings(data_dir=tmp_path, billing_unit_seconds=5, billing_grace_seconds=10, platform_fee_bps=1500)
    policy = BillingPolicy.from_settings(s)
    assert (policy.unit_seconds, policy.grace_seconds, policy.platform_fee_bps) == (5, 10, 1500)
    assert BillingPolicy.from_settings(s, platform_fee_bps=500).platform_fee_bps == 500
    assert BillingPolicy.from_dict(policy.to_dict()) == policy
    for bad in ({"unit_seconds": 0}, {"grace_seconds": -1}, {"platform_fee_bps": 10_001}, {"unit_seconds": 1.5}):
        with pytest.raises(PricingError):
            BillingPolicy(**bad)  # type: ignore[arg-type]
