"""A real PostgreSQL for the tests: a database of its own per test (or test process), dropped after.

The server is the one at 127.0.0.1:5432 (trust auth), started by scripts/test when missing;
``EXPERTCALL_TEST_POSTGRES`` names another maintenance database URL.
"""

from __future__ import annotations

import os
import uuid

import asyncpg

ADMIN_URL = os.environ.get("EXPERTCALL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def create_database() -> str | None:
    """A fresh, uniquely named database; its URL, or None when no server answers."""
    name = f"expertcall_test_{uuid.uuid4().hex[:16]}"
    try:
        conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(name)


async def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
