from __future__ import annotations

import asyncio
import json
import time

import pytest

from signalling.billing.ledger import PLATFORM_ACCOUNT, client_account, expert_account
from signalling.billing.meter import BillingError, Meter
from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price, platform_fee
from signalling.billing.store_sqlite import SqliteBillingStore
from signalling.core.database import Database
from signalling.core.tasks import CANCEL_WAIT_SECONDS

from ...billing_helpers import T0, ManualClock, Recorder, advance, make_meter

USD = "USD"
RATE = Price.per_minute(Money(150, USD))


async def units_of(meter: Meter, sid: str) -> list[int]:
    return [p.unit_index for p in await meter.ledger.postings(sid) if p.kind == "charge"]  # type: ignore[misc]


async def event_ids(meter: Meter, sid: str) -> list[str]:
    return [r.id for r in await meter.outbox.after(0, 10_000) if r.event["subject"] == sid]


async def live_for(meter: Meter, clock: ManualClock, seconds: float, *, tick: bool, policy: BillingPolicy,
             price: Price = RATE) -> int:
    await meter.started("s", "e", "c", price, policy, at=T0)
    await meter.media_live("s", at=T0)
    if tick:
        for t in range(1, int(seconds) + 1):
            await advance(meter, clock, T0 + t)
        await advance(meter, clock, T0 + seconds)
    return (await meter.ended("s", at=T0 + seconds, reason="hangup")).units


@pytest.mark.parametrize("tick", [True, False], ids=["timer", "settled-at-end"])
@pytest.mark.parametrize("seconds, units", [(0, 0), (1, 1), (59, 1), (60, 1), (61, 2), (120, 2), (120.5, 3)])
async def test_per_minute_charges_each_started_unit(meter, clock, seconds, units, tick) -> None:  # type: ignore[no-untyped-def]
    assert await live_for(meter, clock, seconds, tick=tick, policy=BillingPolicy()) == units
    assert await units_of(meter, "s") == list(range(units))
    assert await meter.ledger.balance(client_account("c"), USD) == Money(-150 * units, USD)


@pytest.mark.parametrize("seconds, units", [(30, 0), (31, 1), (90, 1), (91, 2)])
async def test_grace_period_is_free(meter, clock, seconds, units) -> None:  # type: ignore[no-untyped-def]
    assert await live_for(meter, clock, seconds, tick=True, policy=BillingPolicy(grace_seconds=30)) == units


async def test_unit_is_charged_when_it_starts(meter, clock, rec) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, BillingPolicy(), at=T0)
    await meter.media_live("s", at=T0)
    assert await advance(meter, clock, T0) == 0  # 0 s live: nothing has started yet
    assert await advance(meter, clock, T0 + 0.001) == 1
    assert await advance(meter, clock, T0 + 60) == 0  # exactly one unit
    assert await advance(meter, clock, T0 + 60.5) == 1
    assert [(u.unit_index, u.at, u.running_total) for u in rec.units] == [
        (0, T0, Money(150, USD)), (1, T0 + 60, Money(300, USD)),
    ]


async def test_pause_stops_the_clock_mid_unit_and_resume_continues_it(meter, clock) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, BillingPolicy(), at=T0)
    await meter.media_live("s", at=T0)
    await advance(meter, clock, T0 + 50)
    await meter.media_paused("s", at=T0 + 50)
    assert await advance(meter, clock, T0 + 500) == 0  # paused: unit 1 does not start
    await meter.media_live("s", at=T0 + 500)
    assert await advance(meter, clock, T0 + 509) == 0  # 59 s live
    assert await advance(meter, clock, T0 + 511) == 1  # 61 s live: unit 1 started at 510
    assert [p.at for p in await meter.ledger.postings("s")] == [T0, T0 + 510]
    summary = await meter.ended("s", at=T0 + 520, reason="hangup")
    assert (summary.units, summary.live_seconds) == (2, 70)
    assert summary.timeline == ((T0, T0 + 50), (T0 + 500, T0 + 520))


async def test_reconnects_repeat_harmlessly_and_late_times_are_clamped(meter, clock) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, BillingPolicy(), at=T0)
    for _ in range(3):
        await meter.media_live("s", at=T0)
    await advance(meter, clock, T0 + 61)
    await meter.media_paused("s", at=T0 + 61)
    await meter.media_paused("s", at=T0 + 62)
    await meter.media_live("s", at=T0 + 70)
    await meter.media_paused("s", at=T0 + 65)  # earlier than the resume it follows: taken as T0 + 70
    summary = await meter.ended("s", at=T0 + 80)
    assert summary.timeline == ((T0, T0 + 61), (T0 + 70, T0 + 70))
    assert summary.units == 2
    ids = await event_ids(meter, "s")
    assert ids == ["s:started", "s:resumed:0", "s:unit:0", "s:unit:1", "s:paused:0", "s:resumed:1",
                   "s:paused:1", "s:ended"]


