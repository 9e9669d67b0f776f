"""``BillingStore`` in PostgreSQL: one ledger that every node writes (``--database postgresql://``).

- Uniqueness is the database's: a posting's deterministic id is the primary key, so a second
  charge of the same unit cannot be written by any node (``ON CONFLICT DO NOTHING``, then the
  stored row is compared: same effect, a replay; different, ``LedgerConflict`` and a rollback).
- Fencing: each session row holds the highest fencing token that wrote it. A batch first reads
  its sessions' tokens ``FOR SHARE`` (a takeover's update then waits for it) and is refused with
  ``StaleOwner`` when one has moved past the token it carries.
- The outbox's cursor (``seq``) grows in commit order: a batch with events takes a transaction
  advisory lock just before inserting them, so no transaction holding a smaller cursor can
  commit after a reader has seen a larger one. ``GET /api/metering?after=`` never skips a row.
- One relay at a time across the nodes: ``relay_batch`` runs under ``pg_try_advisory_xact_lock``;
  a node that does not get it relays nothing this round.
- Batches go as ``unnest`` arrays: one statement per table per batch, whatever its size.
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

from ..core.postgres import lock_key, migrate
from .outbox import encode
from .posting import LedgerConflict, Posting, SessionTotals
from .store import (OPENED_COLUMNS, BillingStore, OutboxRow, StaleOwner, StoredSession, WriteBatch,
                    side_column, stored_session)

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE billing_sessions (
    session_id TEXT PRIMARY KEY,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    price TEXT NOT NULL,
    policy TEXT NOT NULL,
    budget_cap BIGINT,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    end_reason TEXT,
    owner TEXT NOT NULL DEFAULT '',
    fence BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX billing_sessions_open ON billing_sessions (started_at) WHERE ended_at IS NULL;
CREATE TABLE billing_intervals (
    session_id TEXT NOT NULL REFERENCES billing_sessions (session_id),
    idx INTEGER NOT NULL,
    start DOUBLE PRECISION NOT NULL,
    "end" DOUBLE PRECISION,
    PRIMARY KEY (session_id, idx)
);
CREATE TABLE meter_heartbeats (
    node_id TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE ledger_postings (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('charge', 'refund')),
    unit_index INTEGER,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    gross BIGINT NOT NULL CHECK (gross >= 0),
    fee BIGINT NOT NULL CHECK (fee >= 0),
    payout BIGINT NOT NULL CHECK (payout >= 0),
    at DOUBLE PRECISION NOT NULL,
    memo TEXT NOT NULL DEFAULT '',
    CHECK (fee + payout = gross)
);
CREATE INDEX ledger_postings_session ON ledger_postings (session_id);
CREATE INDEX ledger_postings_expert ON ledger_postings (expert_id, at);
CREATE INDEX ledger_postings_at ON ledger_postings (at);
CREATE TABLE ledger_entries (
    posting_id TEXT NOT NULL REFERENCES ledger_postings (id),
    leg TEXT NOT NULL CHECK (leg IN ('client', 'platform', 'expert')),
    account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (posting_id, leg)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account, currency);
CREATE INDEX ledger_entries_at ON ledger_entries (at);
CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are immutable', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER ledger_postings_immutable BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER ledger_entries_immutable BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_immutable();
CREATE TABLE metering_outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    relayed BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX metering_outbox_unrelayed ON metering_outbox (seq) WHERE NOT relayed;
CREATE TABLE webhook_cursors (
    url TEXT PRIMARY KEY,
    seq BIGINT NOT NULL
);
CREATE TABLE expert_fees (
    expert_id TEXT PRIMARY KEY,
    fee_bps INTEGER NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    set_by TEXT NOT NULL,
    set_at DOUBLE PRECISION NOT NULL
);
"""),
    # 2: a client's history and an expert's sessions, newest first.
    (2, """
CREATE INDEX billing_sessions_client ON billing_sessions (client_id, started_at);
CREATE INDEX billing_sessions_expert ON billing_sessions (expert_id, started_at);
"""),
]

OUTBOX_LOCK = lock_key("expertcall:metering_outbox")
RELAY_LOCK = lock_key("expertcall:metering_relay")
_POSTING_COLUMNS = "id, session_id, kind, unit_index, expert_id, client_id, currency, gross, fee, payout, at, memo"
_POSTING_TYPES = "text[], text[], text[], int[], text[], text[], text[], bigint[], bigint[], bigint[], float8[], text[]"


