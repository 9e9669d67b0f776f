"""Revoked tokens: the ``jti`` of every bearer token refused before it expires.

Three layers, each the natural home of one job:

- ``Revocations`` is this process's in-memory set, consulted synchronously by ``TokenIssuer.verify``
  on every request and ``hello`` (a dict lookup, no I/O on the request path);
- the backend (``Backend.revoke_token``) shares a revocation with every node and tells each of
  them, so that each node adds it to its set and closes the sockets that token opened;
- ``RevocationStore`` keeps them in this node's SQLite, so that a restart (and the memory
  backend, which forgets everything) does not bring a revoked token back to life.

An entry is kept until the token it names would have expired anyway, then forgotten.
"""

from __future__ import annotations

import time
from typing import Callable

from ..core.database import Database

DDL = """
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL,
    revoked_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_tokens_by_expiry ON revoked_tokens (expires_at);
"""


class Revocations:
    """The revoked jtis this process knows of, each with the expiry of its token."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._until: dict[str, int] = {}

    def is_revoked(self, jti: str) -> bool:
        return jti in self._until

    def add(self, jti: str, expires_at: int) -> bool:
        """Remember a revocation; True when it is new here."""
        new = jti not in self._until
        self._until[jti] = max(expires_at, self._until.get(jti, 0))
        if new and len(self._until) % 1024 == 0:
            self.prune()
        return new

    def prune(self) -> None:
        """Forget revocations of tokens that have expired since (verify refuses those anyway)."""
        now = self.clock()
        self._until = {jti: until for jti, until in self._until.items() if until > now}

    def __len__(self) -> int:
        return len(self._until)


class RevocationStore:
    """This node's durable copy of the revocation list."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        db.migrate(DDL)

    def add(self, jti: str, expires_at: int, by: str) -> bool:
        """Store a revocation; True when it was not stored yet."""
        with self.db.transaction():
            self.db.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?", (int(self.clock()),))
            return bool(self.db.execute(
                "INSERT INTO revoked_tokens (jti, expires_at, revoked_at, revoked_by) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (jti) DO NOTHING",
                (jti, expires_at, int(self.clock()), by),
            ).rowcount)

    def active(self) -> dict[str, int]:
        """jti -> expiry of every revocation whose token has not expired yet."""
        rows = self.db.fetchall(
            "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > ?", (int(self.clock()),)
        )
        return {row["jti"]: row["expires_at"] for row in rows}
