"""The recording index, beside the ledger: which files a session's recording left, where.

A recording file's row (session, participants, file, size, duration, checksum, the node that
holds it) lives in the billing database — the node's SQLite, or the PostgreSQL every node shares —
so any node lists a session's recordings and knows which node to send a download to. Its events
(``expertcall.recording.*``) go into the metering outbox in the same transaction as the row they
describe, so the stream and webhooks carry them exactly like metering. One interface, two
backends, one contract suite (tests/test_recording_index.py), as for ``BillingStore``.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.database import Database
from ..core.postgres import migrate
from .outbox import encode

DDL = """
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    node TEXT NOT NULL,
    file TEXT NOT NULL,
    size BIGINT NOT NULL,
    duration DOUBLE PRECISION NOT NULL,
    sha256 TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ready_at DOUBLE PRECISION NOT NULL,
    recovered BOOLEAN NOT NULL,
    deleted_at DOUBLE PRECISION,
    deleted_by TEXT
);
CREATE INDEX IF NOT EXISTS recordings_by_session ON recordings (session_id);
CREATE INDEX IF NOT EXISTS recordings_by_age ON recordings (ready_at);
"""


@dataclass(frozen=True)
class RecordingRow:
    id: str  # "<recording id>-<n>": the file's name in the API
    session_id: str
    recording_id: str
    participant_id: str
    expert_id: str
    client_id: str
    node: str
    file: str  # relative to the holding node's recordings directory
    size: int
    duration: float
    sha256: str
    started_at: float
    ready_at: float
    recovered: bool = False
    deleted_at: float | None = None
    deleted_by: str | None = None

    def public(self) -> dict[str, Any]:
        """What the REST API shows (the path on the node's disk is not for clients)."""
        out = dataclasses.asdict(self)
        del out["file"]
        return out


_COLUMNS = [f.name for f in dataclasses.fields(RecordingRow)]


def _row(record: Any) -> RecordingRow:
    values = {name: record[name] for name in _COLUMNS}
    values["recovered"] = bool(values["recovered"])
    return RecordingRow(**values)


class RecordingIndex(abc.ABC):
    @abc.abstractmethod
    async def add(self, row: RecordingRow, events: list[dict[str, Any]]) -> bool:
        """Index a finished file with its events; False (nothing written) if it was already."""

    @abc.abstractmethod
    async def events(self, events: list[dict[str, Any]]) -> None:
        """Events that describe no file (started, stopped), into the outbox; replays ignored."""

    @abc.abstractmethod
    async def of_session(self, session_id: str) -> list[RecordingRow]:
        """The session's files not deleted, oldest first."""

    @abc.abstractmethod
    async def get(self, file_id: str) -> RecordingRow | None: ...

    @abc.abstractmethod
    async def older_than(self, ready_before: float) -> list[RecordingRow]:
        """The files made before ``ready_before`` and not deleted, oldest first."""

    @abc.abstractmethod
    async def mark_deleted(self, file_id: str, at: float, by: str,
                           events: list[dict[str, Any]]) -> bool:
        """Mark a file deleted (with its events); False if it was already, or is unknown."""


class SqliteRecordingIndex(RecordingIndex):
    """On the node's SQLite file, whose ``metering_outbox`` billing created."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate_versions("recordings", [(1, DDL)])

    async def add(self, row: RecordingRow, events: list[dict[str, Any]]) -> bool:
        values = dataclasses.astuple(row)
        with self.db.transaction():
            cur = self.db.execute(
                f"INSERT OR IGNORE INTO recordings ({', '.join(_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(_COLUMNS))})", values)
            if cur.rowcount:
                self._events(events)
        return bool(cur.rowcount)

    async def events(self, events: list[dict[str, Any]]) -> None:
        with self.db.transaction():
            self._events(events)

    def _events(self, events: list[dict[str, Any]]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO metering_outbox (id, type, subject, body) VALUES (?, ?, ?, ?)",
            [(e["id"], e["type"], e["subject"], encode(e)) for e in events],
        )

    async def of_session(self, session_id: str) -> list[RecordingRow]:
        return [_row(r) for r in self.db.fetchall(
            "SELECT * FROM recordings WHERE session_id = ? AND deleted_at IS NULL"
            " ORDER BY started_at, id", (session_id,))]

    async def get(self, file_id: str) -> RecordingRow | None:
        record = self.db.fetchone("SELECT * FROM recordings WHERE id = ?", (file_id,))
        return None if record is None else _row(record)

    async def older_than(self, ready_before: float) -> list[RecordingRow]:
        return [_row(r) for r in self.db.fetchall(
            "SELECT * FROM recordings WHERE ready_at < ? AND deleted_at IS NULL"
            " ORDER BY ready_at, id", (ready_before,))]

    async def mark_deleted(self, file_id: str, at: float, by: str,
                           events: list[dict[str, Any]]) -> bool:
        with self.db.transaction():
            cur = self.db.execute(
                "UPDATE recordings SET deleted_at = ?, deleted_by = ? WHERE id = ?"
                " AND deleted_at IS NULL", (at, by, file_id))
            if cur.rowcount:
                self._events(events)
        return bool(cur.rowcount)


class PostgresRecordingIndex(RecordingIndex):
    """On the PostgreSQL every node shares; events take the outbox's lock like the meter's."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, pool: Any) -> "PostgresRecordingIndex":
        await migrate(pool, "recordings", [(1, DDL)])
        return cls(pool)

    async def add(self, row: RecordingRow, events: list[dict[str, Any]]) -> bool:
        values = dataclasses.astuple(row)
        placeholders = ", ".join(f"${i + 1}" for i in range(len(_COLUMNS)))
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                added = await conn.fetchval(
                    f"INSERT INTO recordings ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
                    " ON CONFLICT (id) DO NOTHING RETURNING id", *values)
                if added is not None:
                    await self._events(conn, events)
        return added is not None

    async def events(self, events: list[dict[str, Any]]) -> None:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await self._events(conn, events)

    @staticmethod
    async def _events(conn: Any, events: list[dict[str, Any]]) -> None:
        from .store_postgres import OUTBOX_LOCK

        if not events:
            return
        await conn.execute("SELECT pg_advisory_xact_lock($1)", OUTBOX_LOCK)
        await conn.executemany(
            "INSERT INTO metering_outbox (id, type, subject, body) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (id) DO NOTHING",
            [(e["id"], e["type"], e["subject"], encode(e)) for e in events],
        )

    async def of_session(self, session_id: str) -> list[RecordingRow]:
        return [_row(r) for r in await self.pool.fetch(
            "SELECT * FROM recordings WHERE session_id = $1 AND deleted_at IS NULL"
            " ORDER BY started_at, id", session_id)]

    async def get(self, file_id: str) -> RecordingRow | None:
        record = await self.pool.fetchrow("SELECT * FROM recordings WHERE id = $1", file_id)
        return None if record is None else _row(record)

    async def older_than(self, ready_before: float) -> list[RecordingRow]:
        return [_row(r) for r in await self.pool.fetch(
            "SELECT * FROM recordings WHERE ready_at < $1 AND deleted_at IS NULL"
            " ORDER BY ready_at, id", ready_before)]

    async def mark_deleted(self, file_id: str, at: float, by: str,
                           events: list[dict[str, Any]]) -> bool:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                done = await conn.fetchval(
                    "UPDATE recordings SET deleted_at = $1, deleted_by = $2 WHERE id = $3"
                    " AND deleted_at IS NULL RETURNING id", at, by, file_id)
                if done is not None:
                    await self._events(conn, events)
        return done is not None


async def open_index(db: Database, pool: Any) -> RecordingIndex:
    """Beside the billing store the application chose: PostgreSQL when it has a pool."""
    if pool is not None:
        return await PostgresRecordingIndex.open(pool)
    return SqliteRecordingIndex(db)
