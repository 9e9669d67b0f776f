"""The terms a client is charged at: the quote fixed at request (or booking) time and shown before
the ring, the budget kept on the session record, and the paused-session limit."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from signalling.calls.node import SIGNALLING
from signalling.core.settings import Settings

from ...utils import FakePlane, Peer, shut_down
from ..app.test_wiring import ALL_DAY, auth, make_expert, wired_app
from .test_session_billing import PER_UNIT, go_live, ledger

QUOTE_100 = {"kind": "per_minute", "amount": 100, "currency": "USD"}


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(
        data_dir=tmp_path / "var",
        secret="test-secret-0123456789abcdef-0123456789",
        billing_unit_seconds=1,
        paused_timeout=1.5,
        booking_min_notice_seconds=0,
        booking_min_seconds=60,
    )


async def set_price(client: Any, amount: int) -> None:
    body = {"display_name": "Erin Expert", "skills": ["python"], "price": {**PER_UNIT, "amount": amount},
            "working_hours": ALL_DAY}
    resp = await client.put("/api/experts/erin", json=body, headers=auth(client, "erin", "expert"))
    assert resp.status == 200, await resp.text()


async def test_the_price_the_client_saw_is_the_price_charged(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    await make_expert(client, "erin", skills=["python"], price=PER_UNIT)
    await client.put("/api/billing/experts/erin/fee", json={"platform_fee_bps": 1000}, headers=auth(client, "root", "admin"))
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    asked = await alice.request("help.request", expert_id="erin")
    quote = asked["session"]["quote"]
    # Shown to the client with the request's answer, before the expert is rung.
    assert (quote["price"], quote["unit_seconds"], quote["platform_fee_bps"]) == (QUOTE_100, 1, 1000)
    sid = asked["session"]["id"]

    # The expert raises the price (and the admin the fee) after the request: this call keeps its quote.
    await set_price(client, 1_000_000_000)
    await client.put("/api/billing/experts/erin/fee", json={"platform_fee_bps": 5000}, headers=auth(client, "root", "admin"))
    ring = await expert.expect("ring")
    assert ring["session"]["quote"] == quote
    waiting = await alice.request("billing.cost.get", session_id=sid)
    assert waiting["price"] == QUOTE_100
    await expert.request("help.accept", session_id=sid)
    opened = await alice.expect("billing.cost", units=0)
    assert opened["price"] == QUOTE_100
    go_live(plane, sid)
    await alice.expect("billing.cost", units=2)
    await alice.request("session.end", session_id=sid)
    earned = await expert.expect("billing.summary")
    units = ledger(client, sid)[0]
    gross = 100 * len(units)
    assert (earned["gross"]["amount"], earned["fee"]["amount"]) == (gross, gross * 1000 // 10_000)

    # The next request gets the new terms.
    bob = await Peer.join(client, "bob", "client")
    later = await bob.request("help.request", expert_id="erin")
    assert later["session"]["quote"]["price"]["amount"] == 1_000_000_000
    assert later["session"]["quote"]["platform_fee_bps"] == 5000


async def test_a_booking_keeps_the_quote_of_booking_time(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(wired_app(settings, FakePlane()))
    await make_expert(client, "erin", skills=["python"], price=PER_UNIT, working_hours=ALL_DAY)
    expert = await Peer.join(client, "erin", "expert")
    carl = await Peer.join(client, "carl", "client")
    start = math.ceil(time.time()) + 2
    iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat()  # noqa: E731
    resp = await client.post("/api/bookings", json={"expert_id": "erin", "start": iso(start), "end": iso(start + 60)},
                             headers=auth(client, "carl"))
    booking = await resp.json()
    assert resp.status == 201 and booking["quote"]["price"] == QUOTE_100
    await set_price(client, 5000)
    opened = await carl.expect("session.state", timeout=10, state="accepted")
    assert opened["session"]["quote"] == booking["quote"]
    cost = await carl.request("billing.cost.get", session_id=opened["session"]["id"])
    assert cost["price"] == QUOTE_100
    del expert


async def test_a_budget_set_while_waiting_survives_a_restart_before_accept(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    first = await aiohttp_client(wired_app(settings, FakePlane()))
    await make_expert(first, "erin", skills=["python"], price=PER_UNIT)
    expert = await Peer.join(first, "erin", "expert")
    alice = await Peer.join(first, "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    assert (await alice.request("billing.budget", session_id=sid, budget=300))["budget_cap"]["amount"] == 300
    assert (await first.app[SIGNALLING].sessions.get(sid)).budget == 300  # type: ignore[union-attr]
    await shut_down(first, expert, alice)

    plane = FakePlane()
    second = await aiohttp_client(wired_app(settings, plane))
    expert = await Peer.join(second, "erin", "expert")
    alice = await Peer.join(second, "alice", "client")
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    opened = await alice.expect("billing.cost", units=0)
    assert opened["budget_cap"] == {"amount": 300, "currency": "USD"}
    go_live(plane, sid)
    ended = await alice.expect("session.state", timeout=8, state="ended")
    assert ended["session"]["reason"] == "budget_reached" and ledger(second, sid)[0] == [0, 1, 2]


async def test_a_session_paused_too_long_ends(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    await make_expert(client, "erin", skills=["python"], price=PER_UNIT)
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    go_live(plane, sid)
    await alice.expect("billing.cost", units=1)
    # A pause shorter than the limit, then back live: the limit starts over at the next pause.
    plane.flowing(sid, "alice", False)
    paused = await alice.expect("session.state", state="paused")
    assert paused["session"]["deadline"] == pytest.approx(paused["session"]["updated_at"] + 1.5)
    await asyncio.sleep(1.0)
    plane.flowing(sid, "alice", True)
    assert (await alice.expect("session.state", state="live"))["session"]["deadline"] == 0
    await asyncio.sleep(1.0)
    plane.flowing(sid, "alice", False)
    paused = await alice.expect("session.state", state="paused")
    ended = await alice.expect("session.state", timeout=5, state="ended")
    assert (ended["session"]["reason"], ended["session"]["ended_by"]) == ("paused_timeout", "")
    assert ended["session"]["updated_at"] - paused["session"]["updated_at"] == pytest.approx(1.5, abs=0.5)
    summary = await expert.expect("billing.summary")
    assert summary["reason"] == "paused_timeout" and summary["units"] == len(ledger(client, sid)[0])
