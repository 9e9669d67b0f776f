"""Money across nodes, for real: three ``expertcall serve`` processes on one redis-server and one
PostgreSQL database, media from aiortc through the real SFU, 1 s units.

Each scenario is a call an operator could see go wrong: the client hangs up on a node without the
room; a third node restarts mid-call; the budget is set on one node and the call accepted on
another; the price is raised after the request; a participant tries the WHIP/WHEP side door; the
node holding the room is SIGKILLed and the call resumes through another. Afterwards, in every
case: the ledger in PostgreSQL holds exactly the units the timeline started, fee + payout =
gross, the reference consumer counts each unit once, and ``expertcall billing reconcile`` finds
nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import asyncpg
import pytest

from sfu.api import Answer, Message, Offer
from signalling.auth.tokens import TokenIssuer

from ...backends import delete_prefix, redis_available
from ...externals import require
from ...media_clients import Publisher
from ...postgres_helpers import ADMIN_URL, create_database, drop_database
from ...utils import Peer
from .test_session_billing_crash import SECRET, Server, SocketPlane, free_port, join

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
REDIS_URL = "redis://127.0.0.1:6379/0"
PRICE = {"mode": "per_minute", "amount": 100, "currency": "USD"}


class PatientSocketPlane(SocketPlane):
    """A publish negotiated over /ws, waiting up to 30 s for the answer: after a node dies holding
    an expert's lock, others wait for the lock to expire (10 s) before the room can move."""

    async def request(self, message: Message) -> Message:
        assert isinstance(message, Offer)
        msg_id = await self.peer.send("media.offer", session_id=self.session_id, transport=message.transport, sdp=message.sdp)
        reply = await self.peer.expect("media.answer", timeout=30, ref=msg_id)
        return Answer(reply["sdp"])


class Cluster:
    def __init__(self, tmp: Path, database_url: str, prefix: str) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.stream = f"{prefix}:metering"
        self.env = {
            "EXPERTCALL_REDIS_URL": REDIS_URL, "EXPERTCALL_REDIS_PREFIX": prefix,
            "EXPERTCALL_DATABASE_URL": database_url, "EXPERTCALL_METERING_STREAM": self.stream,
        }
        # Fixed node ids: a restarted node comes back under its name; ready once its backend answers.
        self.nodes = {
            name: Server(tmp / name, free_port(), name=name, env={**self.env, "EXPERTCALL_NODE_ID": name}, ready="/readyz")
            for name in ("n1", "n2", "n3")
        }
        self.publishers: list[Publisher] = []
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await asyncio.gather(*(node.start() for node in self.nodes.values()))
        self.http = aiohttp.ClientSession()
        await self.set_price(PRICE)

    async def stop(self) -> None:
        for publisher in self.publishers:
            await publisher.close()
        if self.http is not None:
            await self.http.close()
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.stop(signal.SIGTERM)

    async def set_price(self, price: dict[str, Any], via: str = "n1") -> None:
        """Saved through one node, the profile (and its price) is what every node shows."""
        assert self.http is not None
        headers = {"Authorization": f"Bearer {TokenIssuer(SECRET).mint('erin', 'expert')}"}
        body = {"display_name": "Erin", "skills": ["python"], "price": price}
        async with self.http.put(f"{self.nodes[via].url}/api/experts/erin", json=body, headers=headers) as resp:
            assert resp.status in (200, 201), await resp.text()
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                async with self.http.get(f"{node.url}/api/experts/erin", headers=headers) as resp:
                    assert resp.status == 200 and (await resp.json())["price"] == price, node.name

    async def join(self, node: str, user: str, role: str) -> Peer:
        assert self.http is not None
        return await join(self.http, self.nodes[node], user, role)

    async def publish(self, peer: Peer, sid: str, user: str) -> None:
        publisher = Publisher(PatientSocketPlane(peer, sid), sid, user, video=False)  # type: ignore[arg-type]
        self.publishers.append(publisher)
        await publisher.start()

    async def call(self, expert_on: str, client_on: str, client: str, budget: int | None = None,
                   before_accept: Any = None) -> tuple[Peer, Peer, str]:
        expert = await self.join(expert_on, "erin", "expert")
        alice = await self.join(client_on, client, "client")
        sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
        if budget is not None:
            reply = await alice.request("billing.budget", session_id=sid, budget=budget)
            assert reply["budget_cap"]["amount"] == budget, reply
        if before_accept is not None:
            await before_accept()
        await expert.expect("ring", timeout=10)
        await expert.request("help.accept", session_id=sid)
        await self.publish(expert, sid, "erin")
        await self.publish(alice, sid, client)
        await alice.expect("session.state", timeout=30, state="live")
        return expert, alice, sid


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    require(redis_available(), "redis-server on 127.0.0.1:6379")
    url = await create_database()
    require(url is not None, f"PostgreSQL at {ADMIN_URL}")
    assert url is not None
    prefix = f"test-{uuid.uuid4().hex}"
    cluster = Cluster(tmp_path, url, prefix)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()
        delete_prefix(prefix)
        await drop_database(url)


