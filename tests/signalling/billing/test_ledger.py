from __future__ import annotations

import csv
import io
import json

import pytest

from signalling.billing.ledger import CHARGE, Ledger, LedgerConflict, Posting, to_csv, to_json
from signalling.billing.money import Money
from signalling.billing.pricing import split

from ...billing_helpers import T0
from ...stores import raw_execute


def charge(pid: str, gross: int, at: float = T0, expert: str = "e", session: str = "s") -> Posting:
    s = split(Money(gross, "USD"), 2000)
    return Posting(pid, session, CHARGE, 0, expert, "c", s.gross, s.fee, s.payout, at)


@pytest.fixture
def ledger(billing_store) -> Ledger:  # type: ignore[no-untyped-def]
    return Ledger(billing_store)


async def test_replay_is_harmless_and_different_content_conflicts(ledger) -> None:  # type: ignore[no-untyped-def]
    assert await ledger.post(charge("s:unit:0", 150)) is True
    assert await ledger.post(charge("s:unit:0", 150, at=T0 + 5)) is False  # a retry at another time
    with pytest.raises(LedgerConflict):
        await ledger.post(charge("s:unit:0", 151))
    assert len(await ledger.export(0, T0 + 10)) == 3
    assert await ledger.unbalanced_postings() == []


async def test_a_conflict_rolls_back_the_whole_batch(ledger) -> None:  # type: ignore[no-untyped-def]
    await ledger.post(charge("s:unit:0", 150))
    with pytest.raises(LedgerConflict):
        await ledger.post_many([charge("s:unit:1", 150), charge("s:unit:0", 999)])
    assert await ledger.get("s:unit:1") is None
    with pytest.raises(LedgerConflict, match="twice"):
        await ledger.post_many([charge("s:unit:2", 150), charge("s:unit:2", 150)])


async def test_entries_are_immutable(ledger) -> None:  # type: ignore[no-untyped-def]
    await ledger.post(charge("s:unit:0", 150))
    for sql in ("UPDATE ledger_entries SET amount = 0", "DELETE FROM ledger_postings",
                "UPDATE ledger_postings SET gross = 1"):
        with pytest.raises(Exception, match="immutable"):
            await raw_execute(ledger.store, sql)


def test_postings_must_balance() -> None:
    with pytest.raises(ValueError, match="fee \\+ payout"):
        Posting("x", "s", CHARGE, 0, "e", "c", Money(100, "USD"), Money(20, "USD"), Money(81, "USD"), T0)
    with pytest.raises(ValueError, match="one currency"):
        Posting("x", "s", CHARGE, 0, "e", "c", Money(100, "USD"), Money(20, "EUR"), Money(80, "USD"), T0)


async def test_statement_and_export(ledger) -> None:  # type: ignore[no-untyped-def]
    await ledger.post(charge("a:unit:0", 1000, at=T0, session="a"))
    await ledger.post(charge("a:unit:1", 1000, at=T0 + 60, session="a"))
    await ledger.post(charge("b:unit:0", 500, at=T0 + 100, session="b"))
    await ledger.post(charge("x:unit:0", 700, at=T0 + 100, expert="other", session="x"))
    await ledger.post(charge("late:unit:0", 700, at=T0 + 10_000, session="late"))
    st = await ledger.statement("e", T0, T0 + 1000)
    assert [(line["session_id"], line["units"], line["gross"]) for line in st["lines"]] == [("a", 2, 2000), ("b", 1, 500)]
    assert st["totals"] == {"USD": {"sessions": 2, "gross": 2500, "fee": 500, "payout": 2000}}
    rows = await ledger.export(T0, T0 + 1000)
    assert len(rows) == 12 and sum(r["amount"] for r in rows) == 0
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert parsed[0]["entry_id"] == "a:unit:0:client" and parsed[0]["amount"] == "-1000"
    assert json.loads(to_json(rows))[0]["at"] == "2027-01-15T08:00:00.000000Z"
