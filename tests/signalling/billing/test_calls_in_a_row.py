"""Three calls in a row on one node, on the real clock, with idle gaps between them: every unit
reaches both sockets at its start (within a second) and is in the ledger, and a budget cap ends
the call at the cap. Before the Meter's wake-up fix, every call after the first was charged only
at hang-up (its units were never pushed while it ran) and a cap did not end it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from signalling.core import keys
from signalling.core.settings import Settings

from ...utils import FakePlane, Peer
from ..app.test_wiring import make_expert, wired_app
from .test_session_billing import PER_UNIT, go_live

# A unit is 1 s; a unit's billing.cost may arrive at most this late after its start.
LATE = 1.0


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(
        data_dir=tmp_path / "var",
        secret="test-secret-0123456789abcdef-0123456789",
        billing_unit_seconds=1,
    )


async def arrivals(peer: Peer, units: int, timeout: float) -> dict[int, float]:
    """When each unit's billing.cost reached ``peer`` (local receive time)."""
    seen: dict[int, float] = {}
    async with asyncio.timeout(timeout):
        while len(seen) < units:
            msg = await peer.expect("billing.cost", timeout=timeout)
            if msg["live"] and msg["units"] not in seen:
                seen[msg["units"]] = time.time()
    return seen


def postings(client: Any, sid: str) -> list[tuple[int, float]]:
    db = client.app[keys.DATABASE]
    return [(r["unit_index"], r["at"]) for r in db.fetchall(
        "SELECT unit_index, at FROM ledger_postings WHERE session_id = ? AND kind = 'charge' ORDER BY unit_index", (sid,))]


def live_start(client: Any, sid: str) -> float:
    row = client.app[keys.DATABASE].fetchone(
        "SELECT start FROM billing_intervals WHERE session_id = ? AND idx = 0", (sid,))
    return float(row["start"])


async def start_call(client: Any, plane: FakePlane, expert: Peer, alice: Peer, budget: int | None = None) -> str:
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    if budget is not None:
        assert (await alice.request("billing.budget", session_id=sid, budget=budget))["type"] == "billing.cost"
    ring = await expert.expect("ring")
    assert ring["session"]["id"] == sid
    await expert.request("help.accept", session_id=sid)
    for peer in (alice, expert):
        await peer.expect("billing.cost", session_id=sid, units=0)
    go_live(plane, sid)
    await alice.expect("session.state", state="live")
    return sid


async def test_three_calls_in_a_row_are_charged_as_they_run(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    await make_expert(client, "erin", skills=["python"], price=PER_UNIT)
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")

    for call, gap in ((1, 3.0), (2, 3.0)):
        sid = await start_call(client, plane, expert, alice)
        # Both sockets read at once: a message is timed when it arrives, not when a test reads it.
        heard = await asyncio.gather(arrivals(alice, 3, timeout=6), arrivals(expert, 3, timeout=6))
        seen = dict(zip((alice, expert), heard))
        charged = postings(client, sid)
        assert [i for i, _ in charged[:3]] == [0, 1, 2], (call, charged)
        start = live_start(client, sid)
        for index, at in charged[:3]:
            # The ledger says the unit started when live time passed index units...
            assert at == pytest.approx(start + index, abs=1e-6), (call, index)
            # ...and both people heard of it within a second of that.
            for peer in (alice, expert):
                assert -0.05 <= seen[peer][index + 1] - at <= LATE, (call, index, seen[peer][index + 1] - at)
        await alice.request("session.end", session_id=sid)
        for peer in (alice, expert):
            summary = await peer.expect("billing.summary", session_id=sid)
            assert summary["reason"] == "hangup" and summary["units"] == len(postings(client, sid))
        await asyncio.sleep(gap)  # idle between calls: no session open on the node

    # Call 3, with a 2-unit budget: it ends by itself when the third unit would start.
    sid = await start_call(client, plane, expert, alice, budget=200)
    await arrivals(alice, 2, timeout=5)
    ended = await alice.expect("session.state", timeout=5, state="ended")
    assert ended["session"]["reason"] == "budget_reached"
    start = live_start(client, sid)
    # The cap is reached when live time passes 2 units: the session ended then, not later.
    assert start + 2 - 0.05 <= ended["session"]["updated_at"] <= start + 2 + LATE
    summary = await alice.expect("billing.summary", session_id=sid)
    assert (summary["reason"], summary["units"], summary["charged"]["amount"]) == ("budget_reached", 2, 200)
    assert [i for i, _ in postings(client, sid)] == [0, 1]
