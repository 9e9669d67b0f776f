"""One meter per session across nodes: several apps in this process on one backend hub and one
PostgreSQL database, each with its own (fake) media plane. The node that accepted a session hosts
its room and meters it; transitions made elsewhere reach it; when it dies, another takes over.
(tests/signalling/billing/test_chaos.py does the same with real processes, Redis and media.)"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

import pytest

from signalling.backends.memory import MemoryBackend, MemoryHub
from signalling.billing import session_billing
from signalling.billing.service import METER
from signalling.calls.node import BACKEND, SIGNALLING
from signalling.core.settings import Settings

from ...utils import FakePlane, Peer, eventually
from ..app.test_wiring import auth, make_expert, wired_app
from .test_session_billing import PER_UNIT


@pytest.fixture
def settings(tmp_path, postgres_url) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(
        data_dir=tmp_path / "var",
        secret="test-secret-0123456789abcdef-0123456789",
        billing_unit_seconds=1,
        database_url=postgres_url,
    )


class Cluster:
    def __init__(self, aiohttp_client: Any, settings: Settings) -> None:
        self.aiohttp_client = aiohttp_client
        self.settings = settings
        self.hub = MemoryHub()
        self.nodes: dict[str, Any] = {}
        self.planes: dict[str, FakePlane] = {}

    async def start(self, name: str) -> Any:
        settings = dataclasses.replace(self.settings, node_id=name, data_dir=self.settings.data_dir / name)
        plane = FakePlane()
        app = wired_app(settings, plane)
        app[BACKEND] = MemoryBackend(name, self.hub, stash_ttl=5)
        client = await self.aiohttp_client(app)
        if not self.nodes:  # one profile in the shared database: every node shows it
            await make_expert(client, "erin", skills=["python"], price=PER_UNIT)
        self.nodes[name], self.planes[name] = client, plane
        return client

    async def stop(self, name: str) -> None:
        await self.nodes.pop(name).close()

    def live(self, node: str, sid: str) -> None:
        for user in ("alice", "erin"):
            self.planes[node].flowing(sid, user, True)


async def call(cluster: Cluster, expert_on: str, client_on: str, budget: int | None = None) -> tuple[Peer, Peer, str]:
    expert = await Peer.join(cluster.nodes[expert_on], "erin", "expert")
    alice = await Peer.join(cluster.nodes[client_on], "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    if budget is not None:
        assert (await alice.request("billing.budget", session_id=sid, budget=budget))["budget_cap"]["amount"] == budget
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    return expert, alice, sid


async def ledger(cluster: Cluster, sid: str) -> tuple[list[int], float]:
    """Unit indexes charged (any node's view: one database) and the stored live seconds."""
    meter = next(iter(cluster.nodes.values())).app[METER]
    units = [p.unit_index for p in await meter.ledger.postings(sid) if p.kind == "charge"]
    stored = await meter.store.session(sid)
    return units, stored.live_seconds if stored else 0.0


async def test_a_hang_up_on_the_node_without_the_room_ends_the_meter(aiohttp_client, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(session_billing, "WATCH_SECONDS", 60.0)  # the envelope alone must do it
    cluster = Cluster(aiohttp_client, settings)
    await cluster.start("n1")
    await cluster.start("n2")
    expert, alice, sid = await call(cluster, expert_on="n1", client_on="n2")
    cluster.live("n1", sid)
    await alice.expect("billing.cost", units=2)
    hung_up = await alice.request("session.end", session_id=sid)  # on n2; the meter is on n1
    end = hung_up["session"]["updated_at"]
    await asyncio.sleep(1.2)  # a unit boundary: a meter still running would charge it
    for peer in (alice, expert):
        summary = await peer.expect("billing.summary")
        assert summary["reason"] == "hangup"
    units, live = await ledger(cluster, sid)
    # n1 heard of it at once (an envelope), not at its next look at the record: the end is the
    # hang-up, and no unit started after it.
    stored = await cluster.nodes["n1"].app[METER].store.session(sid)
    assert stored is not None and stored.ended_at is not None and stored.ended_at - end < 0.2
    postings = await cluster.nodes["n1"].app[METER].ledger.postings(sid)
    assert all(p.at <= end for p in postings)
    await asyncio.sleep(2.5)  # n1's meter would have charged two more by now
    assert (await ledger(cluster, sid))[0] == units == list(range(summary["units"]))
    assert len(units) == math.ceil(live) and not cluster.nodes["n1"].app[METER].is_open(sid)
    # The same answer on both nodes.
    views = [await (await n.get(f"/api/billing/sessions/{sid}", headers=auth(n, "alice"))).json()
             for n in cluster.nodes.values()]
    assert views[0] == views[1] and views[0]["open"] is False and views[0]["units"] == len(units)


async def test_a_budget_set_on_one_node_caps_a_call_metered_on_another(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    cluster = Cluster(aiohttp_client, settings)
    await cluster.start("n1")
    await cluster.start("n2")
    expert, alice, sid = await call(cluster, expert_on="n1", client_on="n2", budget=300)
    opened = await alice.expect("billing.cost", units=0)
    assert opened["budget_cap"] == {"amount": 300, "currency": "USD"}
    cluster.live("n1", sid)
    await alice.expect("billing.cost", units=1)
    # Lowered on n2 during the call: n1's meter applies it.
    lowered = await alice.request("billing.budget", session_id=sid, budget=200)
    assert lowered["budget_cap"] == {"amount": 200, "currency": "USD"}
    ended = await alice.expect("session.state", timeout=6, state="ended")
    assert ended["session"]["reason"] == "budget_reached"
    assert (await ledger(cluster, sid))[0] == [0, 1]
    del expert


async def test_the_room_node_dies_and_the_call_is_settled_elsewhere_without_the_gap(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    cluster = Cluster(aiohttp_client, settings)
    await cluster.start("n1")
    await cluster.start("n2")
    expert, alice, sid = await call(cluster, expert_on="n2", client_on="n2")
    # The room (and the meter) are on n2, where erin accepted; move the room to n1 by accepting there.
    await alice.request("session.end", session_id=sid)
    expert = await Peer.join(cluster.nodes["n1"], "erin", "expert")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    cluster.live("n1", sid)
    await alice.expect("billing.cost", units=2)
    await cluster.stop("n1")  # its meter stops; nobody meters the session until someone adopts it
    await asyncio.sleep(1.5)
    await alice.request("session.end", session_id=sid)  # on n2: n1 is gone, n2 settles the meter
    summary = await alice.expect("billing.summary", session_id=sid)
    units, live = await ledger(cluster, sid)
    assert units == list(range(summary["units"])) and len(units) == math.ceil(live)
    stored = await cluster.nodes["n2"].app[METER].store.session(sid)
    assert stored is not None and stored.owner == "n1" and stored.fence >= 2  # n2 took it over
    # Billed only up to n1's last sign of life, not through the 1.5 s outage.
    assert live < stored.ended_at - stored.intervals[0][0] - 1.0


async def test_a_node_starting_mid_call_meters_nothing_twice(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    cluster = Cluster(aiohttp_client, settings)
    await cluster.start("n1")
    await cluster.start("n2")
    expert, alice, sid = await call(cluster, expert_on="n1", client_on="n2")
    cluster.live("n1", sid)
    await alice.expect("billing.cost", units=1)
    n3 = await cluster.start("n3")  # sync() over every active session: none is its to meter
    assert n3.app[METER].open_sessions() == []
    await alice.expect("billing.cost", units=3)
    await expert.request("session.end", session_id=sid)
    await alice.expect("billing.summary")
    units, live = await ledger(cluster, sid)
    assert units == list(range(len(units))) and len(units) == math.ceil(live)
    ids = [r.id for r in await n3.app[METER].outbox.after(0, 1000)]
    assert len(ids) == len(set(ids))
    await eventually(lambda: not cluster.nodes["n1"].app[METER].is_open(sid))


async def test_an_end_whose_envelope_was_lost_is_settled_from_the_record(aiohttp_client, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(session_billing, "WATCH_SECONDS", 0.2)
    cluster = Cluster(aiohttp_client, settings)
    await cluster.start("n1")
    n2 = await cluster.start("n2")
    backend = n2.app[SIGNALLING].backend
    send = backend.send_to_node

    async def lossy(node_id, envelope):  # type: ignore[no-untyped-def]
        if envelope.get("op") != "billing":
            await send(node_id, envelope)

    backend.send_to_node = lossy
    expert, alice, sid = await call(cluster, expert_on="n1", client_on="n2")
    cluster.live("n1", sid)
    await alice.expect("billing.cost", units=1)
    await alice.request("session.end", session_id=sid)
    summary = await alice.expect("billing.summary", timeout=3)
    assert summary["reason"] == "hangup"
    await asyncio.sleep(1.2)
    units, live = await ledger(cluster, sid)
    assert units == list(range(summary["units"])) and len(units) == math.ceil(live)
    del expert
