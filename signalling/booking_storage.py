"""Which booking tables a node uses, chosen once at start-up: the shared PostgreSQL when the
application has a pool, else the node's SQLite."""

from __future__ import annotations

from typing import Any

from .booking_tables import BookingTables, SqliteBookingTables
from .booking_tables_postgres import PostgresBookingTables
from .database import Database


async def open_booking_tables(db: Database, pool: Any) -> BookingTables:
    if pool is not None:
        return await PostgresBookingTables.open(pool)
    return SqliteBookingTables(db)