async def ledger(cluster: Cluster, sid: str) -> dict[str, Any]:
    conn = await asyncpg.connect(cluster.database_url)
    try:
        units = [r["unit_index"] for r in await conn.fetch(
            "SELECT unit_index FROM ledger_postings WHERE session_id = $1 AND kind = 'charge' ORDER BY unit_index", sid)]
        sums = await conn.fetchrow(
            "SELECT coalesce(sum(gross), 0) AS gross, coalesce(sum(fee), 0) AS fee, coalesce(sum(payout), 0) AS payout"
            " FROM ledger_postings WHERE session_id = $1 AND kind = 'charge'", sid)
        intervals = [(r["start"], r["end"]) for r in await conn.fetch(
            'SELECT start, "end" FROM billing_intervals WHERE session_id = $1 ORDER BY idx', sid)]
        session = await conn.fetchrow("SELECT * FROM billing_sessions WHERE session_id = $1", sid)
    finally:
        await conn.close()
    return {"units": units, "gross": sums["gross"], "fee": sums["fee"], "payout": sums["payout"],
            "intervals": intervals, "session": dict(session) if session else None}


def assert_settled(book: dict[str, Any], amount: int = 100, cap_units: int | None = None) -> float:
    """Exactly the units the timeline started (up to a budget's), each once, and fee + payout =
    gross; the live seconds."""
    assert book["session"] is not None and book["session"]["ended_at"] is not None, book
    assert all(end is not None for _, end in book["intervals"]), book
    live = sum(end - start for start, end in book["intervals"])
    started = math.ceil(live) if cap_units is None else min(math.ceil(live), cap_units)
    assert book["units"] == list(range(started)), (book["units"], live)
    assert book["gross"] == amount * len(book["units"]) and book["fee"] + book["payout"] == book["gross"]
    return live


async def consume_and_reconcile(cluster: Cluster) -> dict[str, Any]:
    """The reference consumer drains the stream, then reconcile compares it with the ledger."""
    db = cluster.tmp / "consumer.sqlite3"
    common = {**os.environ, **cluster.env}
    consume = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signalling.app.cli", "billing", "consume", "--group", "billing", "--db", str(db),
        "--name", "c1", "--idle-exit", "2", "--data-dir", str(cluster.tmp / "consumer"),
        cwd=ROOT, env=common, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(consume.communicate(), 120)
    assert consume.returncode == 0, err.decode()[-2000:]
    reconcile = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signalling.app.cli", "billing", "reconcile", "--group", "billing", "--db", str(db),
        "--data-dir", str(cluster.tmp / "consumer"),
        cwd=ROOT, env=common, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(reconcile.communicate(), 120)
    report = json.loads(out.decode())
    assert reconcile.returncode == 0 and report["ok"], (report, err.decode()[-2000:])
    return report


async def stop_relaying(cluster: Cluster) -> None:
    """Stop the nodes still running (their relays flush the outbox into the stream)."""
    for node in cluster.nodes.values():
        if node.proc is not None and node.proc.poll() is None:
            node.stop(signal.SIGTERM)


