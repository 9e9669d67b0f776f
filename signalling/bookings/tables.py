"""Where bookings and their reminders are kept: the node's SQLite, or the shared PostgreSQL.

``scheduling.BookingStore`` holds the rules (hours, notice, horizon, durations); these tables hold
the rows, and take the one decision a single process cannot: a slot is booked once, whichever
node two racing requests reach (SQLite: an IMMEDIATE transaction on one file; PostgreSQL:
transaction-scoped advisory locks on the expert and the client, taken in order). The
scheduler's bookkeeping (a reminder sent, a booking opened) is a conditional write, so with
several nodes running a scheduler each reminder and each opening still happens once.
``tests/signalling/bookings/test_scheduling.py`` runs the race against both.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from typing import Any

from ..core.database import Database
from ..core.errors import ApiError
from ..experts.model import iso_utc

BOOKED, OPEN, CANCELLED, MISSED = "booked", "open", "cancelled", "missed"
ACTIVE = f"state IN ('{BOOKED}', '{OPEN}')"


@dataclass(frozen=True)
class Booking:
    id: str
    expert_id: str
    client_id: str
    start: int  # Unix seconds, UTC
    end: int
    state: str
    topic: str | None
    created_at: int
    opened_at: int | None = None
    cancelled_at: int | None = None
    cancelled_by: str | None = None
    cancel_reason: str | None = None
    # The terms fixed at booking time (billing's quote as a dict): the session opens with them.
    quote: dict[str, Any] | None = None
    # The parties' names when it was booked (the client's token, the expert's profile), so that
    # lists, reminders and updates name people rather than ids.
    expert_name: str = ""
    client_name: str = ""

    def has_party(self, user_id: str) -> bool:
        return user_id in (self.expert_id, self.client_id)

    def other_party(self, user_id: str) -> str:
        return self.client_id if user_id == self.expert_id else self.expert_id

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "expert_id": self.expert_id,
            "client_id": self.client_id,
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "state": self.state,
            "topic": self.topic,
            "created_at": iso_utc(self.created_at),
            "opened_at": iso_utc(self.opened_at) if self.opened_at is not None else None,
            "cancelled_at": iso_utc(self.cancelled_at) if self.cancelled_at is not None else None,
            "cancelled_by": self.cancelled_by,
            "cancel_reason": self.cancel_reason,
            "quote": self.quote,
            "expert_name": self.expert_name or self.expert_id,
            "client_name": self.client_name or self.client_id,
        }

SQLITE_MIGRATIONS: list[tuple[int, str]] = [
    # 1: the tables as the single-node scheduler made them (IF NOT EXISTS: old data dirs adopt it).
    (1, """
CREATE TABLE IF NOT EXISTS bookings (
    id TEXT PRIMARY KEY,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL CHECK ("end" > start),
    state TEXT NOT NULL,
    topic TEXT,
    created_at INTEGER NOT NULL,
    opened_at INTEGER,
    cancelled_at INTEGER,
    cancelled_by TEXT,
    cancel_reason TEXT
);
CREATE INDEX IF NOT EXISTS bookings_by_expert ON bookings (expert_id, start);
CREATE INDEX IF NOT EXISTS bookings_by_client ON bookings (client_id, start);
CREATE INDEX IF NOT EXISTS bookings_by_state ON bookings (state, start);
CREATE TABLE IF NOT EXISTS booking_reminders (
    booking_id TEXT NOT NULL REFERENCES bookings(id),
    lead_seconds INTEGER NOT NULL,
    outcome TEXT NOT NULL,  -- 'sent', or 'skipped' when its time had passed
    at INTEGER NOT NULL,
    PRIMARY KEY (booking_id, lead_seconds)
);
"""),
]


class BookingTables(abc.ABC):
    @abc.abstractmethod
    async def insert_if_free(
        self, booking: Booking, skipped_leads: list[int], max_per_client: int, max_per_expert: int
    ) -> tuple[Booking, bool]:
        """Insert ``booking`` unless the same client already booked the same slot (that booking,
        False); ``too_many_bookings`` when the client or the expert already holds that many not
        started; ``slot_taken`` / ``client_busy`` when it overlaps an active one."""

    @abc.abstractmethod
    async def cancel(self, booking_id: str, by: str, reason: str | None, now: int) -> bool:
        """Cancel a booking still waiting for its start; whether this call did."""

    @abc.abstractmethod
    async def get(self, booking_id: str) -> "Booking | None": ...

    @abc.abstractmethod
    async def list_for(self, user_id: str | None, state: str | None, limit: int, offset: int) -> list[Booking]: ...

    @abc.abstractmethod
    async def busy(self, expert_id: str, start: int, end: int) -> list[tuple[int, int]]:
        """The expert's active bookings overlapping [start, end), by start."""

    @abc.abstractmethod
    async def pending(self, until: float) -> list[tuple[Booking, set[int]]]: ...

    @abc.abstractmethod
    async def next_start(self) -> int | None: ...

    @abc.abstractmethod
    async def record_reminder(self, booking_id: str, lead: int, skipped: list[int], now: int) -> bool: ...

    @abc.abstractmethod
    async def record_start(self, booking_id: str, now: int) -> bool:
        """``booked`` -> ``open`` (``missed`` when its slot is over); whether this call moved it."""


