"""Which billing store a node uses, chosen once at start-up from its settings."""

from __future__ import annotations

from typing import Any

from ..core.postgres import connect
from .store import BillingStore
from .store_postgres import PostgresBillingStore
from .store_sqlite import SqliteBillingStore


async def open_store(settings: Any, db: Any, pool: Any = None) -> tuple[BillingStore, Any]:
    """The store ``settings`` choose, once, at start-up: PostgreSQL for ``database_url`` (on the
    application's ``pool``, or one of its own), else the embedded SQLite ``db``. Returns it and
    an async callable that releases what it opened."""
    if settings.database_url and pool is not None:

        async def keep() -> None:
            return None  # the application closes its pool

        return await PostgresBillingStore.open(pool), keep
    if settings.database_url:
        pool = await connect(settings.database_url)
        try:
            store: BillingStore = await PostgresBillingStore.open(pool)
        except BaseException:
            await pool.close()
            raise
        return store, pool.close

    async def nothing() -> None:
        return None

    return SqliteBillingStore(db), nothing
