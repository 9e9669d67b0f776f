"""``BillingStore`` in the node's embedded SQLite file: the default, for one node.

Calls run inline on the event loop, as the rest of the embedded database does: writes are small
and local (the WAL checkpointer keeps fsyncs off the loop). One connection, ``BEGIN IMMEDIATE``
transactions, so a second process on the same file waits rather than interleaves.
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

from ..core.database import Database
from .outbox import encode
from .posting import LedgerConflict, Posting, SessionTotals
from .store import (OPENED_COLUMNS, BillingStore, OutboxRow, StaleOwner, StoredSession, WriteBatch,
                    side_column, stored_session)

MIGRATIONS: list[tuple[int, str]] = [
    # 1: the tables as the single-node meter made them (IF NOT EXISTS: a data dir from before
    # versioned migrations takes this step as done).
    (1, """
CREATE TABLE IF NOT EXISTS billing_sessions (
    session_id TEXT PRIMARY KEY,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    price TEXT NOT NULL,
    policy TEXT NOT NULL,
    budget_cap INTEGER,
    started_at REAL NOT NULL,
    ended_at REAL,
    end_reason TEXT
);
CREATE INDEX IF NOT EXISTS billing_sessions_open ON billing_sessions (session_id) WHERE ended_at IS NULL;
CREATE TABLE IF NOT EXISTS meter_heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_intervals (
    session_id TEXT NOT NULL REFERENCES billing_sessions (session_id),
    idx INTEGER NOT NULL,
    start REAL NOT NULL,
    end REAL,
    PRIMARY KEY (session_id, idx)
);
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
CREATE TABLE IF NOT EXISTS metering_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    relayed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS metering_outbox_unrelayed ON metering_outbox (seq) WHERE relayed = 0;
CREATE TABLE IF NOT EXISTS webhook_cursors (
    url TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS expert_fees (
    expert_id TEXT PRIMARY KEY,
    fee_bps INTEGER NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    set_by TEXT NOT NULL,
    set_at REAL NOT NULL
);
"""),
    # 2: a meter per node (its own heartbeat, the sessions it owns) and fencing tokens.
    (2, """
ALTER TABLE billing_sessions ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE billing_sessions ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
CREATE TABLE meter_heartbeats (
    node_id TEXT PRIMARY KEY,
    at REAL NOT NULL
);
INSERT INTO meter_heartbeats (node_id, at) SELECT '', at FROM meter_heartbeat;
DROP TABLE meter_heartbeat;
"""),
    # 3: a client's history and an expert's sessions, newest first.
    (3, """
CREATE INDEX billing_sessions_client ON billing_sessions (client_id, started_at);
CREATE INDEX billing_sessions_expert ON billing_sessions (expert_id, started_at);
"""),
]

_POSTING_COLUMNS = "id, session_id, kind, unit_index, expert_id, client_id, currency, gross, fee, payout, at, memo"


class SqliteBillingStore(BillingStore):
    kind = "sqlite"

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate_versions("billing", MIGRATIONS)

    async def close(self) -> None:
        return None  # the database belongs to the application

    # --- the meter ------------------------------------------------------------------------------

    async def commit(self, batch: WriteBatch) -> list[bool]:
        return self.commit_now(batch)

    def commit_now(self, batch: WriteBatch) -> list[bool]:
        db = self.db
        with db.transaction():
            db.executemany(
                f"INSERT INTO billing_sessions ({OPENED_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                [o.row(batch.fences.get(o.session_id, 0)) for o in batch.opened],
            )
            self._fence(batch.fences)
            db.executemany(
                "INSERT INTO billing_intervals (session_id, idx, start) VALUES (?,?,?)", batch.intervals_opened
            )
            db.executemany(
                "UPDATE billing_intervals SET end = ? WHERE session_id = ? AND idx = ?",
                [(end, sid, idx) for sid, idx, end in batch.intervals_closed],
            )
            db.executemany(
                "UPDATE billing_sessions SET budget_cap = ? WHERE session_id = ?",
                [(cap, sid) for sid, cap in batch.budgets],
            )
            db.executemany(
                "UPDATE billing_sessions SET ended_at = ?, end_reason = ? WHERE session_id = ?",
                [(at, reason, sid) for sid, at, reason in batch.ended],
            )
            new = self._post(batch.postings)
            db.executemany(
                "INSERT OR IGNORE INTO metering_outbox (id, type, subject, body) VALUES (?, ?, ?, ?)",
                [(e["id"], e["type"], e["subject"], encode(e)) for e in batch.events],
            )
        return new

    def _fence(self, fences: dict[str, int]) -> None:
        # One lookup per 500 sessions, not one per session: a tick commits thousands of them.
        stored: dict[str, int] = {}
        sids = list(fences)
        for start in range(0, len(sids), 500):
            chunk = sids[start:start + 500]
            stored.update((r[0], r[1]) for r in self.db.fetchall(
                f"SELECT session_id, fence FROM billing_sessions WHERE session_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ))
        stale = [sid for sid, fence in stored.items() if fence > fences[sid]]
        if stale:
            raise StaleOwner(stale)
        self.db.executemany(
            "UPDATE billing_sessions SET fence = ? WHERE session_id = ?",
            [(fences[sid], sid) for sid, fence in stored.items() if fence < fences[sid]],
        )

    def _post(self, postings: list[Posting]) -> list[bool]:
        if not postings:
            return []
        existing: dict[str, Posting] = {}
        # One lookup for the whole batch: replays are rare, and a row-by-row INSERT OR IGNORE
        # costs a statement per posting on the meter's hot path.
        for start in range(0, len(postings), 500):
            ids = [p.id for p in postings[start:start + 500]]
            rows = self.db.fetchall(
                f"SELECT * FROM ledger_postings WHERE id IN ({','.join('?' * len(ids))})", ids
            )
            existing.update((r["id"], Posting.from_row(r)) for r in rows)
        new = []
        for p in postings:
            old = existing.get(p.id)
            if old is None:
                new.append(p)
            elif not old.same_effect(p):
                raise LedgerConflict(f"posting {p.id} exists with different content")
        if len({p.id for p in new}) != len(new):
            raise LedgerConflict("a batch holds the same posting id twice")
        self.db.executemany(
            f"INSERT INTO ledger_postings ({_POSTING_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [p.row() for p in new],
        )
        self.db.executemany(
            "INSERT INTO ledger_entries (posting_id, leg, account, amount, currency, at) VALUES (?,?,?,?,?,?)",
            [(p.id, leg, acct, amount, p.currency, p.at) for p in new for leg, acct, amount in p.entries()],
        )
        return [p.id not in existing for p in postings]

    async def session(self, session_id: str) -> StoredSession | None:
        row = self.db.fetchone("SELECT * FROM billing_sessions WHERE session_id = ?", (session_id,))
        return None if row is None else self._stored(row)

    async def session_ended(self, session_id: str) -> bool | None:
        row = self.db.fetchone("SELECT ended_at FROM billing_sessions WHERE session_id = ?", (session_id,))
        return None if row is None else row["ended_at"] is not None

    async def open_sessions(self) -> list[StoredSession]:
        rows = self.db.fetchall("SELECT * FROM billing_sessions WHERE ended_at IS NULL ORDER BY started_at, session_id")
        return [self._stored(r) for r in rows]

    async def sessions_of(self, side: str, user_id: str, start: float, end: float, limit: int) -> list[StoredSession]:
        column = side_column(side)
        rows = self.db.fetchall(
            f"SELECT * FROM billing_sessions WHERE {column} = ? AND started_at >= ? AND started_at < ?"
            " ORDER BY started_at DESC, session_id LIMIT ?",
            (user_id, start, end, limit),
        )
        return [self._stored(r) for r in rows]

    def _stored(self, row: Any) -> StoredSession:
        sid = row["session_id"]
        intervals = [(r["start"], r["end"]) for r in self.db.fetchall(
            "SELECT start, end FROM billing_intervals WHERE session_id = ? ORDER BY idx", (sid,))]
        totals = self.db.fetchone(
            "SELECT count(*), coalesce(sum(gross), 0), max(at) FROM ledger_postings"
            " WHERE session_id = ? AND kind = 'charge'", (sid,))
        return stored_session(row, intervals, totals)

    async def beat(self, node_id: str, at: float) -> None:
        self.db.execute(
            "INSERT INTO meter_heartbeats (node_id, at) VALUES (?, ?)"
            " ON CONFLICT (node_id) DO UPDATE SET at = excluded.at",
            (node_id, at),
        )

    async def last_beat(self, node_id: str) -> float | None:
        row = self.db.fetchone("SELECT at FROM meter_heartbeats WHERE node_id = ?", (node_id,))
        return None if row is None else float(row["at"])

    # --- the ledger -----------------------------------------------------------------------------

    async def posting(self, posting_id: str) -> Posting | None:
        row = self.db.fetchone("SELECT * FROM ledger_postings WHERE id = ?", (posting_id,))
        return Posting.from_row(row) if row else None

    async def postings(self, session_id: str) -> list[Posting]:
        rows = self.db.fetchall(
            "SELECT * FROM ledger_postings WHERE session_id = ? ORDER BY at, kind, unit_index", (session_id,)
        )
        return [Posting.from_row(r) for r in rows]

    async def session_totals(self, session_id: str) -> SessionTotals:
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

    async def balance(self, account: str, currency: str) -> int:
        row = self.db.fetchone(
            "SELECT coalesce(sum(amount), 0) AS total FROM ledger_entries WHERE account = ? AND currency = ?",
            (account, currency),
        )
        return int(row["total"]) if row else 0

    async def unbalanced_postings(self) -> list[str]:
        rows = self.db.fetchall(
            "SELECT posting_id FROM ledger_entries GROUP BY posting_id HAVING sum(amount) != 0"
        )
        return [r["posting_id"] for r in rows]

    async def statement_rows(self, expert_id: str, start: float, end: float) -> list[dict[str, Any]]:
        rows = self.db.fetchall(
            "SELECT session_id, client_id, currency, kind, count(*) AS n, sum(gross) AS gross, sum(fee) AS fee,"
            " sum(payout) AS payout, min(at) AS first_at, max(at) AS last_at FROM ledger_postings"
            " WHERE expert_id = ? AND at >= ? AND at < ? GROUP BY session_id, kind, client_id, currency"
            " ORDER BY first_at, session_id, kind",
            (expert_id, start, end),
        )
        return [dict(r) for r in rows]

    async def export_rows(self, start: float, end: float) -> list[dict[str, Any]]:
        rows = self.db.fetchall(
            "SELECT e.posting_id || ':' || e.leg AS entry_id, e.posting_id, p.session_id, p.kind, p.unit_index,"
            " e.account, e.amount, e.currency, e.at, p.expert_id, p.client_id, p.memo FROM ledger_entries e"
            " JOIN ledger_postings p ON p.id = e.posting_id WHERE e.at >= ? AND e.at < ?"
            " ORDER BY e.at, e.posting_id, e.leg",
            (start, end),
        )
        return [dict(r) for r in rows]

    async def unit_totals(self) -> dict[tuple[str, str], dict[str, int]]:
        rows = self.db.fetchall(
            "SELECT expert_id, currency, sum(CASE WHEN kind = 'charge' THEN 1 ELSE 0 END) AS units,"
            " sum(CASE WHEN kind = 'charge' THEN gross ELSE -gross END) AS gross,"
            " sum(CASE WHEN kind = 'charge' THEN fee ELSE -fee END) AS fee,"
            " sum(CASE WHEN kind = 'charge' THEN payout ELSE -payout END) AS payout"
            " FROM ledger_postings GROUP BY expert_id, currency"
        )
        return {(r["expert_id"], r["currency"]): {k: int(r[k]) for k in ("units", "gross", "fee", "payout")} for r in rows}

    # --- the outbox -----------------------------------------------------------------------------

    async def events_after(self, cursor: int, limit: int) -> list[OutboxRow]:
        rows = self.db.fetchall(
            "SELECT seq, id, type, body FROM metering_outbox WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, limit)
        )
        return [OutboxRow(r["seq"], r["id"], r["type"], r["body"]) for r in rows]

    async def last_seq(self) -> int:
        row = self.db.fetchone("SELECT coalesce(max(seq), 0) AS seq FROM metering_outbox")
        return int(row["seq"]) if row else 0

    async def count_unrelayed(self) -> int:
        row = self.db.fetchone("SELECT count(*) AS n FROM metering_outbox WHERE relayed = 0")
        return int(row["n"]) if row else 0

    @contextlib.asynccontextmanager
    async def relay_batch(self, limit: int) -> AsyncIterator[list[OutboxRow] | None]:
        # One process owns this file's relay: the application runs one relay task.
        rows = [OutboxRow(r["seq"], r["id"], r["type"], r["body"]) for r in self.db.fetchall(
            "SELECT seq, id, type, body FROM metering_outbox WHERE relayed = 0 ORDER BY seq LIMIT ?", (limit,))]
        yield rows
        if rows:
            with self.db.transaction():
                self.db.executemany("UPDATE metering_outbox SET relayed = 1 WHERE seq = ?", [(r.seq,) for r in rows])

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        yield True  # one node: nobody to share with

    async def webhook_cursor(self, url: str) -> int:
        row = self.db.fetchone("SELECT seq FROM webhook_cursors WHERE url = ?", (url,))
        return int(row["seq"]) if row else 0

    async def set_webhook_cursor(self, url: str, seq: int) -> None:
        self.db.execute(
            "INSERT INTO webhook_cursors (url, seq) VALUES (?, ?) ON CONFLICT (url) DO UPDATE SET seq = excluded.seq",
            (url, seq),
        )

    # --- fees -----------------------------------------------------------------------------------

    async def fee_override(self, expert_id: str) -> int | None:
        row = self.db.fetchone("SELECT fee_bps FROM expert_fees WHERE expert_id = ?", (expert_id,))
        return None if row is None else int(row["fee_bps"])

    async def set_fee_override(self, expert_id: str, fee_bps: int | None, by: str, at: float) -> None:
        if fee_bps is None:
            self.db.execute("DELETE FROM expert_fees WHERE expert_id = ?", (expert_id,))
            return
        self.db.execute(
            "INSERT INTO expert_fees (expert_id, fee_bps, set_by, set_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (expert_id) DO UPDATE SET fee_bps = excluded.fee_bps, set_by = excluded.set_by, "
            "set_at = excluded.set_at",
            (expert_id, fee_bps, by, at),
        )
