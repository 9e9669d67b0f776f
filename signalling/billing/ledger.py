"""The double-entry ledger: immutable postings of balanced entries, in minor units.

A posting (one charged unit, one per-session charge, one refund) has three entries that sum to
zero: the client's account is debited the gross, the platform credited its fee and the expert
credited the payout; a refund is the same three entries reversed. Posting ids are chosen by the
caller and deterministic (``<session>:unit:<n>``, ``<session>:refund``): posting an id again with
the same content is a harmless replay, with different content a ``LedgerConflict``. SQLite
triggers refuse UPDATE and DELETE: a mistake is corrected by a new, reversing posting.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any, Iterable

from ..database import Database
from .money import Money
from .times import rfc3339

CHARGE = "charge"
REFUND = "refund"
PLATFORM_ACCOUNT = "platform"

DDL = """
CREATE TABLE IF NOT EXISTS ledger_postings (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('charge', 'refund')),
    unit_index INTEGER,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    gross INTEGER NOT NULL CHECK (gross >= 0),
    fee INTEGER NOT NULL CHECK (fee >= 0),
    payout INTEGER NOT NULL CHECK (payout >= 0),
    at REAL NOT NULL,
    memo TEXT NOT NULL DEFAULT '',
    CHECK (fee + payout = gross)
);
CREATE INDEX IF NOT EXISTS ledger_postings_session ON ledger_postings (session_id);
CREATE INDEX IF NOT EXISTS ledger_postings_expert ON ledger_postings (expert_id, at);
CREATE INDEX IF NOT EXISTS ledger_postings_at ON ledger_postings (at);
CREATE TABLE IF NOT EXISTS ledger_entries (
    posting_id TEXT NOT NULL REFERENCES ledger_postings (id),
    leg TEXT NOT NULL CHECK (leg IN ('client', 'platform', 'expert')),
    account TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (posting_id, leg)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_entries_account ON ledger_entries (account, currency);
CREATE TRIGGER IF NOT EXISTS ledger_postings_no_update BEFORE UPDATE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'ledger postings are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_postings_no_delete BEFORE DELETE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'ledger postings are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_entries_no_update BEFORE UPDATE ON ledger_entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_entries_no_delete BEFORE DELETE ON ledger_entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
"""


class LedgerConflict(Exception):
    """A posting id that exists with different content."""

    code = "ledger_conflict"


def client_account(client_id: str) -> str:
    return f"client:{client_id}"


def expert_account(expert_id: str) -> str:
    return f"expert:{expert_id}"


@dataclass(frozen=True)
class Posting:
    id: str
    session_id: str
    kind: str
    unit_index: int | None
    expert_id: str
    client_id: str
    gross: Money
    fee: Money
    payout: Money
    at: float
    memo: str = ""

    def __post_init__(self) -> None:
        if self.kind not in (CHARGE, REFUND):
            raise ValueError(f"unknown posting kind {self.kind!r}")
        currencies = {self.gross.currency, self.fee.currency, self.payout.currency}
        if len(currencies) != 1:
            raise ValueError("a posting has one currency")
        if min(self.gross.amount, self.fee.amount, self.payout.amount) < 0:
            raise ValueError("posting amounts are non-negative; the kind gives the direction")
        if self.fee.amount + self.payout.amount != self.gross.amount:
            raise ValueError("fee + payout must equal gross")

    @property
    def currency(self) -> str:
        return self.gross.currency

    def entries(self) -> list[tuple[str, str, int]]:
        """(leg, account, signed amount); they sum to zero. An entry's id is ``<posting id>:<leg>``."""
        sign = -1 if self.kind == CHARGE else 1
        return [
            ("client", client_account(self.client_id), sign * self.gross.amount),
            ("platform", PLATFORM_ACCOUNT, -sign * self.fee.amount),
            ("expert", expert_account(self.expert_id), -sign * self.payout.amount),
        ]

    def _row(self) -> tuple[Any, ...]:
        return (
            self.id, self.session_id, self.kind, self.unit_index, self.expert_id, self.client_id,
            self.currency, self.gross.amount, self.fee.amount, self.payout.amount, self.at, self.memo,
        )

    @staticmethod
    def from_row(row: Any) -> "Posting":
        c = row["currency"]
        return Posting(
            id=row["id"], session_id=row["session_id"], kind=row["kind"], unit_index=row["unit_index"],
            expert_id=row["expert_id"], client_id=row["client_id"], gross=Money(row["gross"], c),
            fee=Money(row["fee"], c), payout=Money(row["payout"], c), at=row["at"], memo=row["memo"],
        )

    def same_effect(self, other: "Posting") -> bool:
        """Equal in everything that moves money; the time and memo of a replay may differ."""
        return self._row()[:10] == other._row()[:10]


@dataclass(frozen=True)
class SessionTotals:
    currency: str | None
    units: int
    last_unit: int | None
    gross: int
    fee: int
    payout: int
    refunded: bool


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(DDL)

    def post_many(self, postings: Iterable[Posting]) -> list[bool]:
        """Insert postings (inside one transaction, joining the caller's). True: new, False: replay."""
        batch = list(postings)
        if len(batch) != len({p.id for p in batch}):
            raise LedgerConflict("a batch holds the same posting id twice")
        existing: dict[str, Posting] = {}
        with self.db.transaction():
            # One lookup for the whole batch: replays are rare, and a row-by-row INSERT OR IGNORE
            # costs a statement per posting on the meter's hot path.
            for start in range(0, len(batch), 500):
                ids = [p.id for p in batch[start:start + 500]]
                rows = self.db.fetchall(
                    f"SELECT * FROM ledger_postings WHERE id IN ({','.join('?' * len(ids))})", ids
                )
                existing.update((r["id"], Posting.from_row(r)) for r in rows)
            new = []
            for p in batch:
                old = existing.get(p.id)
                if old is None:
                    new.append(p)
                elif not old.same_effect(p):
                    raise LedgerConflict(f"posting {p.id} exists with different content")
            self.db.executemany(
                "INSERT INTO ledger_postings (id, session_id, kind, unit_index, expert_id, client_id, currency,"
                " gross, fee, payout, at, memo) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [p._row() for p in new],
            )
            self.db.executemany(
                "INSERT INTO ledger_entries (posting_id, leg, account, amount, currency, at) VALUES (?,?,?,?,?,?)",
                [(p.id, leg, acct, amount, p.currency, p.at) for p in new for leg, acct, amount in p.entries()],
            )
        return [p.id not in existing for p in batch]

    def post(self, posting: Posting) -> bool:
        return self.post_many([posting])[0]

    def get(self, posting_id: str) -> Posting | None:
        row = self.db.fetchone("SELECT * FROM ledger_postings WHERE id = ?", (posting_id,))
        return Posting.from_row(row) if row else None

    def postings(self, session_id: str) -> list[Posting]:
        rows = self.db.fetchall(
            "SELECT * FROM ledger_postings WHERE session_id = ? ORDER BY at, unit_index", (session_id,)
        )
        return [Posting.from_row(r) for r in rows]

    def session_totals(self, session_id: str) -> SessionTotals:
        row = self.db.fetchone(
            "SELECT min(currency) AS currency, count(*) AS units, max(unit_index) AS last_unit,"
            " coalesce(sum(gross), 0) AS gross, coalesce(sum(fee), 0) AS fee,"
            " coalesce(sum(payout), 0) AS payout FROM ledger_postings WHERE session_id = ? AND kind = 'charge'",
            (session_id,),
        )
        refunded = self.db.fetchone(
            "SELECT 1 FROM ledger_postings WHERE session_id = ? AND kind = 'refund'", (session_id,)
        )
        assert row is not None
        return SessionTotals(
            row["currency"], row["units"], row["last_unit"], row["gross"], row["fee"], row["payout"],
            refunded is not None,
        )

    def balance(self, account: str, currency: str) -> Money:
        row = self.db.fetchone(
            "SELECT coalesce(sum(amount), 0) AS total FROM ledger_entries WHERE account = ? AND currency = ?",
            (account, currency),
        )
        return Money(int(row["total"]) if row else 0, currency)

    def unbalanced_postings(self) -> list[str]:
        """Posting ids whose entries do not sum to zero (an audit query; always empty)."""
        rows = self.db.fetchall(
            "SELECT posting_id FROM ledger_entries GROUP BY posting_id HAVING sum(amount) != 0"
        )
        return [r["posting_id"] for r in rows]

    def statement(self, expert_id: str, start: float, end: float) -> dict[str, Any]:
        """An expert's earnings between two times: one line per session, totals per currency.
        Refunds count in the period they were made, as negative lines."""
        rows = self.db.fetchall(
            "SELECT session_id, client_id, currency, kind, count(*) AS n, sum(gross) AS gross, sum(fee) AS fee,"
            " sum(payout) AS payout, min(at) AS first_at, max(at) AS last_at FROM ledger_postings"
            " WHERE expert_id = ? AND at >= ? AND at < ? GROUP BY session_id, kind ORDER BY first_at",
            (expert_id, start, end),
        )
        lines = []
        totals: dict[str, dict[str, int]] = {}
        for r in rows:
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
        return {
            "expert_id": expert_id,
            "from": rfc3339(start),
            "to": rfc3339(end),
            "lines": lines,
            "totals": totals,
        }

    def export(self, start: float, end: float) -> list[dict[str, Any]]:
        """Every entry posted in [start, end), in posting order: what an accounting system imports."""
        rows = self.db.fetchall(
            "SELECT e.posting_id || ':' || e.leg AS entry_id, e.posting_id, p.session_id, p.kind, p.unit_index, e.account, e.amount,"
            " e.currency, e.at, p.expert_id, p.client_id, p.memo FROM ledger_entries e"
            " JOIN ledger_postings p ON p.id = e.posting_id WHERE e.at >= ? AND e.at < ?"
            " ORDER BY e.at, e.posting_id, e.leg",
            (start, end),
        )
        return [{**dict(r), "at": rfc3339(r["at"])} for r in rows]


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
