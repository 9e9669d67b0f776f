"""The billing store's contract, run against both backends: SQLite (one node) and PostgreSQL
(every node). A meter on each, driven by a manual clock, must leave the same ledger and feed;
uniqueness, fencing, the outbox's order and its single relay hold in both."""

from __future__ import annotations

import asyncio

import pytest

from signalling.billing.ledger import client_account
from signalling.billing.meter import Meter
from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price
from signalling.billing.store import BillingStore, StaleOwner, WriteBatch
from signalling.billing.store_postgres import PostgresBillingStore
from signalling.billing.store_sqlite import SqliteBillingStore

from ...billing_helpers import T0, ManualClock, Recorder

USD = "USD"
RATE = Price.per_minute(Money(100, USD))
POLICY = BillingPolicy(unit_seconds=10)


def meter_on(store: BillingStore, clock: ManualClock, node: str, rec: Recorder | None = None, **kw: object) -> Meter:
    rec = rec or Recorder()
    return Meter(store, node_id=node, clock=clock, on_unit=rec.units.append, **kw)  # type: ignore[arg-type]


async def tick(meter: Meter, clock: ManualClock, to: float) -> int:
    clock.t = to
    return await meter.fire_due()


async def test_a_metered_session_round_trips(billing_store) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    meter = meter_on(billing_store, clock, "n1")
    await meter.started("s", "e", "c", RATE, POLICY, budget_cap=Money(1000, USD), at=T0)
    await meter.media_live("s", at=T0)
    await tick(meter, clock, T0 + 25)
    await meter.media_paused("s", at=T0 + 25)
    stored = await billing_store.session("s")
    assert stored is not None and (stored.owner, stored.units, stored.gross, stored.budget_cap) == ("n1", 3, 300, 1000)
    assert stored.intervals == ((T0, T0 + 25),) and stored.ended_at is None
    assert [s.session_id for s in await billing_store.open_sessions()] == ["s"]
    summary = await meter.ended("s", at=T0 + 40)
    assert (summary.units, summary.total, summary.fee, summary.payout) == (3, Money(300, USD), Money(60, USD), Money(240, USD))
    assert await billing_store.open_sessions() == []
    stored = await billing_store.session("s")
    assert stored is not None and (stored.ended_at, stored.end_reason) == (T0 + 40, "hangup")
    assert await meter.ledger.balance(client_account("c"), USD) == Money(-300, USD)
    assert await meter.ledger.unbalanced_postings() == []
    ids = [r.id for r in await meter.outbox.after(0, 100)]
    assert ids == ["s:started", "s:resumed:0", "s:unit:0", "s:unit:1", "s:unit:2", "s:paused:0", "s:ended"]
    page = await meter.outbox.after(2, 2)
    assert [r.id for r in page] == ["s:unit:0", "s:unit:1"] and page[0].seq == 3
    assert await billing_store.unit_totals() == {("e", USD): {"units": 3, "gross": 300, "fee": 60, "payout": 240}}
    view = meter.cost_of(stored)
    assert (view.units, view.live, view.live_seconds, view.next_charge_at) == (3, False, 25, None)
    refund = await meter.refund("s", by="admin", at=T0 + 50)
    assert refund.created and not (await meter.refund("s", by="admin", at=T0 + 51)).created
    assert await billing_store.unit_totals() == {("e", USD): {"units": 3, "gross": 0, "fee": 0, "payout": 0}}


async def test_a_unit_cannot_be_charged_twice_whichever_meter_writes_it(billing_store) -> None:  # type: ignore[no-untyped-def]
    """Two meters that both believe they own a session write the same deterministic posting ids:
    the store keeps one of each."""
    clock = ManualClock()
    first = meter_on(billing_store, clock, "n1")
    await first.started("s", "e", "c", RATE, POLICY, at=T0)
    await first.media_live("s", at=T0)
    await tick(first, clock, T0 + 15)
    second = meter_on(billing_store, clock, "n2")
    assert await second.recover() == ["s"]  # no lease checks here: both now hold it, same token
    await second.media_live("s", at=T0 + 15)
    await tick(second, clock, T0 + 15)
    await tick(first, clock, T0 + 25)
    await tick(second, clock, T0 + 25)
    units = [p.unit_index for p in await first.ledger.postings("s")]
    assert units == [0, 1, 2]


