"""Publishes the metering outbox to the Redis Stream ``expertcall:metering``, at least once.

Rows are XADDed in outbox order and marked relayed only after Redis accepted them; a crash in
between re-publishes them with the same event ids, which consumers deduplicate. Every node runs a
relay, but the store hands the outbox to one at a time (``BillingStore.relay_batch``: an advisory
lock in PostgreSQL), so the stream keeps the outbox's order. Nothing is trimmed
here: billing data stays in the stream until an operator trims what every group has acknowledged.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .outbox import Outbox

log = logging.getLogger(__name__)

# How soon a closing relay asks again while another node's relay holds the outbox (one batch).
BUSY_RETRY_SECONDS = 0.02


class RedisRelay:
    def __init__(
        self,
        outbox: Outbox,
        redis: Redis,
        stream: str = "expertcall:metering",
        *,
        batch: int = 500,
        poll_seconds: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.outbox = outbox
        self.redis = redis
        self.stream = stream
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.max_backoff = max_backoff
        self.published = 0
        # Events not yet in the stream, as last counted (at most once a second), for /metrics.
        self.backlog = 0
        self._counted_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Event | None = None
        self._stopping = False

    async def relay_once(self) -> int | None:
        """Publish the oldest unrelayed events: how many (0: none are left), or None while
        another node's relay holds the outbox."""
        async with self.outbox.store.relay_batch(self.batch) as rows:
            if rows is None:
                return None
            if not rows:
                return 0
            pipe = self.redis.pipeline(transaction=False)
            for row in rows:
                pipe.xadd(self.stream, {"id": row.id, "type": row.type, "event": row.body})
            await pipe.execute()
        self.published += len(rows)
        return len(rows)

    def start(self) -> None:
        self._waiter = self.outbox.subscribe()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metering-relay")

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Stop, then publish what is left (bounded: what fails stays in the outbox for next time)."""
        if self._task is None:
            return
        # A stop flag, not Task.cancel(): redis-py can swallow a cancellation that lands inside a
        # pipeline, and the task would then never end.
        self._stopping = True
        if self._waiter is not None:
            self._waiter.set()
        try:
            async with asyncio.timeout(flush_timeout):
                await self._task
        except TimeoutError:
            self._task.cancel()
        self._task = None
        if self._waiter is not None:
            self.outbox.unsubscribe(self._waiter)
        try:
            async with asyncio.timeout(flush_timeout):
                # Until this relay finds the outbox empty itself: another node's relay holding it
                # may have read before our last events committed, and be stopping too.
                while (n := await self.relay_once()) != 0:
                    if n is None:
                        await asyncio.sleep(BUSY_RETRY_SECONDS)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("metering relay stopped with events left in the outbox: %s", exc)

    async def _run(self) -> None:
        assert self._waiter is not None
        backoff = 0.1
        while not self._stopping:
            try:
                self._waiter.clear()
                n = await self.relay_once()
                backoff = 0.1
            except (RedisError, OSError) as exc:
                log.warning("metering relay: redis unavailable (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)
                continue
            loop_time = asyncio.get_running_loop().time()
            if loop_time - self._counted_at >= 1.0:
                self._counted_at = loop_time
                try:
                    self.backlog = await self.outbox.count_unrelayed()
                except Exception as exc:  # a gauge: never stop relaying for it
                    log.warning("metering relay: could not count the backlog (%s)", exc)
            if n == self.batch:
                await asyncio.sleep(0)
                continue
            await self.outbox.wait(self._waiter, self.poll_seconds)