async def test_calls_across_three_nodes_are_charged_exactly(cluster: Cluster) -> None:
    units_charged = 0

    # 1. The client hangs up on n2; the room, and the meter, are on n1.
    expert, alice, sid = await cluster.call(expert_on="n1", client_on="n2", client="alice")
    await alice.expect("billing.cost", timeout=10, units=2)
    ended = await alice.request("session.end", session_id=sid)
    for peer in (alice, expert):
        summary = await peer.expect("billing.summary", timeout=10)
    await asyncio.sleep(1.5)  # a meter still running on n1 would charge more by now
    book = await ledger(cluster, sid)
    assert_settled(book)
    assert summary["units"] == len(book["units"]) and book["session"]["ended_at"] - ended["session"]["updated_at"] < 0.5
    units_charged += len(book["units"])

    # 2. A third node restarts mid-call: it meters nothing of n1's, nothing is charged twice.
    expert, bob, sid = await cluster.call(expert_on="n1", client_on="n2", client="bob")
    await bob.expect("billing.cost", timeout=10, units=1)
    cluster.nodes["n3"].stop(signal.SIGTERM)
    await cluster.nodes["n3"].start()
    assert cluster.http is not None
    admin = {"Authorization": f"Bearer {TokenIssuer(SECRET).mint('ops', 'admin')}"}
    async with cluster.http.get(f"{cluster.nodes['n3'].url}/metrics", headers=admin) as resp:
        assert "expertcall_billing_open_sessions 0.0" in await resp.text()
    await bob.expect("billing.cost", timeout=10, units=3)
    await expert.request("session.end", session_id=sid)
    await bob.expect("billing.summary", timeout=10)
    await asyncio.sleep(1.5)
    book = await ledger(cluster, sid)
    assert_settled(book)
    units_charged += len(book["units"])

    # 3. The budget is set on n2 while waiting; the expert accepts on n1: the call ends at the cap.
    expert, carol, sid = await cluster.call(expert_on="n1", client_on="n2", client="carol", budget=300)
    ended = await carol.expect("session.state", timeout=15, state="ended")
    assert ended["session"]["reason"] == "budget_reached"
    await carol.expect("billing.summary", timeout=10)  # after the meter settled it
    book = await ledger(cluster, sid)
    live = assert_settled(book, cap_units=3)
    assert book["units"] == [0, 1, 2] and 3.0 <= live < 4.0  # ended within a second of the cap
    units_charged += 3

    # 4. The price is raised after the request: the call is charged the price the client saw.
    async def raise_price() -> None:
        await cluster.set_price({**PRICE, "amount": 1_000_000_000}, via="n3")

    expert, dave, sid = await cluster.call(expert_on="n2", client_on="n3", client="dave", before_accept=raise_price)
    await dave.expect("billing.cost", timeout=10, units=2)
    await dave.request("session.end", session_id=sid)
    await dave.expect("billing.summary", timeout=10)
    book = await ledger(cluster, sid)
    assert_settled(book, amount=100)
    units_charged += len(book["units"])
    await cluster.set_price(PRICE)

    # 5. The side door: WHIP/WHEP into a paid session are refused to its participants.
    expert, erik, sid = await cluster.call(expert_on="n2", client_on="n2", client="erik")
    for endpoint, user, role in (("whip", "erik", "client"), ("whep", "erik", "client"), ("whip", "erin", "expert")):
        token = TokenIssuer(SECRET).mint(user, role)
        async with cluster.http.post(f"{cluster.nodes['n2'].url}/{endpoint}/{sid}", data="v=0\r\n", headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}) as resp:
            assert resp.status == 403, (endpoint, user, await resp.text())
    await erik.expect("billing.cost", timeout=10, units=1)
    await erik.request("session.end", session_id=sid)
    await erik.expect("billing.summary", timeout=10)
    book = await ledger(cluster, sid)
    assert_settled(book)
    units_charged += len(book["units"])

    await stop_relaying(cluster)
    report = await consume_and_reconcile(cluster)
    assert report["ledger_units"] == report["consumer_units"] == units_charged


async def test_the_room_node_is_killed_and_the_call_resumes_elsewhere_unbilled_in_between(cluster: Cluster) -> None:
    expert, alice, sid = await cluster.call(expert_on="n1", client_on="n2", client="alice")
    await alice.expect("billing.cost", timeout=10, units=2)
    for publisher in cluster.publishers:
        await publisher.close()
    cluster.publishers.clear()
    cluster.nodes["n1"].stop(signal.SIGKILL)
    killed = asyncio.get_running_loop().time()
    await asyncio.sleep(1.5)  # the call is down across a unit boundary: not billed
    # Erin comes back through n3; both publish again: n2 (or n3) adopts the room and its meter.
    expert = await cluster.join("n3", "erin", "expert")
    assert expert.welcome["session"]["id"] == sid
    await cluster.publish(expert, sid, "erin")
    await cluster.publish(alice, sid, "alice")
    await alice.expect("session.state", timeout=30, state="live")
    resumed = asyncio.get_running_loop().time()
    cost = await alice.expect("billing.cost", timeout=10)
    await alice.expect("billing.cost", timeout=10, units=cost["units"] + 1)
    await alice.request("session.end", session_id=sid)
    summary = await alice.expect("billing.summary", timeout=10)
    book = await ledger(cluster, sid)
    live = assert_settled(book)
    assert summary["units"] == len(book["units"])
    # The gap between the two live intervals covers the time no node hosted the call.
    gaps = [b[0] - a[1] for a, b in zip(book["intervals"], book["intervals"][1:])]
    assert max(gaps) >= min(1.5, resumed - killed - 1.0), (book["intervals"], resumed - killed)
    assert book["session"]["fence"] >= 2  # another node took the lease over from n1
    assert live < book["intervals"][-1][1] - book["intervals"][0][0] - 1.0
    await stop_relaying(cluster)
    report = await consume_and_reconcile(cluster)
    assert report["ledger_units"] == report["consumer_units"] == len(book["units"])