async def test_a_stale_owner_is_fenced_off(billing_store) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    lost: list[str] = []
    old = meter_on(billing_store, clock, "n1", on_lost=lost.append)
    await old.started("s", "e", "c", RATE, POLICY, at=T0, fence=1)
    await old.media_live("s", at=T0)
    await tick(old, clock, T0 + 5)
    # n1 stops answering; n2 takes the session over with a newer token.
    clock.t = T0 + 12
    new_rec = Recorder()
    new = meter_on(billing_store, clock, "n2", new_rec)
    assert await new.adopt("s", fence=2)
    assert not new.running_cost("s").live  # paused where n1 was last known alive
    await new.media_live("s", at=T0 + 13)
    await tick(new, clock, T0 + 20)
    # n1 wakes up and charges what it believes is due: refused, and it lets go.
    with pytest.raises(StaleOwner):
        await tick(old, clock, T0 + 30)
    await old.settle()
    assert lost == ["s"] and not old.is_open("s")
    with pytest.raises(StaleOwner):
        await billing_store.commit(WriteBatch(budgets=[("s", None)], fences={"s": 1}))
    summary = await new.ended("s", at=T0 + 25)
    units = [p.unit_index for p in await new.ledger.postings("s")]
    assert units == list(range(summary.units)) and summary.units == 2
    assert [u.unit_index for u in new_rec.units] == [1]


async def test_the_outbox_relays_one_batch_at_a_time_and_marks_after(billing_store) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    meter = meter_on(billing_store, clock, "n1")
    await meter.started("s", "e", "c", RATE, POLICY, at=T0)
    await meter.ended("s", at=T0 + 1)
    assert await billing_store.count_unrelayed() == 2
    with pytest.raises(RuntimeError):
        async with billing_store.relay_batch(10) as rows:
            assert [r.id for r in rows or []] == ["s:started", "s:ended"]
            raise RuntimeError("died before the stream took them")
    assert await billing_store.count_unrelayed() == 2
    if isinstance(billing_store, PostgresBillingStore):
        # Another node's relay, at the same time, is told the outbox is taken (not that it is
        # empty): the stream keeps the outbox's order.
        async with billing_store.relay_batch(10) as rows:
            async with billing_store.relay_batch(10) as other:
                assert other is None
            assert len(rows or []) == 2
    else:
        async with billing_store.relay_batch(10) as rows:
            assert len(rows or []) == 2
    assert await billing_store.count_unrelayed() == 0
    await billing_store.set_webhook_cursor("http://h/1", 7)
    assert (await billing_store.webhook_cursor("http://h/1"), await billing_store.webhook_cursor("http://h/2")) == (7, 0)


async def test_cursors_follow_commit_order_across_concurrent_writers(billing_store) -> None:  # type: ignore[no-untyped-def]
    """Many batches committed at once (several nodes): a reader paging by cursor sees every event
    once, in an order where each session's events keep their own order."""
    clock = ManualClock()
    meters = [meter_on(billing_store, clock, f"n{i}") for i in range(4)]
    await asyncio.gather(*(
        m.started(f"s{i}-{k}", "e", "c", RATE, POLICY, at=T0) for i, m in enumerate(meters) for k in range(10)
    ))
    await asyncio.gather(*(m.ended(f"s{i}-{k}", at=T0 + 1) for i, m in enumerate(meters) for k in range(10)))
    seen = []
    cursor = 0
    while page := await meters[0].outbox.after(cursor, 7):
        seen += [r.id for r in page]
        cursor = page[-1].seq
    assert len(seen) == len(set(seen)) == 80
    for i in range(4):
        for k in range(10):
            assert seen.index(f"s{i}-{k}:started") < seen.index(f"s{i}-{k}:ended")


