"""Meter.set_budget: the client changes the cap mid-session; it persists and re-arms the notices."""

from __future__ import annotations

import pytest

from signalling.billing.meter import BillingError
from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price

from ...billing_helpers import T0, Recorder, advance, make_meter

USD = "USD"
RATE = Price.per_minute(Money(100, USD))
UNIT = BillingPolicy(unit_seconds=10)


async def test_a_cap_set_mid_session_warns_then_stops_charging(meter, clock, rec) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, UNIT, at=T0)
    await meter.media_live("s", at=T0)
    await advance(meter, clock, T0 + 15)  # units 0 and 1
    assert (await meter.set_budget("s", Money(300, USD))).budget_cap == Money(300, USD)
    assert rec.warnings == [] and not rec.reached  # unit 2 still fits
    await advance(meter, clock, T0 + 25)  # unit 2 charged: the last the cap pays for
    assert [w.running_total.amount for w in rec.warnings] == [300]
    await advance(meter, clock, T0 + 35)
    assert [r.running_total.amount for r in rec.reached] == [300]
    assert meter.running_cost("s").units == 3


async def test_lowering_to_the_spent_amount_warns_at_once_and_raising_lifts_a_reached_cap(meter, clock, rec) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, UNIT, budget_cap=Money(1000, USD), at=T0)
    await meter.media_live("s", at=T0)
    await advance(meter, clock, T0 + 5)  # unit 0
    await meter.set_budget("s", Money(100, USD), at=T0 + 5)
    assert [w.budget_cap.amount for w in rec.warnings] == [100]
    await advance(meter, clock, T0 + 11)
    assert len(rec.reached) == 1 and meter.running_cost("s").units == 1
    clock.t = T0 + 12
    await meter.set_budget("s", Money(300, USD))  # live time is past unit 1's start: charged at once
    assert meter.running_cost("s").units == 2
    await advance(meter, clock, T0 + 21)  # unit 2 is the new cap's last: a second warning
    assert [w.budget_cap.amount for w in rec.warnings] == [100, 300]
    assert (await meter.ended("s", at=T0 + 21)).total == Money(300, USD)


async def test_the_cap_survives_a_restart(tmp_path, clock, rec) -> None:  # type: ignore[no-untyped-def]
    first = make_meter(tmp_path, clock, rec)
    await first.started("s", "e", "c", RATE, UNIT, at=T0)
    await first.media_live("s", at=T0)
    await first.set_budget("s", Money(200, USD), at=T0 + 1)
    second = make_meter(tmp_path, clock, Recorder())
    clock.t = T0 + 100
    await second.recover()
    assert second.running_cost("s").budget_cap == Money(200, USD)
    # Media flows again after the restart: the recovered cap still stops charging at 2 units.
    await second.media_live("s", at=T0 + 100)
    await advance(second, clock, T0 + 200)
    cost = second.running_cost("s")
    assert (cost.units, cost.total, cost.capped) == (2, Money(200, USD), True)


async def test_refused_caps_change_nothing(meter, clock) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, UNIT, budget_cap=Money(500, USD), at=T0)
    await meter.media_live("s", at=T0)
    await advance(meter, clock, T0 + 15)
    for cap, code in ((Money(99, USD), "budget_too_low"), (Money(150, USD), "budget_below_spent"),
                      (Money(900, "EUR"), "currency_mismatch")):
        with pytest.raises(BillingError) as exc:
            await meter.set_budget("s", cap)
        assert exc.value.code == code
    assert meter.running_cost("s").budget_cap == Money(500, USD)
    with pytest.raises(BillingError) as exc:
        await meter.set_budget("nope", None)
    assert exc.value.code == "unknown_session"
    assert (await meter.set_budget("s", None)).budget_cap is None
