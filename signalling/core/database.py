"""The embedded SQLite database in the data dir: what must survive a restart on a single node.

One file, WAL mode, one connection used from the event loop thread. Each module that keeps state
(sessions, experts, bookings, ledger, outbox) creates its own tables with ``migrate``; a module
that must write atomically across tables (the ledger and its outbox) uses ``transaction``.
Writes are small and local, so they run inline rather than in a thread pool.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .files import private_dir, private_file


class Database:
    FILENAME = "expertcall.sqlite3"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        # It holds the ledger and everyone's sessions: the owner's alone (its -wal and -shm
        # files take its mode).
        private_dir(self.path.parent)
        private_file(self.path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (SIGKILL) without losing commits; only a
        # power loss can drop the last transactions.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._depth = 0

    @classmethod
    def in_dir(cls, data_dir: Path) -> "Database":
        return cls(Path(data_dir) / cls.FILENAME)

    def migrate(self, ddl: str) -> None:
        """Run idempotent DDL (CREATE ... IF NOT EXISTS)."""
        self._conn.executescript(ddl)

    def migrate_versions(self, component: str, migrations: Sequence[tuple[int, str]]) -> None:
        """Apply ``component``'s numbered migrations that this file has not had yet, in order,
        each in its own transaction with its record in ``schema_migrations``."""
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,"
            " applied_at REAL NOT NULL, PRIMARY KEY (component, version))"
        )
        done = {r[0] for r in self._conn.execute(
            "SELECT version FROM schema_migrations WHERE component = ?", (component,))}
        for version, sql in sorted(migrations):
            if version in done:
                continue
            record = (
                f"INSERT INTO schema_migrations VALUES ('{component}', {int(version)}, {time.time()!r});"
            )
            try:
                self._conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\n{record}\nCOMMIT;")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def add_column(self, table: str, column: str, decl: str) -> None:
        """Add a column that a newer version of a table has, to a table made by an older one."""
        if column not in {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}:
            self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; nests by joining the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self._conn
            finally:
                self._depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")
        finally:
            self._depth = 0

    @property
    def total_changes(self) -> int:
        """Rows changed through this connection since it opened: moves with every write."""
        return self._conn.total_changes

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        return self._conn.executemany(sql, rows)

    def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        return self._conn.execute(sql, params).fetchone()

    def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self._conn.close()