def too_many_for_client(limit: int) -> ApiError:
    return ApiError("too_many_bookings", f"you already hold {limit} bookings that have not started: cancel one first",
                    None, status=429)


def too_many_for_expert(limit: int) -> ApiError:
    return ApiError("too_many_bookings", f"this expert already has {limit} bookings that have not started",
                    "expert_id", status=429)


def booking_from_row(row: Any) -> Booking:
    return Booking(
        id=row["id"], expert_id=row["expert_id"], client_id=row["client_id"], start=row["start"], end=row["end"],
        state=row["state"], topic=row["topic"], created_at=row["created_at"], opened_at=row["opened_at"],
        cancelled_at=row["cancelled_at"], cancelled_by=row["cancelled_by"], cancel_reason=row["cancel_reason"],
        quote=json.loads(row["quote"]) if row["quote"] else None,
        expert_name=row["expert_name"] or "", client_name=row["client_name"] or "",
    )


def booking_row(b: Booking) -> tuple[Any, ...]:
    return (b.id, b.expert_id, b.client_id, b.start, b.end, b.state, b.topic, b.created_at,
            json.dumps(b.quote) if b.quote else None, b.expert_name, b.client_name)


class SqliteBookingTables(BookingTables):
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate_versions("bookings", SQLITE_MIGRATIONS)
        db.add_column("bookings", "quote", "TEXT")  # the quote fixed at booking time
        db.add_column("bookings", "expert_name", "TEXT")  # the parties' names when it was booked
        db.add_column("bookings", "client_name", "TEXT")

    async def insert_if_free(
        self, booking: Booking, skipped_leads: list[int], max_per_client: int, max_per_expert: int
    ) -> tuple[Booking, bool]:
        b = booking
        with self.db.transaction() as conn:
            same = conn.execute(
                f'SELECT * FROM bookings WHERE client_id = ? AND expert_id = ? AND start = ? AND "end" = ? AND {ACTIVE}',
                (b.client_id, b.expert_id, b.start, b.end),
            ).fetchone()
            if same:
                return booking_from_row(same), False
            held = f"SELECT COUNT(*) FROM bookings WHERE {{}} = ? AND state = '{BOOKED}'"
            if conn.execute(held.format("client_id"), (b.client_id,)).fetchone()[0] >= max_per_client:
                raise too_many_for_client(max_per_client)
            if conn.execute(held.format("expert_id"), (b.expert_id,)).fetchone()[0] >= max_per_expert:
                raise too_many_for_expert(max_per_expert)
            overlap = f'start < ? AND "end" > ? AND {ACTIVE}'
            if conn.execute(f"SELECT 1 FROM bookings WHERE expert_id = ? AND {overlap}", (b.expert_id, b.end, b.start)).fetchone():
                raise ApiError("slot_taken", "the expert already has a booking at that time", "start", status=409)
            if conn.execute(f"SELECT 1 FROM bookings WHERE client_id = ? AND {overlap}", (b.client_id, b.end, b.start)).fetchone():
                raise ApiError("client_busy", "you already have a booking at that time", "start", status=409)
            conn.execute(
                'INSERT INTO bookings (id, expert_id, client_id, start, "end", state, topic, created_at, quote,'
                " expert_name, client_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                booking_row(b),
            )
            conn.executemany(
                "INSERT INTO booking_reminders VALUES (?, ?, 'skipped', ?)",
                [(b.id, lead, b.created_at) for lead in skipped_leads],
            )
        return booking, True

    async def cancel(self, booking_id: str, by: str, reason: str | None, now: int) -> bool:
        changed = self.db.execute(
            f"UPDATE bookings SET state = '{CANCELLED}', cancelled_at = ?, cancelled_by = ?, cancel_reason = ? "
            f"WHERE id = ? AND state = '{BOOKED}' AND start > ?",
            (now, by, reason, booking_id, now),
        ).rowcount
        return bool(changed)

    async def get(self, booking_id: str) -> "Booking | None":
        row = self.db.fetchone("SELECT * FROM bookings WHERE id = ?", (booking_id,))
        return booking_from_row(row) if row else None

    async def list_for(self, user_id: str | None, state: str | None, limit: int, offset: int) -> list[Booking]:
        where, params = list_filters(user_id, state)
        rows = self.db.fetchall(
            f"SELECT * FROM bookings {where} ORDER BY start, id LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return [booking_from_row(r) for r in rows]

    async def busy(self, expert_id: str, start: int, end: int) -> list[tuple[int, int]]:
        rows = self.db.fetchall(
            f'SELECT start, "end" FROM bookings WHERE expert_id = ? AND start < ? AND "end" > ? AND {ACTIVE} ORDER BY start',
            (expert_id, end, start),
        )
        return [(r["start"], r["end"]) for r in rows]

    async def pending(self, until: float) -> list[tuple[Booking, set[int]]]:
        rows = self.db.fetchall(f"SELECT * FROM bookings WHERE state = '{BOOKED}' AND start <= ? ORDER BY start", (until,))
        out = []
        for row in rows:
            handled = {r[0] for r in self.db.fetchall(
                "SELECT lead_seconds FROM booking_reminders WHERE booking_id = ?", (row["id"],))}
            out.append((booking_from_row(row), handled))
        return out

    async def next_start(self) -> int | None:
        row = self.db.fetchone(f"SELECT MIN(start) FROM bookings WHERE state = '{BOOKED}'")
        return row[0] if row else None

    async def record_reminder(self, booking_id: str, lead: int, skipped: list[int], now: int) -> bool:
        with self.db.transaction() as conn:
            if not conn.execute(f"SELECT 1 FROM bookings WHERE id = ? AND state = '{BOOKED}'", (booking_id,)).fetchone():
                return False
            sent = conn.execute(
                "INSERT INTO booking_reminders VALUES (?, ?, 'sent', ?) ON CONFLICT DO NOTHING", (booking_id, lead, now)
            ).rowcount
            conn.executemany(
                "INSERT INTO booking_reminders VALUES (?, ?, 'skipped', ?) ON CONFLICT DO NOTHING",
                [(booking_id, s, now) for s in skipped],
            )
        return bool(sent)

    async def record_start(self, booking_id: str, now: int) -> bool:
        changed = self.db.execute(
            f"UPDATE bookings SET state = CASE WHEN \"end\" > :now THEN '{OPEN}' ELSE '{MISSED}' END, "
            f"opened_at = CASE WHEN \"end\" > :now THEN :now END "
            f"WHERE id = :id AND state = '{BOOKED}' AND start <= :now",
            {"now": now, "id": booking_id},
        ).rowcount
        return bool(changed)


def list_filters(user_id: str | None, state: str | None) -> tuple[str, list[Any]]:
    where, params = [], []
    if user_id is not None:
        where.append("(client_id = ? OR expert_id = ?)")
        params += [user_id, user_id]
    if state is not None:
        where.append("state = ?")
        params.append(state)
    return (f"WHERE {' AND '.join(where)}" if where else ""), params
