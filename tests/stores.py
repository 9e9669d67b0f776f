"""The billing store under test: one fixture, both backends (the contract suites use it)."""

from __future__ import annotations

from signalling.billing.store import BillingStore
from signalling.billing.store_postgres import PostgresBillingStore
from signalling.billing.store_sqlite import SqliteBillingStore


async def raw_execute(store: BillingStore, sql: str) -> None:
    """Run SQL straight on the store's database, behind billing's back (immutability tests)."""
    if isinstance(store, SqliteBillingStore):
        store.db.execute(sql)
    else:
        assert isinstance(store, PostgresBillingStore)
        await store.pool.execute(sql)
