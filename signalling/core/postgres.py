"""PostgreSQL for state that several nodes share (``--database postgresql://...``).

The driver is asyncpg: a native asyncio driver (no thread hop per query, unlike wrapping a sync
one), well kept, with the binary protocol and pipelined ``executemany``/``unnest`` batches the
meter's hot path needs. ``connect`` opens a pool; ``migrate`` applies a component's numbered
migrations once each, in order, under an advisory lock, so that several nodes starting at once
do not race, with their record in ``schema_migrations``.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, Sequence

import asyncpg


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


async def connect(url: str, *, min_size: int = 1, max_size: int = 10) -> Any:
    """An asyncpg pool. Statement caching stays on: the statements are few and fixed."""
    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, command_timeout=30)


def lock_key(name: str) -> int:
    """A stable 63-bit advisory lock key for a name."""
    return zlib.crc32(name.encode()) | (zlib.crc32(name[::-1].encode()) << 31)


async def migrate(pool: Any, component: str, migrations: Sequence[tuple[int, str]]) -> None:
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key("expertcall:migrations"))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,"
                " applied_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (component, version))"
            )
            done = {r["version"] for r in await conn.fetch(
                "SELECT version FROM schema_migrations WHERE component = $1", component)}
            for version, sql in sorted(migrations):
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, $3)", component, version, time.time()
                )
