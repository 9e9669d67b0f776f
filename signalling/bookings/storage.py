"""Which booking tables a node uses, chosen once at start-up: the shared PostgreSQL when the
application has a pool, else the node's SQLite."""

from __future__ import annotations

from typing import Any

from ..core.database import Database
from .tables import BookingTables, SqliteBookingTables
from .tables_postgres import PostgresBookingTables


async def open_booking_tables(db: Database, pool: Any) -> BookingTables:
    if pool is not None:
        return await PostgresBookingTables.open(pool)
    return SqliteBookingTables(db)
