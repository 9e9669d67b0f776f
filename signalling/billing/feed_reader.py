"""The reference reader of the metering feed ``expertcall:metering``: counts every event exactly once.

It reads with a consumer group (XREADGROUP), and for each batch commits, in one transaction of
its own SQLite store, the event ids it has seen and the totals they add up to; only then does it
XACK. A crash before the commit leaves the messages pending, and they are read again (its own
pending entries on start, other consumers' through XAUTOCLAIM once idle long enough); a crash
after the commit but before the XACK redelivers events whose ids are already stored, which are
acknowledged without being counted again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ..core.database import Database
from .outbox import EVENT_TYPES, TYPE_PREFIX

log = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS consumed_events (
    id TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected_events (
    stream_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS expert_totals (
    expert_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    units INTEGER NOT NULL DEFAULT 0,
    gross INTEGER NOT NULL DEFAULT 0,
    fee INTEGER NOT NULL DEFAULT 0,
    payout INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (expert_id, currency)
);
"""


@dataclass(frozen=True)
class Delivery:
    stream_id: str
    fields: dict[str, str]


class FeedReaderStore:
    """The consumer's own SQLite: processed event ids and the totals they add up to."""

    def __init__(self, path: Path | str) -> None:
        self.db = Database(path)
        self.db.migrate(DDL)

    def apply(self, deliveries: list[Delivery]) -> int:
        """Count what is new in one transaction; returns how many events were new."""
        new = 0
        with self.db.transaction():
            for d in deliveries:
                try:
                    event = json.loads(d.fields["event"])
                    event_id, event_type = event["id"], event["type"]
                    if event_type not in EVENT_TYPES or event_id != d.fields.get("id"):
                        raise ValueError(f"unexpected type or id: {event_type!r} {event_id!r}")
                except (KeyError, ValueError, TypeError) as exc:
                    self.db.execute(
                        "INSERT OR IGNORE INTO rejected_events (stream_id, reason, fields) VALUES (?,?,?)",
                        (d.stream_id, str(exc), json.dumps(d.fields)),
                    )
                    continue
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO consumed_events (id, stream_id, type, subject) VALUES (?,?,?,?)",
                    (event_id, d.stream_id, event_type, event.get("subject", "")),
                )
                if cur.rowcount:
                    new += 1
                    self._count(event)
        return new

    def _count(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        short = event["type"][len(TYPE_PREFIX):]
        if short == "unit":
            sign, units, gross = 1, 1, data["amount"]
        elif short == "refunded":
            sign, units, gross = -1, 0, data["amount"]
        else:
            return
        self.db.execute(
            "INSERT INTO expert_totals (expert_id, currency, units, gross, fee, payout) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT (expert_id, currency) DO UPDATE SET units = units + excluded.units,"
            " gross = gross + excluded.gross, fee = fee + excluded.fee, payout = payout + excluded.payout",
            (data["expert_id"], data["currency"], units, sign * gross, sign * data["fee"], sign * data["payout"]),
        )

    def count(self) -> int:
        row = self.db.fetchone("SELECT count(*) AS n FROM consumed_events")
        return int(row["n"]) if row else 0

    def event_ids(self, event_type: str) -> set[str]:
        """The ids of the events of one type counted so far."""
        return {r["id"] for r in self.db.fetchall("SELECT id FROM consumed_events WHERE type = ?", (event_type,))}

    def totals(self) -> dict[tuple[str, str], dict[str, int]]:
        return {
            (r["expert_id"], r["currency"]): {k: r[k] for k in ("units", "gross", "fee", "payout")}
            for r in self.db.fetchall("SELECT * FROM expert_totals")
        }

    def close(self) -> None:
        self.db.close()


class MeteringFeedReader:
    def __init__(
        self,
        redis: Redis,
        store: FeedReaderStore,
        *,
        stream: str = "expertcall:metering",
        group: str,
        name: str,
        batch: int = 200,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.redis = redis
        self.store = store
        self.stream = stream
        self.group = group
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.received = 0
        self.counted = 0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event | None = None, idle_exit: float = 0.0) -> None:
        """Consume until ``stop`` is set, or until nothing arrived for ``idle_exit`` seconds (if > 0)."""
        stop = stop or asyncio.Event()
        await self.ensure_group()
        # Our own pending entries first: what a previous run of this consumer read but did not ack.
        while await self._read("0"):
            pass
        idle = 0.0
        loop = asyncio.get_running_loop()
        last_claim = 0.0
        while not stop.is_set():
            n = 0
            if loop.time() - last_claim >= self.claim_idle_ms / 2000:
                n += await self.claim()
                last_claim = loop.time()
            n += await self._read(">")
            idle = 0.0 if n else idle + self.block_ms / 1000
            if idle_exit and idle >= idle_exit:
                return

    async def claim(self) -> int:
        """Take over entries other consumers read but did not ack for ``claim_idle_ms``."""
        total = 0
        start = "0-0"
        while True:
            reply: Any = await self.redis.xautoclaim(
                self.stream, self.group, self.name, self.claim_idle_ms, start_id=start, count=self.batch
            )
            start, messages = reply[0], reply[1]
            total += await self._process(messages)
            if start in ("0-0", b"0-0") or not messages:
                return total

    async def _read(self, start: str) -> int:
        reply: Any = await self.redis.xreadgroup(
            self.group, self.name, {self.stream: start}, count=self.batch,
            block=None if start == "0" else self.block_ms,
        )
        if not reply:
            return 0
        return await self._process(reply[0][1])

    async def _process(self, messages: list[Any]) -> int:
        deliveries = [
            Delivery(_text(sid), {_text(k): _text(v) for k, v in fields.items()})
            for sid, fields in messages
            if fields is not None  # an entry trimmed from the stream while pending
        ]
        if deliveries:
            self.counted += self.store.apply(deliveries)
            self.received += len(deliveries)
        if messages:
            await self.redis.xack(self.stream, self.group, *[sid for sid, _ in messages])
        return len(messages)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