@pytest.mark.parametrize("seconds, charged", [(0, False), (59, False), (60, True), (3600, True)])
async def test_per_session_charged_once_the_minimum_is_reached(meter, clock, seconds, charged) -> None:  # type: ignore[no-untyped-def]
    price = Price.per_session(Money(2500, USD))
    await live_for(meter, clock, seconds, tick=True, policy=BillingPolicy(per_session_minimum_seconds=60), price=price)
    assert [p.gross for p in await meter.ledger.postings("s")] == ([Money(2500, USD)] if charged else [])


async def test_per_session_minimum_adds_up_across_pauses(meter, clock) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", Price.per_session(Money(2500, USD)), BillingPolicy(), at=T0)
    await meter.media_live("s", at=T0)
    await meter.media_paused("s", at=T0 + 40)
    await meter.media_live("s", at=T0 + 100)
    assert await advance(meter, clock, T0 + 119) == 0
    assert await advance(meter, clock, T0 + 120) == 1
    assert (await meter.ended("s", at=T0 + 1000)).total == Money(2500, USD)


async def test_free_sessions_emit_events_and_post_nothing(meter, clock) -> None:  # type: ignore[no-untyped-def]
    assert await live_for(meter, clock, 300, tick=True, policy=BillingPolicy(), price=Price.free()) == 0
    assert await meter.ledger.postings("s") == []
    assert await event_ids(meter, "s") == ["s:started", "s:resumed:0", "s:ended"]


async def test_never_live_costs_nothing(meter, clock) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, BillingPolicy(), at=T0)
    await advance(meter, clock, T0 + 600)
    assert (await meter.ended("s", at=T0 + 600, reason="no_answer")).units == 0


async def test_budget_cap_warns_one_unit_before_and_ends_with_the_right_charge(meter, clock, rec) -> None:  # type: ignore[no-untyped-def]
    async def end_at_cap(notice):  # type: ignore[no-untyped-def]
        await meter.ended(notice.session_id, at=notice.at, reason="budget_reached")

    meter.on_budget_reached = end_at_cap
    await meter.started("s", "e", "c", RATE, BillingPolicy(), budget_cap=Money(400, USD), at=T0)
    await meter.media_live("s", at=T0)
    await advance(meter, clock, T0 + 59)
    assert rec.warnings == []
    await advance(meter, clock, T0 + 61)  # unit 2 would bring the total to 450 > 400: unit 1 is the last
    assert [(w.running_total, w.ends_at_live_seconds) for w in rec.warnings] == [(Money(300, USD), 120)]
    assert meter.is_open("s")
    await advance(meter, clock, T0 + 121)
    await meter.settle()
    assert not meter.is_open("s")
    row = await meter.store.session("s")
    assert row is not None and (row.end_reason, row.ended_at) == ("budget_reached", T0 + 120)
    assert (await meter.ledger.session_totals("s")).gross == 300
    ended = [r.event for r in await meter.outbox.after(0, 100) if r.id == "s:ended"][0]
    assert (ended["data"]["reason"], ended["data"]["total"]) == ("budget_reached", 300)


async def test_budget_cap_is_never_exceeded_if_the_session_is_not_ended(meter, clock, rec) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, BillingPolicy(), budget_cap=Money(300, USD), at=T0)
    await meter.media_live("s", at=T0)
    await advance(meter, clock, T0 + 1000)
    assert [r.running_total for r in rec.reached] == [Money(300, USD)]
    assert (await meter.ended("s", at=T0 + 2000)).total == Money(300, USD)


async def test_budget_too_low_and_currency_mismatch_are_refused(meter) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BillingError) as exc:
        await meter.started("s", "e", "c", RATE, BillingPolicy(), budget_cap=Money(149, USD))
    assert exc.value.code == "budget_too_low"
    with pytest.raises(BillingError) as exc:
        await meter.started("s", "e", "c", RATE, BillingPolicy(), budget_cap=Money(1000, "EUR"))
    assert exc.value.code == "currency_mismatch"
    assert not meter.is_open("s")


