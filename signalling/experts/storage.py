"""Which expert store a node uses, chosen once at start-up."""

from __future__ import annotations

from typing import Any

from ..core.database import Database
from .store import ExpertStore, SqliteExpertStore
from .store_postgres import PostgresExpertStore


async def open_expert_store(db: Database, pool: Any) -> ExpertStore:
    """The shared PostgreSQL store when the application has a pool, else the node's SQLite."""
    if pool is not None:
        return await PostgresExpertStore.open(pool)
    return SqliteExpertStore(db)
