"""Which session store a node uses, chosen once at start-up."""

from __future__ import annotations

from typing import Any

from ..core.database import Database
from .session_store_postgres import PostgresSessionStore
from .sessions import SessionStore, SqliteSessionStore


async def open_session_store(db: Database, pool: Any) -> SessionStore:
    """The shared PostgreSQL store when the application has a pool, else the node's SQLite."""
    if pool is not None:
        return await PostgresSessionStore.open(pool)
    return SqliteSessionStore(db)
