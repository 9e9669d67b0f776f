"""Billing driven by real sessions over /ws: units while live, none while paused, the budget cap,
and the summaries both sides get, checked against the ledger. The media plane is a fake that the
test tells when media flows; the billing unit is 1 s."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from signalling.core import keys
from signalling.core.settings import Settings

from ...utils import FakePlane, Peer, shut_down
from ..app.test_wiring import auth, make_expert, wired_app

PER_UNIT = {"mode": "per_minute", "amount": 100, "currency": "USD"}


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(
        data_dir=tmp_path / "var",
        secret="test-secret-0123456789abcdef-0123456789",
        billing_unit_seconds=1,
        platform_fee_bps=2000,
    )


async def call(client: Any, plane: FakePlane, budget: int | None = None) -> tuple[Peer, Peer, str]:
    """Erin (1.00 USD per 1 s unit) accepts Alice's request; the session is accepted, not live."""
    await make_expert(client, "erin", skills=["python"], price=PER_UNIT)
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    if budget is not None:
        reply = await alice.request("billing.budget", session_id=sid, budget=budget)
        assert (reply["type"], reply["budget_cap"], reply["units"]) == (
            "billing.cost", {"amount": budget, "currency": "USD"}, 0), reply
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    for peer in (expert, alice):
        opened = await peer.expect("billing.cost")
        assert opened["price"] == {"kind": "per_minute", "amount": 100, "currency": "USD"} and opened["units"] == 0
    return expert, alice, sid


def go_live(plane: FakePlane, sid: str) -> None:
    plane.flowing(sid, "alice", True)
    plane.flowing(sid, "erin", True)


async def units_seen(peer: Peer, units: int) -> dict[str, Any]:
    """The billing.cost of the ``units``-th unit (earlier ones are checked on the way)."""
    for n in range(1, units + 1):
        cost = await peer.expect("billing.cost", units=n)
        assert cost["total"] == {"amount": 100 * n, "currency": "USD"} and cost["live"] is True
    return cost


def ledger(client: Any, sid: str) -> tuple[list[int], float]:
    """Unit indexes charged and the live seconds of the meter's timeline."""
    db = client.app[keys.DATABASE]
    units = [r[0] for r in db.fetchall(
        "SELECT unit_index FROM ledger_postings WHERE session_id = ? AND kind = 'charge' ORDER BY unit_index", (sid,))]
    live = db.fetchone("SELECT sum(end - start) FROM billing_intervals WHERE session_id = ?", (sid,))[0]
    return units, live or 0.0


