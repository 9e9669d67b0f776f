"""``SessionStore`` in the PostgreSQL database every node shares (``--database postgresql://``):
one durable copy of every session for the whole cluster, so a node (or every node) recovers
what the backend lost, whichever node made the transitions."""

from __future__ import annotations

import json
from typing import Any

from ..core.postgres import migrate
from .sessions import Session, SessionStore, State, Transition, session_row, transition_row

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX sessions_unfinished ON sessions (created_at, id) WHERE state <> 'ended';
CREATE TABLE session_transitions (
    session_id TEXT NOT NULL REFERENCES sessions (id),
    version INTEGER NOT NULL,
    previous TEXT,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (session_id, version)
);
"""),
]


class PostgresSessionStore(SessionStore):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, pool: Any) -> "PostgresSessionStore":
        await migrate(pool, "sessions", MIGRATIONS)
        return cls(pool)

    async def save(self, session: Session, transition: Transition | None = None) -> None:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO sessions (id, expert_id, client_id, state, reason, created_at, updated_at, record)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
                    " reason = excluded.reason, updated_at = excluded.updated_at, record = excluded.record",
                    *session_row(session),
                )
                if transition is not None:
                    await conn.execute(
                        "INSERT INTO session_transitions (session_id, version, previous, state, reason, at)"
                        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id, version) DO UPDATE SET"
                        " previous = excluded.previous, state = excluded.state, reason = excluded.reason, at = excluded.at",
                        *transition_row(session, transition),
                    )

    async def get(self, session_id: str) -> Session | None:
        record = await self.pool.fetchval("SELECT record FROM sessions WHERE id = $1", session_id)
        return None if record is None else Session.from_dict(json.loads(record))

    async def unfinished(self) -> list[Session]:
        rows = await self.pool.fetch(
            "SELECT record FROM sessions WHERE state <> $1 ORDER BY created_at, id", State.ENDED.value)
        return [Session.from_dict(json.loads(r["record"])) for r in rows]

    async def history(self, session_id: str) -> list[tuple[str | None, str, str, float]]:
        rows = await self.pool.fetch(
            "SELECT previous, state, reason, at FROM session_transitions WHERE session_id = $1 ORDER BY version",
            session_id)
        return [(r["previous"], r["state"], r["reason"], r["at"]) for r in rows]
