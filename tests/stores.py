"""The billing store under test: one fixture, both backends (the contract suites use it)."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

from signalling.billing.store import BillingStore
from signalling.billing.store_postgres import PostgresBillingStore
from signalling.billing.store_sqlite import SqliteBillingStore
from signalling.core.database import Database
from signalling.core.postgres import connect

from .conftest import require
from .postgres_helpers import ADMIN_URL, create_database, drop_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def billing_store(request: Any, tmp_path: Any) -> AsyncIterator[BillingStore]:
    if request.param == "sqlite":
        db = Database.in_dir(tmp_path)
        yield SqliteBillingStore(db)
        db.close()
        return
    url = await create_database()
    require(url is not None, f"PostgreSQL at {ADMIN_URL}")
    assert url is not None
    pool = await connect(url)
    try:
        yield await PostgresBillingStore.open(pool)
    finally:
        await pool.close()
        await drop_database(url)


async def raw_execute(store: BillingStore, sql: str) -> None:
    """Run SQL straight on the store's database, behind billing's back (immutability tests)."""
    if isinstance(store, SqliteBillingStore):
        store.db.execute(sql)
    else:
        assert isinstance(store, PostgresBillingStore)
        await store.pool.execute(sql)