async def test_live_time_is_charged_per_unit_and_summarised(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    expert, alice, sid = await call(client, plane)
    go_live(plane, sid)
    await alice.expect("session.state", state="live")
    cost = await units_seen(alice, 3)
    assert cost["next_charge_at"] is not None
    await units_seen(expert, 3)
    asked = await expert.request("billing.cost.get", session_id=sid)
    assert asked["type"] == "billing.cost" and asked["units"] >= 3
    await alice.request("session.end", session_id=sid)

    charged = await alice.expect("billing.summary")
    earned = await expert.expect("billing.summary")
    units, live = ledger(client, sid)
    # Every started unit of live time, once: 3 after ~2.x s (more only if the machine stalled).
    assert len(units) >= 3 and units == list(range(len(units))) and len(units) == math.ceil(live)
    gross = 100 * len(units)
    assert (charged["role"], charged["units"], charged["charged"]) == ("client", len(units), {"amount": gross, "currency": "USD"})
    assert (earned["role"], earned["gross"]["amount"], earned["fee"]["amount"], earned["payout"]["amount"]) == (
        "expert", gross, gross // 5, gross - gross // 5)
    assert charged["reason"] == earned["reason"] == "hangup"
    resp = await client.get(f"/api/billing/sessions/{sid}", headers=auth(client, "alice"))
    body = await resp.json()
    assert (body["open"], body["units"], body["total"], body["fee"], body["payout"]) == (
        False, len(units), gross, gross // 5, gross - gross // 5)
    final = await alice.request("billing.cost.get", session_id=sid)
    assert (final["units"], final["total"]["amount"], final["live"]) == (len(units), gross, False)


async def test_a_paused_interval_is_not_billed(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    expert, alice, sid = await call(client, plane)
    go_live(plane, sid)
    await units_seen(alice, 1)
    plane.flowing(sid, "erin", False)
    await alice.expect("session.state", state="paused")
    paused = await alice.request("billing.cost.get", session_id=sid)
    assert paused["live"] is False and paused["next_charge_at"] is None
    await asyncio.sleep(2.5)
    assert (await alice.request("billing.cost.get", session_id=sid))["units"] == paused["units"]
    plane.flowing(sid, "erin", True)
    await alice.expect("session.state", state="live")
    await alice.expect("billing.cost", units=paused["units"] + 1)
    await expert.request("session.end", session_id=sid)
    summary = await alice.expect("billing.summary")

    units, live = ledger(client, sid)
    intervals = client.app[keys.DATABASE].fetchall(
        "SELECT start, end FROM billing_intervals WHERE session_id = ? ORDER BY idx", (sid,))
    assert len(intervals) == 2 and intervals[1]["start"] - intervals[0]["end"] >= 2.5
    assert summary["units"] == len(units) == math.ceil(live) and summary["live_seconds"] == pytest.approx(live, abs=1e-3)
    wall = intervals[1]["end"] - intervals[0]["start"]
    assert len(units) < math.ceil(wall)


async def test_the_budget_warns_then_ends_the_session(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    expert, alice, sid = await call(client, plane, budget=500)
    refused = await expert.request("billing.budget", session_id=sid, budget=300)
    assert refused["code"] == "forbidden"
    too_low = await alice.request("billing.budget", session_id=sid, budget=50)
    assert too_low["code"] == "budget_too_low"
    go_live(plane, sid)
    await units_seen(alice, 1)
    # Lowered during the call: two units in all.
    lowered = await alice.request("billing.budget", session_id=sid, budget=200)
    assert lowered["budget_cap"] == {"amount": 200, "currency": "USD"}
    assert (await expert.expect("billing.cost", budget_cap={"amount": 200, "currency": "USD"}))["units"] >= 1
    for peer in (alice, expert):
        warning = await peer.expect("billing.warning")
        assert warning["total"] == warning["budget_cap"] == {"amount": 200, "currency": "USD"}
        assert warning["ends_at_live_seconds"] == 2
    ended = await alice.expect("session.state", state="ended")
    assert (ended["session"]["reason"], ended["session"]["ended_by"]) == ("budget_reached", "")
    assert (await expert.expect("session.state", state="ended"))["session"]["reason"] == "budget_reached"
    summary = await alice.expect("billing.summary")
    assert (summary["reason"], summary["units"], summary["charged"]["amount"]) == ("budget_reached", 2, 200)
    assert ledger(client, sid)[0] == [0, 1]
    late = await alice.request("billing.budget", session_id=sid, budget=1000)
    assert late["code"] == "invalid_state"


async def test_who_may_ask_about_costs(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    _, _, sid = await call(client, plane)
    mallory = await Peer.join(client, "mallory", "client")
    assert (await mallory.request("billing.cost.get", session_id=sid))["code"] == "not_participant"
    assert (await mallory.request("billing.budget", session_id=sid, budget=500))["code"] == "not_participant"
    assert (await mallory.request("billing.cost.get", session_id="nope"))["code"] == "session_not_found"
    # A request that never got accepted was never metered.
    bob = await Peer.join(client, "bob", "client")
    waiting = (await bob.request("help.request", expert_id="erin"))["session"]["id"]
    assert (await bob.request("billing.cost.get", session_id=waiting))["units"] == 0
    await bob.request("help.cancel", session_id=waiting)
    assert (await bob.request("billing.cost.get", session_id=waiting))["code"] == "invalid_state"


async def test_the_outage_is_not_billed(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    first = await aiohttp_client(wired_app(settings, plane))
    expert, alice, sid = await call(first, plane, budget=1000)
    go_live(plane, sid)
    await units_seen(alice, 1)
    await shut_down(first, expert, alice)
    await asyncio.sleep(2.5)  # billed as live, this outage alone would be two or three more units

    second = await aiohttp_client(wired_app(settings, FakePlane()))
    resp = await second.get(f"/api/billing/sessions/{sid}", headers=auth(second, "alice"))
    body = await resp.json()
    # Units started before the stop are kept (at most the one running when it stopped); the
    # restarted node paused the session, and the clock stays stopped until media flows again.
    assert body["open"] is True and body["units"] in (1, 2)
    charged = ledger(second, sid)[0]
    assert charged == list(range(body["units"]))
    await asyncio.sleep(1.5)
    assert ledger(second, sid)[0] == charged
    alice = await Peer.join(second, "alice", "client")
    assert alice.welcome["session"]["state"] == "paused"


async def test_an_admin_set_fee_applies_to_the_experts_next_sessions(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    url = "/api/billing/experts/erin/fee"
    assert (await (await client.get(url, headers=auth(client, "erin", "expert"))).json()) == {
        "expert_id": "erin", "platform_fee_bps": 2000, "default": True}
    refused = await client.put(url, json={"platform_fee_bps": 0}, headers=auth(client, "erin", "expert"))
    assert refused.status == 403
    assert (await client.get(url, headers=auth(client, "ezra", "expert"))).status == 403
    for bad in ({"platform_fee_bps": 10_001}, {"platform_fee_bps": 12.5}, {"fee": 1000}, [1000]):
        resp = await client.put(url, json=bad, headers=auth(client, "root", "admin"))
        assert resp.status == 400, bad
    resp = await client.put(url, json={"platform_fee_bps": 1250}, headers=auth(client, "root", "admin"))
    assert (await resp.json())["platform_fee_bps"] == 1250

    expert, alice, sid = await call(client, plane)
    go_live(plane, sid)
    await units_seen(alice, 2)
    await alice.request("session.end", session_id=sid)
    earned = await expert.expect("billing.summary")
    gross = earned["gross"]["amount"]
    # floor(gross * 1250 / 10000): 12.5%, not the server's 20%
    assert earned["fee"]["amount"] == gross * 1250 // 10_000 and earned["payout"]["amount"] == gross - earned["fee"]["amount"]
    reset = await client.put(url, json={"platform_fee_bps": None}, headers=auth(client, "root", "admin"))
    assert (await reset.json()) == {"expert_id": "erin", "platform_fee_bps": 2000, "default": True}
