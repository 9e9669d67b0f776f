"""Signed webhooks: every metering event POSTed to each configured URL, at least once, in order.

The body is the CloudEvent's canonical JSON (``application/cloudevents+json``); the header
``Expertcall-Signature: t=<unix>,v1=<hex>`` carries HMAC-SHA256(secret, f"{t}.{body}"). A receiver
checks it with ``verify`` (constant-time, with a freshness window against replays) and
deduplicates on the event ``id``: a retry is the same event with the same id and a new signature.
Each URL has its own cursor in the billing store, advanced only after a 2xx, and one node at a
time sends to it (``BillingStore.exclusive``), so several nodes do not each send every event; failures are retried with
exponential backoff, forever, so a receiver that is down for a day still gets everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time

import aiohttp

from ..core.tasks import cancel_and_wait
from .outbox import Outbox, OutboxRow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Expertcall-Signature"
CONTENT_TYPE = "application/cloudevents+json"
DEFAULT_TOLERANCE = 300
# A node whose turn to send to a URL is taken by another looks again this often.
TURN_RETRY_SECONDS = 5.0



class WebhookSignatureError(Exception):
    pass


def sign(secret: str, body: bytes, t: int) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None,
           tolerance: int = DEFAULT_TOLERANCE) -> None:
    """Raise ``WebhookSignatureError`` unless ``header`` signs ``body`` with ``secret`` recently."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        raise WebhookSignatureError("the signature header has no timestamp") from None
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        raise WebhookSignatureError("the signature timestamp is outside the tolerance")
    expected = sign(secret, body, t).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, v) for v in parts.get("v1", [])):
        raise WebhookSignatureError("no valid v1 signature")


class WebhookSender:
    def __init__(
        self,
        outbox: Outbox,
        urls: tuple[str, ...] | list[str],
        secret: str,
        *,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        timeout: float = 10.0,
        batch: int = 100,
    ) -> None:
        if urls and not secret:
            raise ValueError("webhooks need a secret to sign with (webhook_secret)")
        self.outbox = outbox
        self.urls = tuple(urls)
        self.secret = secret
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.batch = batch
        self.attempts = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def cursor(self, url: str) -> int:
        return await self.outbox.store.webhook_cursor(url)

    def start(self) -> None:
        if not self.urls:
            return
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(url), name=f"webhook {url}") for url in self.urls]

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, url: str) -> None:
        """Deliver to ``url`` while this node holds its turn (one node at a time sends to a URL,
        from the shared cursor); a node without it looks again every few seconds."""
        while True:
            async with self.outbox.store.exclusive(f"webhook:{url}") as mine:
                if mine:
                    await self._send_from_cursor(url)
            await asyncio.sleep(TURN_RETRY_SECONDS)

    async def _send_from_cursor(self, url: str) -> None:
        waiter = self.outbox.subscribe()
        try:
            cursor = await self.cursor(url)
            while True:
                waiter.clear()
                rows = await self.outbox.after(cursor, self.batch)
                for row in rows:
                    await self._deliver(url, row)
                    cursor = row.seq
                    await self.outbox.store.set_webhook_cursor(url, cursor)
                if len(rows) < self.batch:
                    await self.outbox.wait(waiter, 1.0)
        finally:
            self.outbox.unsubscribe(waiter)

    async def _deliver(self, url: str, row: OutboxRow) -> None:
        """POST one event until a 2xx answers; the delay doubles up to ``max_delay``."""
        assert self._session is not None
        body = row.body.encode()
        delay = self.base_delay
        while True:
            self.attempts += 1
            headers = {
                "Content-Type": CONTENT_TYPE,
                SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
                "Ce-Id": row.id,
            }
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        return
                    log.info("webhook %s answered %s for %s; retrying in %.1f s", url, resp.status, row.id, delay)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("webhook %s failed for %s (%s); retrying in %.1f s", url, row.id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(self.max_delay, delay * 2)
