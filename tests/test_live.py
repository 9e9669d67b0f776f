from __future__ import annotations

from signalling.billing.live import LiveTracker
from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price

from .billing_helpers import T0, ManualClock, advance, make_meter


def test_the_clock_runs_only_while_both_sides_flow(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    meter = make_meter(tmp_path, clock)
    tracker = LiveTracker(meter)
    meter.started("s", "e", "c", Price.per_minute(Money(100, "USD")), BillingPolicy(), at=T0)
    tracker.watch("s", ("e", "c"))
    tracker.media_state("s", "e", True, T0 + 1)
    assert not meter.running_cost("s").live  # the client is not flowing yet
    tracker.media_state("s", "c", True, T0 + 5)
    tracker.media_state("s", "c", True, T0 + 6)  # a repeat changes nothing
    tracker.media_state("s", "intruder", False, T0 + 7)
    tracker.media_state("other", "c", False, T0 + 7)
    advance(meter, clock, T0 + 30)
    tracker.media_state("s", "e", False, T0 + 30)  # the expert drops: paused
    tracker.media_state("s", "c", False, T0 + 31)
    tracker.media_state("s", "c", True, T0 + 40)
    tracker.media_state("s", "e", True, T0 + 100)  # both back: resumed
    summary = meter.ended("s", at=T0 + 140)
    tracker.forget("s")
    tracker.media_state("s", "e", False, T0 + 150)  # after the end: ignored
    assert summary.timeline == ((T0 + 5, T0 + 30), (T0 + 100, T0 + 140))
    assert summary.units == 2  # 65 s live
