"""The metering outbox: CloudEvents 1.0 written in the same transaction as the ledger.

Whatever the ledger says the feed says, and nothing else: an event row commits or rolls back with
the entries it describes (the ``BillingStore`` writes both). Each row gets a cursor (``seq``,
growing in commit order); readers page through it
(``GET /api/metering?after=``), the Redis relay and the webhook sender publish it at least once
and consumers deduplicate on the event ``id``, which is deterministic (``<session>:unit:<n>``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from .store import BillingStore, OutboxRow
from .times import rfc3339

__all__ = ["Outbox", "OutboxRow", "cloud_event", "encode", "EVENT_TYPES", "TYPE_PREFIX", "RECORDING_PREFIX",
           "DEFAULT_SOURCE"]

SPEC_VERSION = "1.0"
DEFAULT_SOURCE = "/expertcall/metering"
TYPE_PREFIX = "expertcall.session."
# Recordings' events travel the same outbox, stream and webhooks (signalling/recording_archive.py).
RECORDING_PREFIX = "expertcall.recording."
EVENT_TYPES = frozenset(
    TYPE_PREFIX + name for name in ("started", "unit", "paused", "resumed", "ended", "refunded")
) | frozenset(RECORDING_PREFIX + name for name in ("started", "stopped", "ready", "deleted"))


def cloud_event(
    event_id: str, short_type: str, subject: str, at: float, data: dict[str, Any], source: str = DEFAULT_SOURCE,
    prefix: str = TYPE_PREFIX,
) -> dict[str, Any]:
    event_type = prefix + short_type
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


class Outbox:
    def __init__(self, store: BillingStore, source: str = DEFAULT_SOURCE) -> None:
        self.store = store
        self.source = source
        self._waiters: list[asyncio.Event] = []

    def event(self, event_id: str, short_type: str, subject: str, at: float, data: dict[str, Any]) -> dict[str, Any]:
        return cloud_event(event_id, short_type, subject, at, data, self.source)

    async def after(self, cursor: int, limit: int) -> list[OutboxRow]:
        return await self.store.events_after(cursor, limit)

    async def count_unrelayed(self) -> int:
        return await self.store.count_unrelayed()

    async def last_seq(self) -> int:
        return await self.store.last_seq()

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