class PostgresBillingStore(BillingStore):
    kind = "postgresql"

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, pool: Any) -> "PostgresBillingStore":
        await migrate(pool, "billing", MIGRATIONS)
        return cls(pool)

    async def close(self) -> None:
        return None  # the pool belongs to the application

    # --- the meter ------------------------------------------------------------------------------

    async def commit(self, batch: WriteBatch) -> list[bool]:
        if len({p.id for p in batch.postings}) != len(batch.postings):
            raise LedgerConflict("a batch holds the same posting id twice")
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                if batch.opened:
                    await conn.execute(
                        f"INSERT INTO billing_sessions ({OPENED_COLUMNS}) SELECT * FROM unnest($1::text[],"
                        " $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::float8[], $8::text[],"
                        " $9::bigint[])",
                        *_columns([o.row(batch.fences.get(o.session_id, 0)) for o in batch.opened], 9),
                    )
                await self._fence(conn, batch.fences)
                if batch.intervals_opened:
                    await conn.execute(
                        "INSERT INTO billing_intervals (session_id, idx, start)"
                        " SELECT * FROM unnest($1::text[], $2::int[], $3::float8[])",
                        *_columns(batch.intervals_opened, 3),
                    )
                if batch.intervals_closed:
                    await conn.execute(
                        'UPDATE billing_intervals i SET "end" = v.e FROM unnest($1::text[], $2::int[], $3::float8[])'
                        " AS v(sid, idx, e) WHERE i.session_id = v.sid AND i.idx = v.idx",
                        *_columns(batch.intervals_closed, 3),
                    )
                for sid, cap in batch.budgets:
                    await conn.execute("UPDATE billing_sessions SET budget_cap = $1 WHERE session_id = $2", cap, sid)
                if batch.ended:
                    await conn.execute(
                        "UPDATE billing_sessions b SET ended_at = v.at, end_reason = v.reason"
                        " FROM unnest($1::text[], $2::float8[], $3::text[]) AS v(sid, at, reason)"
                        " WHERE b.session_id = v.sid",
                        *_columns(batch.ended, 3),
                    )
                new = await self._post(conn, batch.postings)
                if batch.events:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", OUTBOX_LOCK)
                    await conn.execute(
                        "INSERT INTO metering_outbox (id, type, subject, body)"
                        " SELECT id, type, subject, body FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
                        " WITH ORDINALITY AS v(id, type, subject, body, n) ORDER BY n ON CONFLICT (id) DO NOTHING",
                        *_columns([(e["id"], e["type"], e["subject"], encode(e)) for e in batch.events], 4),
                    )
        return new

    async def _fence(self, conn: Any, fences: dict[str, int]) -> None:
        if not fences:
            return
        sids, tokens = list(fences), list(fences.values())
        stale = await conn.fetch(
            "SELECT b.session_id FROM billing_sessions b JOIN unnest($1::text[], $2::bigint[]) AS v(sid, fence)"
            " ON b.session_id = v.sid WHERE b.fence > v.fence FOR SHARE OF b",
            sids, tokens,
        )
        if stale:
            raise StaleOwner([r["session_id"] for r in stale])
        await conn.execute(
            "UPDATE billing_sessions b SET fence = v.fence FROM unnest($1::text[], $2::bigint[]) AS v(sid, fence)"
            " WHERE b.session_id = v.sid AND b.fence < v.fence",
            sids, tokens,
        )

    async def _post(self, conn: Any, postings: list[Posting]) -> list[bool]:
        if not postings:
            return []
        inserted = {r["id"] for r in await conn.fetch(
            f"INSERT INTO ledger_postings ({_POSTING_COLUMNS}) SELECT * FROM unnest({_params(_POSTING_TYPES)})"
            " ON CONFLICT (id) DO NOTHING RETURNING id",
            *_columns([p.row() for p in postings], 12),
        )}
        replays = [p for p in postings if p.id not in inserted]
        if replays:
            stored = {r["id"]: Posting.from_row(r) for r in await conn.fetch(
                "SELECT * FROM ledger_postings WHERE id = ANY($1::text[])", [p.id for p in replays])}
            for p in replays:
                if not stored[p.id].same_effect(p):
                    raise LedgerConflict(f"posting {p.id} exists with different content")
        new = [p for p in postings if p.id in inserted]
        if new:
            await conn.execute(
                "INSERT INTO ledger_entries (posting_id, leg, account, amount, currency, at)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::float8[])",
                *_columns([(p.id, leg, acct, amount, p.currency, p.at) for p in new
                           for leg, acct, amount in p.entries()], 6),
            )
        return [p.id in inserted for p in postings]

    async def session(self, session_id: str) -> StoredSession | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM billing_sessions WHERE session_id = $1", session_id)
            return None if row is None else await self._stored(conn, row)

    async def session_ended(self, session_id: str) -> bool | None:
        row = await self.pool.fetchrow("SELECT ended_at FROM billing_sessions WHERE session_id = $1", session_id)
        return None if row is None else row["ended_at"] is not None

    async def open_sessions(self) -> list[StoredSession]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM billing_sessions WHERE ended_at IS NULL ORDER BY started_at, session_id")
            return [await self._stored(conn, r) for r in rows]

    async def sessions_of(self, side: str, user_id: str, start: float, end: float, limit: int) -> list[StoredSession]:
        column = side_column(side)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT * FROM billing_sessions WHERE {column} = $1 AND started_at >= $2 AND started_at < $3"
                " ORDER BY started_at DESC, session_id LIMIT $4",
                user_id, start, end, limit)
            return [await self._stored(conn, r) for r in rows]

    async def _stored(self, conn: Any, row: Any) -> StoredSession:
        sid = row["session_id"]
        intervals = [(r["start"], r["end"]) for r in await conn.fetch(
            'SELECT start, "end" FROM billing_intervals WHERE session_id = $1 ORDER BY idx', sid)]
        totals = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(gross), 0), max(at) FROM ledger_postings"
            " WHERE session_id = $1 AND kind = 'charge'", sid)
        return stored_session(row, intervals, totals)

    async def beat(self, node_id: str, at: float) -> None:
        await self.pool.execute(
            "INSERT INTO meter_heartbeats (node_id, at) VALUES ($1, $2)"
            " ON CONFLICT (node_id) DO UPDATE SET at = excluded.at", node_id, at)

    async def last_beat(self, node_id: str) -> float | None:
        value = await self.pool.fetchval("SELECT at FROM meter_heartbeats WHERE node_id = $1", node_id)
        return None if value is None else float(value)

    # --- the ledger -----------------------------------------------------------------------------

    async def posting(self, posting_id: str) -> Posting | None:
        row = await self.pool.fetchrow("SELECT * FROM ledger_postings WHERE id = $1", posting_id)
        return Posting.from_row(row) if row else None

    async def postings(self, session_id: str) -> list[Posting]:
        rows = await self.pool.fetch(
            "SELECT * FROM ledger_postings WHERE session_id = $1 ORDER BY at, kind, unit_index", session_id)
        return [Posting.from_row(r) for r in rows]

    async def session_totals(self, session_id: str) -> SessionTotals:
        row = await self.pool.fetchrow(
            "SELECT min(currency) AS currency, count(*) AS units, max(unit_index) AS last_unit,"
            " coalesce(sum(gross), 0) AS gross, coalesce(sum(fee), 0) AS fee, coalesce(sum(payout), 0) AS payout,"
            " EXISTS (SELECT 1 FROM ledger_postings WHERE session_id = $1 AND kind = 'refund') AS refunded"
            " FROM ledger_postings WHERE session_id = $1 AND kind = 'charge'", session_id)
        return SessionTotals(
            row["currency"], row["units"], row["last_unit"], int(row["gross"]), int(row["fee"]), int(row["payout"]),
            row["refunded"],
        )

    async def balance(self, account: str, currency: str) -> int:
        value = await self.pool.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE account = $1 AND currency = $2",
            account, currency)
        return int(value)

    async def unbalanced_postings(self) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT posting_id FROM ledger_entries GROUP BY posting_id HAVING sum(amount) != 0")
        return [r["posting_id"] for r in rows]

    async def statement_rows(self, expert_id: str, start: float, end: float) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT session_id, client_id, currency, kind, count(*) AS n, sum(gross) AS gross, sum(fee) AS fee,"
            " sum(payout) AS payout, min(at) AS first_at, max(at) AS last_at FROM ledger_postings"
            " WHERE expert_id = $1 AND at >= $2 AND at < $3 GROUP BY session_id, kind, client_id, currency"
            " ORDER BY first_at, session_id, kind",
            expert_id, start, end)
        return [{**dict(r), "gross": int(r["gross"]), "fee": int(r["fee"]), "payout": int(r["payout"])} for r in rows]

    async def export_rows(self, start: float, end: float) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT e.posting_id || ':' || e.leg AS entry_id, e.posting_id, p.session_id, p.kind, p.unit_index,"
            " e.account, e.amount, e.currency, e.at, p.expert_id, p.client_id, p.memo FROM ledger_entries e"
            " JOIN ledger_postings p ON p.id = e.posting_id WHERE e.at >= $1 AND e.at < $2"
            " ORDER BY e.at, e.posting_id, e.leg",
            start, end)
        return [dict(r) for r in rows]

    async def unit_totals(self) -> dict[tuple[str, str], dict[str, int]]:
        rows = await self.pool.fetch(
            "SELECT expert_id, currency, sum(CASE WHEN kind = 'charge' THEN 1 ELSE 0 END) AS units,"
            " sum(CASE WHEN kind = 'charge' THEN gross ELSE -gross END) AS gross,"
            " sum(CASE WHEN kind = 'charge' THEN fee ELSE -fee END) AS fee,"
            " sum(CASE WHEN kind = 'charge' THEN payout ELSE -payout END) AS payout"
            " FROM ledger_postings GROUP BY expert_id, currency")
        return {(r["expert_id"], r["currency"]): {k: int(r[k]) for k in ("units", "gross", "fee", "payout")} for r in rows}

    # --- the outbox -----------------------------------------------------------------------------

    async def events_after(self, cursor: int, limit: int) -> list[OutboxRow]:
        rows = await self.pool.fetch(
            "SELECT seq, id, type, body FROM metering_outbox WHERE seq > $1 ORDER BY seq LIMIT $2", cursor, limit)
        return [OutboxRow(r["seq"], r["id"], r["type"], r["body"]) for r in rows]

    async def last_seq(self) -> int:
        return int(await self.pool.fetchval("SELECT coalesce(max(seq), 0) FROM metering_outbox"))

    async def count_unrelayed(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM metering_outbox WHERE NOT relayed"))

    @contextlib.asynccontextmanager
    async def relay_batch(self, limit: int) -> AsyncIterator[list[OutboxRow] | None]:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK):
                    yield None  # another node's relay is at work
                    return
                rows = [OutboxRow(r["seq"], r["id"], r["type"], r["body"]) for r in await conn.fetch(
                    "SELECT seq, id, type, body FROM metering_outbox WHERE NOT relayed ORDER BY seq LIMIT $1", limit)]
                yield rows
                if rows:
                    await conn.execute(
                        "UPDATE metering_outbox SET relayed = TRUE WHERE seq = ANY($1::bigint[])", [r.seq for r in rows])

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        # A session-level advisory lock on a connection kept for the whole block: released when
        # the block ends, or when the node dies and its connection closes.
        async with self.pool.acquire() as conn:
            key = lock_key(f"expertcall:{name}")
            mine = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
            try:
                yield mine
            finally:
                if mine:
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)

    async def webhook_cursor(self, url: str) -> int:
        value = await self.pool.fetchval("SELECT seq FROM webhook_cursors WHERE url = $1", url)
        return int(value) if value is not None else 0

    async def set_webhook_cursor(self, url: str, seq: int) -> None:
        await self.pool.execute(
            "INSERT INTO webhook_cursors (url, seq) VALUES ($1, $2) ON CONFLICT (url) DO UPDATE SET seq = excluded.seq",
            url, seq)

    # --- fees -----------------------------------------------------------------------------------

    async def fee_override(self, expert_id: str) -> int | None:
        value = await self.pool.fetchval("SELECT fee_bps FROM expert_fees WHERE expert_id = $1", expert_id)
        return None if value is None else int(value)

    async def set_fee_override(self, expert_id: str, fee_bps: int | None, by: str, at: float) -> None:
        if fee_bps is None:
            await self.pool.execute("DELETE FROM expert_fees WHERE expert_id = $1", expert_id)
            return
        await self.pool.execute(
            "INSERT INTO expert_fees (expert_id, fee_bps, set_by, set_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (expert_id) DO UPDATE SET fee_bps = excluded.fee_bps, set_by = excluded.set_by,"
            " set_at = excluded.set_at", expert_id, fee_bps, by, at)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as ``width`` column arrays, for ``unnest``."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


def _params(types: str) -> str:
    return ", ".join(f"${i + 1}::{t.strip()}" for i, t in enumerate(types.split(", ")))
