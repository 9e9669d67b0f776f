"""What ``bench metering --nodes`` counts as a run's events, on the outbox side and the reader's."""

from __future__ import annotations

from pathlib import Path

from bench.metering_nodes import run_events
from bench.metering_report import consumed
from signalling.billing.feed_reader import Delivery, FeedReaderStore
from signalling.billing.meter import Meter
from signalling.billing.money import Money
from signalling.billing.outbox import cloud_event, encode
from signalling.billing.pricing import BillingPolicy, Price
from signalling.billing.store import WriteBatch
from signalling.billing.store_postgres import PostgresBillingStore
from signalling.core.postgres import connect
from tests.billing_helpers import T0, ManualClock

PRICE = Price.per_minute(Money(25, "USD"))


async def test_a_run_counts_its_own_outbox_rows_whatever_the_cursor_skipped(postgres_url: str) -> None:
    pool = await connect(postgres_url)
    try:
        store = await PostgresBillingStore.open(pool)
        before = await store.last_seq()
        meter = Meter(store, node_id="bench-node-1", clock=ManualClock())
        await meter.started("run1-0", "e", "c", PRICE, BillingPolicy(), at=T0, fence=1)
        # The same event written again (a second meter of the session): ON CONFLICT DO NOTHING
        # writes no row but takes an identity value.
        again = cloud_event("run1-0:started", "started", "run1-0", T0, {})
        await store.commit(WriteBatch(events=[again], fences={"run1-0": 1}))
        await meter.started("old-0", "e", "c", PRICE, BillingPolicy(), at=T0, fence=1)  # not this run's
        assert await store.last_seq() - before == 3
        assert await run_events(store, before, "run1") == 1
    finally:
        await pool.close()


def test_the_reader_side_counts_only_the_runs_events(tmp_path: Path) -> None:
    path = tmp_path / "consumer.sqlite3"
    reader = FeedReaderStore(path)
    events = [cloud_event(f"{sid}:started", "started", sid, T0, {}) for sid in ("run1-0", "run1-1", "old-0")]
    reader.apply([Delivery(f"{n}-0", {"id": e["id"], "type": e["type"], "event": encode(e)})
                  for n, e in enumerate(events, 1)])
    reader.close()
    assert (consumed(path), consumed(path, "run1-")) == (3, 2)
