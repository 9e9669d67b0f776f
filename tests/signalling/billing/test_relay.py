from __future__ import annotations

import asyncio
import contextlib

import pytest

from signalling.billing.feed_reader import FeedReaderStore, MeteringFeedReader
from signalling.billing.meter import Meter
from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price
from signalling.billing.relay import RedisRelay
from signalling.billing.store_postgres import PostgresBillingStore
from signalling.core.postgres import connect

from ...billing_helpers import T0, ManualClock, advance, make_meter


async def test_relay_publishes_in_order_and_marks_only_after_xadd(tmp_path, redis, stream) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    meter = make_meter(tmp_path, clock)
    await meter.started("s", "e", "c", Price.per_minute(Money(100, "USD")), BillingPolicy(), at=T0)
    await meter.media_live("s", at=T0)
    await advance(meter, clock, T0 + 150)
    await meter.ended("s", at=T0 + 150)
    relay = RedisRelay(meter.outbox, redis, stream, batch=2)
    ids = [r.id for r in await meter.outbox.after(0, 100)]

    # Redis accepts the first batch but the process dies before marking it: it is sent again.
    original = meter.store.relay_batch

    @contextlib.asynccontextmanager
    async def crash(limit):  # type: ignore[no-untyped-def]
        async with original(limit) as rows:
            yield rows
            raise RuntimeError("killed")
    meter.store.relay_batch = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await relay.relay_once()
    meter.store.relay_batch = original  # type: ignore[method-assign]
    while await relay.relay_once():
        pass
    assert await relay.relay_once() == 0
    entries = await redis.xrange(stream)
    published = [f[b"id"].decode() for _, f in entries]
    assert published == ids[:2] + ids  # at least once, in outbox order
    assert await meter.outbox.count_unrelayed() == 0

    store = FeedReaderStore(tmp_path / "consumer.sqlite3")
    consumer = MeteringFeedReader(redis, store, stream=stream, group="g", name="c1", block_ms=50)
    await consumer.run(idle_exit=0.1)
    assert store.count() == len(ids) and consumer.received == len(ids) + 2
    assert store.totals() == {("e", "USD"): {"units": 3, "gross": 300, "fee": 60, "payout": 240}}


async def test_consumer_crash_between_commit_and_ack_counts_once(tmp_path, redis, stream) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    meter = make_meter(tmp_path, clock)
    await meter.started("s", "e", "c", Price.per_session(Money(900, "JPY")), BillingPolicy(), at=T0)
    await meter.media_live("s", at=T0)
    await meter.ended("s", at=T0 + 61)
    await meter.refund("s", by="admin", at=T0 + 100)
    await RedisRelay(meter.outbox, redis, stream).relay_once()
    store = FeedReaderStore(tmp_path / "consumer.sqlite3")
    consumer = MeteringFeedReader(redis, store, stream=stream, group="g", name="c1", block_ms=50)

    async def lost_ack(*args):  # type: ignore[no-untyped-def]
        raise ConnectionError("killed after commit")
    consumer.redis = type("R", (), {})()  # only xack fails: delegate the rest
    for name in ("xgroup_create", "xreadgroup", "xautoclaim"):
        setattr(consumer.redis, name, getattr(redis, name))
    setattr(consumer.redis, "xack", lost_ack)
    with pytest.raises(ConnectionError):
        await consumer.run(idle_exit=0.1)
    assert store.count() == 5
    restarted = MeteringFeedReader(redis, store, stream=stream, group="g", name="c1", block_ms=50)
    await restarted.run(idle_exit=0.1)
    assert (restarted.received, restarted.counted, store.count()) == (5, 0, 5)
    assert store.totals() == {("e", "JPY"): {"units": 1, "gross": 0, "fee": 0, "payout": 0}}
    assert (await redis.xpending(stream, "g"))["pending"] == 0


async def test_a_closing_relay_publishes_what_another_nodes_relay_read_too_early(postgres_url, redis, stream, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two nodes stopping together: the other node's relay holds the outbox with a read taken
    before this node's last events committed, and finds nothing. This node's relay must not take
    "the outbox is taken" for "the outbox is empty", or those events stay unpublished."""
    pool = await connect(postgres_url)
    try:
        store = await PostgresBillingStore.open(pool)
        meter = Meter(store, node_id="n1", clock=ManualClock())
        held, release = asyncio.Event(), asyncio.Event()

        async def other_node() -> None:
            async with store.relay_batch(10) as rows:
                assert rows == []
                held.set()
                await release.wait()
        other = asyncio.create_task(other_node())
        await held.wait()
        await meter.started("s", "e", "c", Price.per_minute(Money(100, "USD")), BillingPolicy(), at=T0)
        await meter.ended("s", at=T0 + 1)
        original = store.relay_batch

        @contextlib.asynccontextmanager
        async def refused_then_released(limit):  # type: ignore[no-untyped-def]
            async with original(limit) as rows:
                yield rows
            if not rows:
                release.set()  # the other relay ends its round right after refusing this one
        monkeypatch.setattr(store, "relay_batch", refused_then_released)
        relay = RedisRelay(meter.outbox, redis, stream)
        relay.start()
        await relay.close()
        await other
        assert await store.count_unrelayed() == 0
        assert [f[b"id"] for _, f in await redis.xrange(stream)] == [b"s:started", b"s:ended"]
    finally:
        await pool.close()
