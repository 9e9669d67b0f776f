from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aiohttp import web

from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price
from signalling.billing.webhooks import SIGNATURE_HEADER, WebhookSender, WebhookSignatureError, sign, verify

from ...billing_helpers import T0, ManualClock, advance, make_meter

pytestmark = pytest.mark.integration

SECRET = "whsec-0123456789abcdef"


def test_signature_verification() -> None:
    body = b'{"id":"s:unit:0"}'
    now = 1_800_000_000
    header = sign(SECRET, body, now)
    assert header.startswith(f"t={now},v1=")
    verify(SECRET, header, body, now=now + 10)
    for secret, hdr, payload, at in (
        ("wrong-secret-0123456789", header, body, now),
        (SECRET, header, body + b" ", now),
        (SECRET, header, body, now + 301),
        (SECRET, header.replace("t=", "x="), body, now),
        (SECRET, f"t={now},v1=00", body, now),
    ):
        with pytest.raises(WebhookSignatureError):
            verify(secret, hdr, payload, now=at)


def test_urls_without_a_secret_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    meter = make_meter(tmp_path, ManualClock())
    with pytest.raises(ValueError, match="secret"):
        WebhookSender(meter.outbox, ["http://127.0.0.1:1/hook"], "")


async def test_receiver_sees_every_event_at_least_once_with_stable_ids(tmp_path, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    meter = make_meter(tmp_path, clock)
    for sid in ("a", "b", "c"):
        await meter.started(sid, "e", "c", Price.per_minute(Money(100, "USD")), BillingPolicy(), at=T0)
        await meter.media_live(sid, at=T0)
    await advance(meter, clock, T0 + 200)
    for sid in ("a", "b", "c"):
        await meter.ended(sid, at=T0 + 200)
    expected = {r.id: r.body for r in await meter.outbox.after(0, 1000)}

    received: list[tuple[str, str]] = []
    attempts: Counter[str] = Counter()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(SECRET, request.headers[SIGNATURE_HEADER], body)
        except (KeyError, WebhookSignatureError):
            return web.Response(status=401)
        event = await request.json()
        attempts[event["id"]] += 1
        n = attempts[event["id"]]
        if len(attempts) % 3 == 0 and n == 1:
            return web.Response(status=503)  # refused before processing: retried
        received.append((event["id"], body.decode()))
        if len(attempts) % 4 == 0 and n <= 2:
            return web.Response(status=500)  # processed, but the sender cannot know: a duplicate
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = str(server.make_url("/hook"))
    sender = WebhookSender(meter.outbox, [url], SECRET, base_delay=0.01, max_delay=0.05)
    sender.start()
    deadline = time.time() + 30
    while await sender.cursor(url) < await meter.outbox.last_seq() and time.time() < deadline:
        await asyncio.sleep(0.02)
    await sender.close()

    assert {i for i, _ in received} == set(expected)
    assert all(body == expected[i] for i, body in received)  # a duplicate is the same event
    assert len(received) > len(expected)  # duplicates did happen, with the same ids
    first_seen = list(dict.fromkeys(i for i, _ in received))
    assert first_seen == list(expected)  # in feed order

    # A restarted sender resumes at its cursor: nothing is sent again.
    again = WebhookSender(meter.outbox, [url], SECRET, base_delay=0.01)
    before = len(received)
    again.start()
    await asyncio.sleep(0.2)
    await again.close()
    assert len(received) == before