async def test_fee_split_in_the_ledger_balances(meter, clock) -> None:  # type: ignore[no-untyped-def]
    price = Price.per_minute(Money(199, USD))
    await live_for(meter, clock, 7 * 60, tick=True, policy=BillingPolicy(platform_fee_bps=2000), price=price)
    gross = 199 * 7
    assert (await meter.ledger.balance(PLATFORM_ACCOUNT, USD)).amount == platform_fee(gross, 2000)
    assert (await meter.ledger.balance(expert_account("e"), USD)).amount == gross - platform_fee(gross, 2000)
    assert await meter.ledger.unbalanced_postings() == []


async def test_calls_are_idempotent_and_errors_coded(meter, clock) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, BillingPolicy(), at=T0)
    await meter.started("s", "e", "c", RATE, BillingPolicy(), at=T0 + 1)
    with pytest.raises(BillingError, match="other terms"):
        await meter.started("s", "e", "c2", RATE, BillingPolicy())
    await meter.media_live("s", at=T0)
    first = await meter.ended("s", at=T0 + 90)
    assert await meter.ended("s", at=T0 + 95) == first
    for call, code in (
        (lambda: meter.started("s", "e", "c", RATE, BillingPolicy()), "session_ended"),
        (lambda: meter.media_live("nope"), "unknown_session"),
        (lambda: meter.ended("nope"), "unknown_session"),
        (lambda: meter.started("", "e", "c", RATE, BillingPolicy()), "bad_request"),
        (lambda: meter.ended("x", reason=""), "bad_request"),
    ):
        with pytest.raises(BillingError) as exc:
            await call()
        assert exc.value.code == code


async def test_running_cost_on_request(meter, clock) -> None:  # type: ignore[no-untyped-def]
    await meter.started("s", "e", "c", RATE, BillingPolicy(), budget_cap=Money(1500, USD), at=T0)
    await meter.media_live("s", at=T0)
    await advance(meter, clock, T0 + 75)
    cost = meter.running_cost("s")
    assert (cost.units, cost.total, cost.live, cost.live_seconds, cost.next_charge_at) == (
        2, Money(300, USD), True, 75, T0 + 120,
    )
    assert cost.to_dict()["total"] == {"amount": 300, "currency": USD}


async def test_events_are_cloudevents_with_the_ledger_amounts(meter, clock) -> None:  # type: ignore[no-untyped-def]
    await live_for(meter, clock, 61, tick=True, policy=BillingPolicy(platform_fee_bps=2500))
    unit = [r.event for r in await meter.outbox.after(0, 100) if r.id == "s:unit:1"][0]
    assert unit["specversion"] == "1.0" and unit["type"] == "expertcall.session.unit"
    assert unit["subject"] == "s" and unit["datacontenttype"] == "application/json"
    assert unit["time"] == "2027-01-15T08:01:00.000000Z"
    data = unit["data"]
    assert (data["expert_id"], data["client_id"], data["unit_index"], data["currency"]) == ("e", "c", 1, USD)
    posting = await meter.ledger.get("s:unit:1")
    assert posting is not None
    assert (data["amount"], data["fee"], data["payout"], data["running_total"]) == (
        posting.gross.amount, posting.fee.amount, posting.payout.amount, 300,
    )


