"""The metering outbox: CloudEvents 1.0 written in the same SQLite transaction as the ledger.

Whatever the ledger says the feed says, and nothing else: an event row commits or rolls back with
the entries it describes. Each row gets a cursor (``seq``, increasing); readers page through it
(``GET /api/metering?after=``), the Redis relay and the webhook sender publish it at least once
and consumers deduplicate on the event ``id``, which is deterministic (``<session>:unit:<n>``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Iterable

from ..database import Database
from .times import rfc3339

SPEC_VERSION = "1.0"
DEFAULT_SOURCE = "/expertcall/metering"
TYPE_PREFIX = "expertcall.session."
EVENT_TYPES = frozenset(
    TYPE_PREFIX + name for name in ("started", "unit", "paused", "resumed", "ended", "refunded")
)

DDL = """
CREATE TABLE IF NOT EXISTS metering_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    relayed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS metering_outbox_unrelayed ON metering_outbox (seq) WHERE relayed = 0;
"""


def cloud_event(
    event_id: str, short_type: str, subject: str, at: float, data: dict[str, Any], source: str = DEFAULT_SOURCE
) -> dict[str, Any]:
    event_type = TYPE_PREFIX + short_type
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown metering event type {event_type!r}")
    return {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": source,
        "type": event_type,
        "subject": subject,
        "time": rfc3339(at),
        "datacontenttype": "application/json",
        "data": data,
    }


def encode(event: dict[str, Any]) -> str:
    """Canonical JSON, so a re-published event is byte for byte the original."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    id: str
    type: str
    body: str

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Outbox:
    def __init__(self, db: Database, source: str = DEFAULT_SOURCE) -> None:
        self.db = db
        self.source = source
        self._waiters: list[asyncio.Event] = []
        db.migrate(DDL)

    def event(self, event_id: str, short_type: str, subject: str, at: float, data: dict[str, Any]) -> dict[str, Any]:
        return cloud_event(event_id, short_type, subject, at, data, self.source)

    def add_many(self, events: Iterable[dict[str, Any]]) -> None:
        """Insert inside the caller's transaction; an id already there is a replay and is kept as is."""
        self.db.executemany(
            "INSERT OR IGNORE INTO metering_outbox (id, type, subject, body) VALUES (?, ?, ?, ?)",
            [(e["id"], e["type"], e["subject"], encode(e)) for e in events],
        )

    def after(self, cursor: int, limit: int) -> list[OutboxRow]:
        rows = self.db.fetchall(
            "SELECT seq, id, type, body FROM metering_outbox WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, limit)
        )
        return [OutboxRow(r["seq"], r["id"], r["type"], r["body"]) for r in rows]

    def unrelayed(self, limit: int) -> list[OutboxRow]:
        rows = self.db.fetchall(
            "SELECT seq, id, type, body FROM metering_outbox WHERE relayed = 0 ORDER BY seq LIMIT ?", (limit,)
        )
        return [OutboxRow(r["seq"], r["id"], r["type"], r["body"]) for r in rows]

    def mark_relayed(self, seqs: list[int]) -> None:
        with self.db.transaction():
            self.db.executemany("UPDATE metering_outbox SET relayed = 1 WHERE seq = ?", [(s,) for s in seqs])

    def count_unrelayed(self) -> int:
        row = self.db.fetchone("SELECT count(*) AS n FROM metering_outbox WHERE relayed = 0")
        return int(row["n"]) if row else 0

    def last_seq(self) -> int:
        row = self.db.fetchone("SELECT coalesce(max(seq), 0) AS seq FROM metering_outbox")
        return int(row["seq"]) if row else 0

    def subscribe(self) -> asyncio.Event:
        """An event set whenever new rows have been committed (see ``notify``)."""
        waiter = asyncio.Event()
        self._waiters.append(waiter)
        return waiter

    def unsubscribe(self, waiter: asyncio.Event) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    @staticmethod
    async def wait(waiter: asyncio.Event, timeout: float) -> None:
        """Wait for ``waiter`` or ``timeout``. Not ``asyncio.wait_for``: on Python 3.11 it can
        swallow a cancellation that arrives as the event is set, and a closing task never ends."""
        handle = asyncio.get_running_loop().call_later(timeout, waiter.set)
        try:
            await waiter.wait()
        finally:
            handle.cancel()

    def notify(self) -> None:
        """Called by writers after their transaction committed."""
        for waiter in self._waiters:
            waiter.set()
