"""Moves SQLite's WAL checkpoints off the event loop.

In WAL mode with synchronous=NORMAL a commit only appends to the WAL; the fsyncs happen when the
WAL is checkpointed into the database file, which SQLite by default does inside whichever commit
crosses 1000 pages. On a busy disk that one commit can stall the event loop for hundreds of ms,
and every unit falling due meanwhile is charged late. The checkpointer turns automatic
checkpoints off for the billing connection and runs passive ones (which never block writers)
from a worker thread on its own connection, and only when something was written since the last
one (an idle server makes no thread hop).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from ..core.database import Database

log = logging.getLogger(__name__)


class WalCheckpointer:
    def __init__(self, db: Database, interval: float = 1.0) -> None:
        self.db = db
        self.interval = interval
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._changes = -1  # the database's total_changes at the last checkpoint
        self.checkpoints = 0

    def start(self) -> None:
        self._conn = sqlite3.connect(self.db.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="wal-checkpoint")

    async def close(self) -> None:
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None
        self.db.execute("PRAGMA wal_autocheckpoint=1000")
        assert self._conn is not None
        await asyncio.to_thread(self._conn.close)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            changes = self.db.total_changes
            if changes != self._changes:
                try:
                    await asyncio.to_thread(self._checkpoint)
                    self._changes = changes
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed: %s", exc)
            handle = loop.call_later(self.interval, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                handle.cancel()
                self._wake.clear()

    def _checkpoint(self) -> None:
        assert self._conn is not None
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.checkpoints += 1