async def test_recovery_charges_the_units_due_and_never_bills_the_outage(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    first = make_meter(tmp_path, clock)
    await first.started("s", "e", "c", RATE, BillingPolicy(), at=T0)
    await first.media_live("s", at=T0)
    await first.started("p", "e", "c", RATE, BillingPolicy(), at=T0)
    await first.media_live("p", at=T0)
    await first.media_paused("p", at=T0 + 30)
    await advance(first, clock, T0 + 90)
    await first._beat(T0 + 150)  # alive at 150, but unit 2 (due at 120) was never charged: its timer was late
    first.store.db.close()  # type: ignore[attr-defined]  # the process dies here: nothing ended, nothing flushed by close()
    clock.t = T0 + 250
    rec = Recorder()
    second = make_meter(tmp_path, clock, rec)
    assert sorted(await second.recover()) == ["p", "s"]
    assert [u.unit_index for u in rec.units] == [2]  # units 0-1 were committed before the crash
    assert await units_of(second, "s") == [0, 1, 2]
    assert await units_of(second, "p") == [0]
    cost = second.running_cost("s")
    assert (cost.live, cost.live_seconds) == (False, 150)  # paused at the last heartbeat
    paused = [r.event for r in await second.outbox.after(0, 100) if r.id == "s:paused:0"][0]
    assert paused["data"]["reason"] == "meter_restart" and paused["time"].endswith("08:02:30.000000Z")
    await second.media_live("s", at=T0 + 260)  # the session layer sees media flowing again
    await advance(second, clock, T0 + 300)
    assert await units_of(second, "s") == [0, 1, 2, 3]  # unit 3 started at 180 s live, 290 s wall
    assert (await second.ended("s", at=T0 + 300)).timeline == ((T0, T0 + 150), (T0 + 260, T0 + 300))


async def test_heartbeat_and_graceful_close_bound_what_a_restart_bills(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = Meter(SqliteBillingStore(Database.in_dir(tmp_path)), heartbeat_seconds=0.05)
    await first.start()
    start = time.time() - 25
    await first.started("s", "e", "c", RATE, BillingPolicy(unit_seconds=10), at=start)
    await first.media_live("s", at=start)
    await asyncio.sleep(0.2)
    beat = await first.store.last_beat("")
    assert beat is not None
    assert time.time() - 1 < beat <= time.time()
    await first.close()
    closed_at = time.time()
    second = Meter(SqliteBillingStore(Database.in_dir(tmp_path)))
    await second.start()
    cost = second.running_cost("s")
    assert not cost.live and 25 <= cost.live_seconds <= closed_at - start  # not a second more
    assert await units_of(second, "s") == [0, 1, 2]
    await second.close()


async def test_one_heap_serves_many_sessions(meter, clock) -> None:  # type: ignore[no-untyped-def]
    policy = BillingPolicy(unit_seconds=1)
    for i in range(1000):
        await meter.started(f"s{i}", "e", f"c{i}", RATE, policy, at=T0)
        await meter.media_live(f"s{i}", at=T0 + i / 1000)
    assert await advance(meter, clock, T0 + 1) == 1000
    for i in range(0, 1000, 2):
        await meter.media_paused(f"s{i}", at=T0 + 1.5)
    assert await advance(meter, clock, T0 + 3) == 1000  # 500 sessions, two units each
    assert len(meter._heap) <= 4 * 1000 + 1024


async def test_refund_within_the_window_reverses_every_entry(meter, clock) -> None:  # type: ignore[no-untyped-def]
    await live_for(meter, clock, 150, tick=True, policy=BillingPolicy())
    with pytest.raises(BillingError) as exc:
        await meter.refund("nope", by="admin")
    assert exc.value.code == "unknown_session"
    refund = await meter.refund("s", by="admin", reason="bad audio", at=T0 + 3600)
    assert refund.created and refund.posting.gross == Money(450, USD)
    for account in (client_account("c"), expert_account("e"), PLATFORM_ACCOUNT):
        assert (await meter.ledger.balance(account, USD)).amount == 0
    assert not (await meter.refund("s", by="expert", at=T0 + 3700)).created
    event = [r.event for r in await meter.outbox.after(0, 100) if r.id == "s:refunded"][0]
    assert (event["type"], event["data"]["amount"], event["data"]["by"]) == ("expertcall.session.refunded", 450, "admin")
    memo = json.loads(refund.posting.memo)
    assert memo == {"by": "admin", "reason": "bad audio"}


async def test_refund_window_open_session_and_free_session(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    meter = make_meter(tmp_path, clock, refund_window_seconds=72 * 3600)
    await meter.started("s", "e", "c", RATE, BillingPolicy(), at=T0)
    await meter.media_live("s", at=T0)
    with pytest.raises(BillingError) as exc:
        await meter.refund("s", by="admin")
    assert exc.value.code == "session_open"
    await meter.ended("s", at=T0 + 10)
    with pytest.raises(BillingError) as exc:
        await meter.refund("s", by="admin", at=T0 + 10 + 72 * 3600 + 1)
    assert exc.value.code == "refund_window_closed"
    await meter.started("f", "e", "c", Price.free(), BillingPolicy(), at=T0)
    await meter.ended("f", at=T0 + 10)
    with pytest.raises(BillingError) as exc:
        await meter.refund("f", by="admin", at=T0 + 20)
    assert exc.value.code == "nothing_to_refund"


async def test_timer_task_charges_in_real_time_and_close_flushes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder()
    meter = Meter(SqliteBillingStore(Database.in_dir(tmp_path)), on_unit=rec.units.append)
    warned: list[Money] = []

    async def on_warning(notice):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        warned.append(notice.running_total)

    meter.on_budget_warning = on_warning
    await meter.start()
    start = time.time()
    await meter.started("s", "e", "c", RATE, BillingPolicy(unit_seconds=1), budget_cap=Money(450, USD), at=start)
    await meter.media_live("s", at=start)
    deadline = time.time() + 30
    while not warned and time.time() < deadline:
        await asyncio.sleep(0.05)
    await meter.close()
    await meter.close()
    assert warned == [Money(450, USD)]
    assert [u.unit_index for u in rec.units] == [0, 1, 2]
    assert all(u.charged_at >= u.at for u in rec.units)
    assert await units_of(meter, "s") == [0, 1, 2]
    assert meter.is_open("s")  # left open for the next process to recover


async def test_an_idle_meter_keeps_no_heartbeat_going(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database.in_dir(tmp_path)
    meter = Meter(SqliteBillingStore(db), heartbeat_seconds=0.02)
    await meter.start()
    await asyncio.sleep(0.15)
    assert await meter.store.last_beat("") is None  # no open session: no writes, no wake-ups
    await meter.started("s", "e", "c", Price.per_minute(Money(100, "USD")), BillingPolicy(unit_seconds=60))
    await meter.media_live("s")
    await asyncio.sleep(0.15)
    first = await meter.store.last_beat("")
    await asyncio.sleep(0.1)
    assert first is not None and await meter.store.last_beat("") > first  # type: ignore[operator]
    await meter.close()
    db.close()


@pytest.mark.parametrize("second_live_after", [0.0, 1.0])
async def test_a_session_after_an_ended_one_wakes_the_timer(tmp_path, second_live_after) -> None:  # type: ignore[no-untyped-def]
    """An ended session's entry stays in the heap; a later session's first unit must still wake
    the timer task, which sleeps without a timer while no session is open. (Before the fix the
    stale entry sat at the head, the new one was not "at the head", and its units waited for
    some unrelated event: call 2 on a node was charged only at hang-up.) A heartbeat wakes the
    task after the end, so that it goes to sleep with no session open and the entry still queued."""
    rec = Recorder()
    meter = Meter(SqliteBillingStore(Database.in_dir(tmp_path)), on_unit=rec.units.append, heartbeat_seconds=0.1)
    await meter.start()
    policy = BillingPolicy(unit_seconds=1)
    start = time.time()
    await meter.started("first", "e", "c", RATE, policy, at=start)
    await meter.media_live("first", at=start)
    await asyncio.sleep(0.3)  # unit 0 charged; unit 1's entry (due at start + 1) stays queued
    await meter.ended("first", reason="hangup")
    await asyncio.sleep(second_live_after)
    second = time.time()
    await meter.started("second", "e", "c", RATE, policy, at=second)
    await meter.media_live("second", at=second)
    deadline = time.time() + 5
    while len([u for u in rec.units if u.session_id == "second"]) < 3 and time.time() < deadline:
        await asyncio.sleep(0.02)
    await meter.close()
    charged = [u for u in rec.units if u.session_id == "second"]
    assert [u.unit_index for u in charged] == [0, 1, 2]
    assert all(u.charged_at - u.at < 0.5 for u in charged), [u.charged_at - u.at for u in charged]


class FrozenBeatStore(SqliteBillingStore):
    """Its next heartbeat swallows a cancellation and waits on, as redis-py can in a command."""

    freeze = False

    async def beat(self, node_id: str, at: float) -> None:
        if self.freeze:
            self.freeze = False
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                pass
            await asyncio.Event().wait()
        await super().beat(node_id, at)


async def test_close_finishes_billing_when_the_timer_task_swallows_its_cancellation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = FrozenBeatStore(Database.in_dir(tmp_path))
    first = Meter(store, heartbeat_seconds=0.05)
    await first.start()
    start = time.time() - 25
    await first.started("s", "e", "c", RATE, BillingPolicy(unit_seconds=10), at=start)
    store.freeze = True
    await first.media_live("s", at=start)
    await asyncio.sleep(0.2)
    assert not store.freeze  # the timer task is in the frozen heartbeat
    closing = time.time()
    # Before cancel_and_wait, close waited for the task forever (here: until the timeout's own
    # cancellation reached the task, and close swallowed that one).
    async with asyncio.timeout(10):
        await first.close()
    closed = time.time()
    assert closed - closing < CANCEL_WAIT_SECONDS + 2
    second = Meter(SqliteBillingStore(Database.in_dir(tmp_path)))
    await second.start()
    units = await units_of(second, "s")
    # what was due at close was charged (a unit is charged as it starts), each unit once
    assert units == list(range(len(units)))
    assert int((closing - start) // 10) + 1 <= len(units) <= int((closed - start) // 10) + 1
    await second.close()
