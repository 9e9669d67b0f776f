from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import time

import pytest
from click.testing import CliRunner

from signalling.app.cli import main
from signalling.billing.meter import Meter
from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price
from signalling.billing.store_sqlite import SqliteBillingStore
from signalling.core.database import Database

pytestmark = pytest.mark.integration


def seed(data_dir, t0: float) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        db = Database.in_dir(data_dir)
        meter = Meter(SqliteBillingStore(db), clock=lambda: t0 + 100)
        await meter.started("s", "alice", "bob", Price.per_minute(Money(1000, "JPY")), BillingPolicy(), at=t0)
        await meter.media_live("s", at=t0)
        await meter.ended("s", at=t0 + 90)
        db.close()

    asyncio.run(run())


def test_export_statement_and_refund(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t0 = int(time.time()) - 3600
    seed(tmp_path, t0)
    runner = CliRunner()
    d = ["--data-dir", str(tmp_path)]
    result = runner.invoke(main, ["billing", "export", "--from", str(t0), "--to", str(t0 + 3600), *d])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["account"], r["amount"]) for r in rows[:3]] == [("client:bob", "-1000"), ("expert:alice", "800"), ("platform", "200")]
    assert len(rows) == 6
    empty = runner.invoke(main, ["billing", "export", "--from", "2020-01-01", "--to", "2020-01-02", "--format", "json", *d])
    assert json.loads(empty.output) == []
    bad = runner.invoke(main, ["billing", "export", "--from", "soon", "--to", "2020-01-02", *d])
    assert bad.exit_code == 2 and "ISO 8601" in bad.output

    st = json.loads(runner.invoke(main, ["billing", "statement", "--expert", "alice", *d]).output)
    assert st["totals"] == {"JPY": {"sessions": 1, "gross": 2000, "fee": 400, "payout": 1600}}

    refunded = runner.invoke(main, ["billing", "refund", "s", "--reason", "test", *d])
    assert refunded.exit_code == 0, refunded.output
    assert json.loads(refunded.output) == {"created": True, "posting_id": "s:refund", "amount": "2000 JPY"}
    closed = runner.invoke(main, ["billing", "refund", "s", *d], env={"EXPERTCALL_REFUND_WINDOW_SECONDS": "60"})
    assert json.loads(closed.output)["created"] is False  # already refunded: the same refund
    missing = runner.invoke(main, ["billing", "refund", "nope", *d])
    assert missing.exit_code == 1 and "unknown_session" in missing.output


def test_consume_needs_redis(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("EXPERTCALL_REDIS_URL", raising=False)
    result = CliRunner().invoke(main, ["billing", "consume", "--group", "g", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no Redis configured" in result.output


def test_reconcile_finds_what_the_consumer_missed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from signalling.billing.feed_reader import Delivery, FeedReaderStore

    t0 = int(time.time()) - 3600
    seed(tmp_path, t0)  # two units and their events
    with sqlite3.connect(tmp_path / Database.FILENAME) as conn:
        events = [json.loads(body) for (body,) in conn.execute("SELECT body FROM metering_outbox ORDER BY seq")]
    runner = CliRunner()
    d = ["--data-dir", str(tmp_path)]

    def consumer_with(evts: list[dict]) -> str:  # type: ignore[type-arg]
        path = tmp_path / f"consumer-{len(evts)}.sqlite3"
        store = FeedReaderStore(path)
        store.apply([Delivery(f"{n}-0", {"id": e["id"], "type": e["type"], "event": json.dumps(e)})
                     for n, e in enumerate(evts)])
        store.close()
        return str(path)

    ok = runner.invoke(main, ["billing", "reconcile", "--group", "g", "--db", consumer_with(events + events), *d])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.output)
    assert (report["ok"], report["ledger_units"], report["consumer_units"]) == (True, 2, 2)

    lost = [e for e in events if e["id"] != "s:unit:1"]
    forged = {**events[2], "id": "x:unit:0", "subject": "x"}
    bad = runner.invoke(main, ["billing", "reconcile", "--group", "g", "--db", consumer_with(lost + [forged]), *d])
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["missing_from_consumer"] == ["s:unit:1"] and report["unknown_to_ledger"] == ["x:unit:0"]
    assert report["differences"] == []  # a lost unit and a forged one add up the same: only ids tell
    only_lost = runner.invoke(main, ["billing", "reconcile", "--group", "g", "--db", consumer_with(lost), *d])
    report = json.loads(only_lost.output)
    assert only_lost.exit_code == 1 and {(x["field"], x["ledger"], x["consumer"]) for x in report["differences"]} == {
        ("units", 2, 1), ("gross", 2000, 1000), ("fee", 400, 200), ("payout", 1600, 800)}
    missing_store = runner.invoke(main, ["billing", "reconcile", "--group", "nobody", *d])
    assert missing_store.exit_code == 1 and "no consumer store" in missing_store.output
