"""Money before and after a call over REST: the charging rule, a client's history, an expert's
sessions in a period and one session's receipt (signalling/billing/receipts.py)."""

from __future__ import annotations

from typing import Any

import pytest

from signalling.core.settings import Settings

from ...utils import FakePlane, Peer
from ..app.test_wiring import auth, make_expert, wired_app
from .test_session_billing import PER_UNIT, go_live, ledger

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(data_dir=tmp_path / "var", secret="test-secret-0123456789abcdef-0123456789", billing_unit_seconds=1)


async def held_call(client: Any, plane: FakePlane) -> str:
    """Erin Expert and Alice Client hold a per-unit call for about 2 s; returns its session id."""
    await make_expert(client, "erin", skills=["python"], price=PER_UNIT)
    expert = await Peer.join(client, "erin", "expert", name="Erin Expert")
    alice = await Peer.join(client, "alice", "client", name="Alice Client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    go_live(plane, sid)
    await alice.expect("billing.cost", units=2)
    await alice.request("session.end", session_id=sid)
    await alice.expect("billing.summary")
    await expert.expect("billing.summary")
    return sid


async def test_terms_history_and_receipts(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    resp = await client.get("/api/billing/terms", headers=auth(client, "alice"))
    assert await resp.json() == {"unit_seconds": 1, "grace_seconds": 0, "per_session_minimum_seconds": 60,
                                 "platform_fee_bps": 2000}
    sid = await held_call(client, plane)
    units, live = ledger(client, sid)

    resp = await client.get("/api/billing/history", headers=auth(client, "alice"))
    assert resp.status == 200
    [mine] = (await resp.json())["sessions"]
    assert (mine["session_id"], mine["expert_name"], mine["client_name"]) == (sid, "Erin Expert", "Alice Client")
    assert (mine["units"], mine["total"], mine["billed_seconds"]) == (len(units), 100 * len(units), len(units))
    assert mine["live_seconds"] == pytest.approx(live, abs=0.01)
    # The call lasted from accept to hang-up: at least as long as its media flowed.
    assert mine["call_seconds"] >= mine["live_seconds"] and mine["open"] is False
    assert mine["end_reason"] == "hangup" and mine["ended_at"].endswith("Z")
    assert "payout" not in mine and "fee" not in mine  # the expert's share is the expert's business

    # The expert's view of the same session, and of a period without it.
    resp = await client.get("/api/billing/history", headers=auth(client, "erin", "expert"))
    [theirs] = (await resp.json())["sessions"]
    assert theirs["fee"] + theirs["payout"] == theirs["total"] and theirs["platform_fee_bps"] == 2000
    resp = await client.get("/api/billing/history?from=2000-01-01&to=2000-01-02", headers=auth(client, "erin", "expert"))
    assert (await resp.json())["sessions"] == []
    resp = await client.get("/api/billing/history", headers=auth(client, "bob"))
    assert (await resp.json())["sessions"] == []

    resp = await client.get(f"/api/billing/receipts/{sid}", headers=auth(client, "alice"))
    assert resp.status == 200 and await resp.json() == mine
    for who in (auth(client, "bob"), auth(client, "otto", "expert")):
        resp = await client.get(f"/api/billing/receipts/{sid}", headers=who)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "unknown_session"
    resp = await client.get(f"/api/billing/receipts/{sid}", headers=auth(client, "root", "admin"))
    assert (await resp.json())["payout"] == theirs["payout"]


@pytest.mark.parametrize(
    ("query", "role", "status", "code"),
    [
        ("as=admin", "client", 400, "bad_request"),
        ("limit=0", "client", 400, "invalid_limit"),
        ("from=yesterday", "client", 400, "bad_request"),
        ("colour=red", "client", 400, "unknown_parameter"),
        ("user=erin", "client", 403, "forbidden"),
    ],
)
async def test_history_refuses_bad_queries(aiohttp_client, settings, query, role, status, code) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(wired_app(settings, FakePlane()))
    resp = await client.get(f"/api/billing/history?{query}", headers=auth(client, "alice", role))
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert (await client.get("/api/billing/history")).status == 401
