"""The double-entry ledger: immutable postings of balanced entries, in minor units.

A posting (one charged unit, one per-session charge, one refund) has three entries that sum to
zero: the client's account is debited the gross, the platform credited its fee and the expert
credited the payout; a refund is the same three entries reversed. Posting ids are chosen by the
caller and deterministic (``<session>:unit:<n>``, ``<session>:refund``) and are the primary key of
the postings table: posting an id again with the same content is a harmless replay, with
different content a ``LedgerConflict``, whichever node tries. The stores refuse UPDATE and DELETE
(triggers): a mistake is corrected by a new, reversing posting.

``Ledger`` is the reading (and refund-posting) side over the ``BillingStore``; the Meter writes
its postings in its own batches.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterable

from .money import Money
from .posting import (
    CHARGE,
    PLATFORM_ACCOUNT,
    REFUND,
    LedgerConflict,
    Posting,
    SessionTotals,
    client_account,
    expert_account,
)
from .store import BillingStore, WriteBatch
from .times import rfc3339

__all__ = [
    "CHARGE", "PLATFORM_ACCOUNT", "REFUND", "LedgerConflict", "Posting", "SessionTotals", "client_account",
    "expert_account", "Ledger", "EXPORT_FIELDS", "to_csv", "to_json",
]


class Ledger:
    def __init__(self, store: BillingStore) -> None:
        self.store = store

    async def post_many(self, postings: Iterable[Posting], events: Iterable[dict[str, Any]] = ()) -> list[bool]:
        """Insert postings (and the events describing them) in one transaction. True: new, False: replay."""
        batch = list(postings)
        if len(batch) != len({p.id for p in batch}):
            raise LedgerConflict("a batch holds the same posting id twice")
        return await self.store.commit(WriteBatch(postings=batch, events=list(events)))

    async def post(self, posting: Posting) -> bool:
        return (await self.post_many([posting]))[0]

    async def get(self, posting_id: str) -> Posting | None:
        return await self.store.posting(posting_id)

    async def postings(self, session_id: str) -> list[Posting]:
        return await self.store.postings(session_id)

    async def session_totals(self, session_id: str) -> SessionTotals:
        return await self.store.session_totals(session_id)

    async def balance(self, account: str, currency: str) -> Money:
        return Money(await self.store.balance(account, currency), currency)

    async def unbalanced_postings(self) -> list[str]:
        return await self.store.unbalanced_postings()

    async def statement(self, expert_id: str, start: float, end: float) -> dict[str, Any]:
        """An expert's earnings between two times: one line per session, totals per currency.
        Refunds count in the period they were made, as negative lines."""
        lines = []
        totals: dict[str, dict[str, int]] = {}
        for r in await self.store.statement_rows(expert_id, start, end):
            sign = 1 if r["kind"] == CHARGE else -1
            line = {
                "session_id": r["session_id"],
                "client_id": r["client_id"],
                "kind": r["kind"],
                "units": r["n"] if r["kind"] == CHARGE else 0,
                "currency": r["currency"],
                "gross": sign * r["gross"],
                "fee": sign * r["fee"],
                "payout": sign * r["payout"],
                "from": rfc3339(r["first_at"]),
                "to": rfc3339(r["last_at"]),
            }
            lines.append(line)
            t = totals.setdefault(r["currency"], {"sessions": 0, "gross": 0, "fee": 0, "payout": 0})
            t["sessions"] += 1 if r["kind"] == CHARGE else 0
            for k in ("gross", "fee", "payout"):
                t[k] += line[k]
        return {"expert_id": expert_id, "from": rfc3339(start), "to": rfc3339(end), "lines": lines, "totals": totals}

    async def export(self, start: float, end: float) -> list[dict[str, Any]]:
        """Every entry posted in [start, end), in posting order: what an accounting system imports."""
        return [{**r, "at": rfc3339(r["at"])} for r in await self.store.export_rows(start, end)]


EXPORT_FIELDS = (
    "entry_id", "posting_id", "session_id", "kind", "unit_index", "account", "amount", "currency", "at",
    "expert_id", "client_id", "memo",
)


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=1)
