"""``BookingTables`` in the PostgreSQL database every node shares (``--database postgresql://``).

No double booking across nodes: a booking's overlap checks and its insert run in one transaction
holding advisory locks on the expert and on the client (taken in a fixed order, so two requests
never wait on each other crosswise); a second request for an overlapping slot, on any node,
waits for the first and then sees it.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import ApiError
from ..core.postgres import lock_key, migrate
from ..experts.store_postgres import numbered
from .tables import (
    ACTIVE,
    BOOKED,
    CANCELLED,
    MISSED,
    OPEN,
    Booking,
    BookingTables,
    booking_from_row,
    booking_row,
    list_filters,
    too_many_for_client,
    too_many_for_expert,
)

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE bookings (
    id TEXT PRIMARY KEY,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    start BIGINT NOT NULL,
    "end" BIGINT NOT NULL CHECK ("end" > start),
    state TEXT NOT NULL,
    topic TEXT,
    created_at BIGINT NOT NULL,
    opened_at BIGINT,
    cancelled_at BIGINT,
    cancelled_by TEXT,
    cancel_reason TEXT,
    quote TEXT
);
CREATE INDEX bookings_by_expert ON bookings (expert_id, start);
CREATE INDEX bookings_by_client ON bookings (client_id, start);
CREATE INDEX bookings_by_state ON bookings (state, start);
CREATE TABLE booking_reminders (
    booking_id TEXT NOT NULL REFERENCES bookings (id),
    lead_seconds INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (booking_id, lead_seconds)
);
"""),
    # 2: the parties' names when it was booked.
    (2, """
ALTER TABLE bookings ADD COLUMN expert_name TEXT, ADD COLUMN client_name TEXT;
"""),
]


class PostgresBookingTables(BookingTables):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, pool: Any) -> "PostgresBookingTables":
        await migrate(pool, "bookings", MIGRATIONS)
        return cls(pool)

    async def insert_if_free(
        self, booking: Booking, skipped_leads: list[int], max_per_client: int, max_per_expert: int
    ) -> tuple[Booking, bool]:
        b = booking
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                for key in sorted({lock_key(f"booking:expert:{b.expert_id}"), lock_key(f"booking:client:{b.client_id}")}):
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
                same = await conn.fetchrow(
                    f'SELECT * FROM bookings WHERE client_id = $1 AND expert_id = $2 AND start = $3 AND "end" = $4 AND {ACTIVE}',
                    b.client_id, b.expert_id, b.start, b.end,
                )
                if same:
                    return booking_from_row(same), False
                held = f"SELECT count(*) FROM bookings WHERE {{}} = $1 AND state = '{BOOKED}'"
                if await conn.fetchval(held.format("client_id"), b.client_id) >= max_per_client:
                    raise too_many_for_client(max_per_client)
                if await conn.fetchval(held.format("expert_id"), b.expert_id) >= max_per_expert:
                    raise too_many_for_expert(max_per_expert)
                overlap = f'start < $2 AND "end" > $3 AND {ACTIVE}'
                if await conn.fetchval(f"SELECT 1 FROM bookings WHERE expert_id = $1 AND {overlap}", b.expert_id, b.end, b.start):
                    raise ApiError("slot_taken", "the expert already has a booking at that time", "start", status=409)
                if await conn.fetchval(f"SELECT 1 FROM bookings WHERE client_id = $1 AND {overlap}", b.client_id, b.end, b.start):
                    raise ApiError("client_busy", "you already have a booking at that time", "start", status=409)
                await conn.execute(
                    'INSERT INTO bookings (id, expert_id, client_id, start, "end", state, topic, created_at, quote,'
                    " expert_name, client_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    *booking_row(b),
                )
                await conn.executemany(
                    "INSERT INTO booking_reminders VALUES ($1, $2, 'skipped', $3)",
                    [(b.id, lead, b.created_at) for lead in skipped_leads],
                )
        return booking, True

    async def cancel(self, booking_id: str, by: str, reason: str | None, now: int) -> bool:
        status = await self.pool.execute(
            f"UPDATE bookings SET state = '{CANCELLED}', cancelled_at = $1, cancelled_by = $2, cancel_reason = $3"
            f" WHERE id = $4 AND state = '{BOOKED}' AND start > $1",
            now, by, reason, booking_id,
        )
        return bool(status.endswith(" 1"))

    async def get(self, booking_id: str) -> "Booking | None":
        row = await self.pool.fetchrow("SELECT * FROM bookings WHERE id = $1", booking_id)
        return booking_from_row(row) if row else None

    async def list_for(self, user_id: str | None, state: str | None, limit: int, offset: int) -> list[Booking]:
        where, params = list_filters(user_id, state)
        rows = await self.pool.fetch(
            numbered(f"SELECT * FROM bookings {where} ORDER BY start, id LIMIT ? OFFSET ?"), *params, limit, offset
        )
        return [booking_from_row(r) for r in rows]

    async def busy(self, expert_id: str, start: int, end: int) -> list[tuple[int, int]]:
        rows = await self.pool.fetch(
            f'SELECT start, "end" FROM bookings WHERE expert_id = $1 AND start < $2 AND "end" > $3 AND {ACTIVE}'
            " ORDER BY start",
            expert_id, end, start,
        )
        return [(r["start"], r["end"]) for r in rows]

    async def pending(self, until: float) -> list[tuple[Booking, set[int]]]:
        rows = await self.pool.fetch(
            f"SELECT b.*, coalesce(array_agg(r.lead_seconds) FILTER (WHERE r.lead_seconds IS NOT NULL), '{{}}')"
            " AS handled FROM bookings b LEFT JOIN booking_reminders r ON r.booking_id = b.id"
            f" WHERE b.state = '{BOOKED}' AND b.start <= $1 GROUP BY b.id ORDER BY b.start",
            int(until),
        )
        return [(booking_from_row(r), set(r["handled"])) for r in rows]

    async def next_start(self) -> int | None:
        value = await self.pool.fetchval(f"SELECT min(start) FROM bookings WHERE state = '{BOOKED}'")
        return None if value is None else int(value)

    async def record_reminder(self, booking_id: str, lead: int, skipped: list[int], now: int) -> bool:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                if not await conn.fetchval(
                    f"SELECT 1 FROM bookings WHERE id = $1 AND state = '{BOOKED}' FOR UPDATE", booking_id
                ):
                    return False
                sent = await conn.fetchval(
                    "INSERT INTO booking_reminders VALUES ($1, $2, 'sent', $3) ON CONFLICT DO NOTHING RETURNING 1",
                    booking_id, lead, now,
                )
                await conn.executemany(
                    "INSERT INTO booking_reminders VALUES ($1, $2, 'skipped', $3) ON CONFLICT DO NOTHING",
                    [(booking_id, s, now) for s in skipped],
                )
        return sent is not None

    async def record_start(self, booking_id: str, now: int) -> bool:
        status = await self.pool.execute(
            f"UPDATE bookings SET state = CASE WHEN \"end\" > $1 THEN '{OPEN}' ELSE '{MISSED}' END,"
            f" opened_at = CASE WHEN \"end\" > $1 THEN $1 END WHERE id = $2 AND state = '{BOOKED}' AND start <= $1",
            now, booking_id,
        )
        return bool(status.endswith(" 1"))