async def test_heartbeats_fees_and_migrations(billing_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await billing_store.beat("n1", T0)
    await billing_store.beat("n1", T0 + 1)
    await billing_store.beat("n2", T0 + 5)
    assert (await billing_store.last_beat("n1"), await billing_store.last_beat("n2")) == (T0 + 1, T0 + 5)
    assert await billing_store.last_beat("n3") is None
    assert await billing_store.fee_override("e") is None
    await billing_store.set_fee_override("e", 1250, "admin:root", T0)
    await billing_store.set_fee_override("e", 1500, "admin:root", T0 + 1)
    assert await billing_store.fee_override("e") == 1500
    await billing_store.set_fee_override("e", None, "admin:root", T0 + 2)
    assert await billing_store.fee_override("e") is None
    # Opening the store again (another node, a restart) applies no migration twice.
    if isinstance(billing_store, SqliteBillingStore):
        again: BillingStore = SqliteBillingStore(billing_store.db)
    else:
        again = await PostgresBillingStore.open(billing_store.pool)
    assert await again.last_beat("n2") == T0 + 5


async def test_recovery_takes_only_what_it_may_claim(billing_store) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    first = meter_on(billing_store, clock, "n1")
    for sid in ("mine", "theirs"):
        await first.started(sid, "e", "c", RATE, POLICY, at=T0, fence=1)
        await first.media_live(sid, at=T0)
    await tick(first, clock, T0 + 5)
    await billing_store.beat("n1", T0 + 8)
    clock.t = T0 + 30

    async def claim(stored):  # type: ignore[no-untyped-def]
        return 2 if stored.session_id == "mine" else None

    second = meter_on(billing_store, clock, "n2")
    assert await second.recover(claim) == ["mine"]
    cost = second.running_cost("mine")
    assert (cost.live, cost.live_seconds, cost.units) == (False, 8, 1)  # billed to n1's last beat
    assert (await billing_store.session("mine")).fence == 2  # type: ignore[union-attr]


async def test_one_node_at_a_time_holds_an_exclusive_turn(billing_store) -> None:  # type: ignore[no-untyped-def]
    """Webhook senders take turns per URL: one node sends, from the shared cursor."""
    async with billing_store.exclusive("webhook:http://h/1") as first:
        assert first
        async with billing_store.exclusive("webhook:http://h/1") as second:
            # Another node's attempt (another pool connection) while the first holds it.
            assert second is isinstance(billing_store, SqliteBillingStore)
        async with billing_store.exclusive("webhook:http://h/2") as other_url:
            assert other_url
    async with billing_store.exclusive("webhook:http://h/1") as again:
        assert again


async def test_a_participants_sessions_newest_first_within_a_period(billing_store) -> None:  # type: ignore[no-untyped-def]
    """A client's history and an expert's earnings list read the sessions of one participant."""
    clock = ManualClock()
    meter = meter_on(billing_store, clock, "n1")
    for i, (sid, expert, client) in enumerate((("a", "e1", "c1"), ("b", "e2", "c1"), ("c", "e1", "c2"))):
        await meter.started(sid, expert, client, RATE, POLICY, at=T0 + 100 * i)
        await meter.media_live(sid, at=T0 + 100 * i)
    await tick(meter, clock, T0 + 215)
    for sid in ("a", "b", "c"):
        await meter.ended(sid, at=T0 + 215)
    mine = await billing_store.sessions_of("client", "c1", 0.0, T0 + 1000, 10)
    assert [(s.session_id, s.expert_id) for s in mine] == [("b", "e2"), ("a", "e1")]
    assert [s.units for s in mine] == [12, 22] and mine[0].intervals == ((T0 + 100, T0 + 215),)
    assert [s.session_id for s in await billing_store.sessions_of("expert", "e1", 0.0, T0 + 1000, 10)] == ["c", "a"]
    assert [s.session_id for s in await billing_store.sessions_of("expert", "e1", T0 + 1, T0 + 1000, 10)] == ["c"]
    assert [s.session_id for s in await billing_store.sessions_of("client", "c1", 0.0, T0 + 1000, 1)] == ["b"]
    assert await billing_store.sessions_of("client", "e1", 0.0, T0 + 1000, 10) == []
    with pytest.raises(ValueError):
        await billing_store.sessions_of("admin", "c1", 0.0, T0 + 1000, 10)
