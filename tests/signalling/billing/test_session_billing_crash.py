"""``expertcall serve`` SIGKILLed mid-call and started again on the same data dir: no unit lost,
none charged twice.

A real server process, real sockets and real media: an expert and a client pair over /ws and each
publishes an audio track from aiortc over loopback, so the SFU's media state makes the session
live. Once units are being charged the server is killed; the restarted one recovers the session
(paused: its media plane started over) and the Meter charges the units due across the outage.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from sfu.api import Answer, Message, Offer
from signalling.auth.tokens import TokenIssuer
from signalling.core.database import Database

from ...media_clients import Publisher
from ...utils import Peer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SECRET = "test-secret-0123456789abcdef-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``expertcall serve`` in a process of its own (1 s units, loopback media); ``env`` adds
    settings, and it counts as started once ``ready`` answers 200."""

    def __init__(
        self, data_dir: Path, port: int, *, name: str = "server", env: dict[str, str] | None = None,
        ready: str = "/healthz",
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = data_dir.parent / f"{name}.log"
        self.env = env or {}
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        env = {**os.environ, **self.env, "EXPERTCALL_SECRET": SECRET}
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "signalling.app.cli", "serve", "--port", str(self.port), "--data-dir",
                 str(self.data_dir), "--billing-unit-seconds", "1", "--media-loopback", "--no-demo"],
                cwd=ROOT, env=env, stdout=log, stderr=log,
            )
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                assert self.proc.poll() is None, self.tail()
                try:
                    async with http.get(f"{self.url}{self.ready}") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} did not start: {self.tail()}")

    def stop(self, sig: int, within: float = 30) -> None:
        """Signal the server and wait for it; one that does not stop ``within`` seconds is killed
        (no orphan left running) and fails the test: a node must finish its shutdown."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within {within:g} s of signal {sig}: {self.tail()}") from None

    def tail(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")[-3000:]


class SocketPlane:
    """Lets a ``Publisher`` negotiate through /ws (``media.offer`` -> ``media.answer``)."""

    def __init__(self, peer: Peer, session_id: str) -> None:
        self.peer = peer
        self.session_id = session_id

    async def request(self, message: Message) -> Message:
        assert isinstance(message, Offer)
        reply = await self.peer.request(
            "media.offer", session_id=self.session_id, transport=message.transport, sdp=message.sdp
        )
        assert reply["type"] == "media.answer", reply
        return Answer(reply["sdp"])


async def join(http: aiohttp.ClientSession, server: Server, user: str, role: str) -> Peer:
    peer = Peer(await http.ws_connect(f"{server.url}/ws"))
    peer.welcome = await peer.request("hello", token=TokenIssuer(SECRET).mint(user, role))
    assert peer.welcome["type"] == "welcome", peer.welcome
    return peer


def ledger(db_path: Path, sid: str) -> tuple[list[int], float, list[str]]:
    """Unit indexes charged, live seconds of the timeline, and every metering event id."""
    with sqlite3.connect(db_path) as conn:
        units = [r[0] for r in conn.execute(
            "SELECT unit_index FROM ledger_postings WHERE session_id = ? AND kind = 'charge' ORDER BY unit_index", (sid,))]
        live = conn.execute(
            "SELECT coalesce(sum(end - start), 0) FROM billing_intervals WHERE session_id = ?", (sid,)).fetchone()[0]
        ids = [r[0] for r in conn.execute("SELECT id FROM metering_outbox ORDER BY seq")]
    return units, live, ids


async def test_sigkill_mid_call_then_restart_charges_every_unit_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "var"
    server = Server(data_dir, free_port())
    publishers: list[Publisher] = []
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {TokenIssuer(SECRET).mint('erin', 'expert')}"}
            profile = {"display_name": "Erin", "skills": ["python"], "price": {"mode": "per_minute", "amount": 100, "currency": "USD"}}
            async with http.put(f"{server.url}/api/experts/erin", json=profile, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
            expert = await join(http, server, "erin", "expert")
            alice = await join(http, server, "alice", "client")
            sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
            await expert.expect("ring")
            await expert.request("help.accept", session_id=sid)

            for peer, user in ((expert, "erin"), (alice, "alice")):
                publisher = Publisher(SocketPlane(peer, sid), sid, user, video=False)  # type: ignore[arg-type]
                publishers.append(publisher)
                await publisher.start()
            await alice.expect("session.state", timeout=30, state="live")
            await alice.expect("billing.cost", timeout=10, units=2)
            server.stop(signal.SIGKILL)
            at_kill, _, _ = ledger(data_dir / Database.FILENAME, sid)
            for publisher in publishers:
                await publisher.close()
            await asyncio.sleep(1.5)  # down across at least one unit boundary

            await server.start()
            expert = await join(http, server, "erin", "expert")
            alice = await join(http, server, "alice", "client")
            assert alice.welcome["session"]["id"] == sid
            assert alice.welcome["session"]["state"] == "paused", alice.welcome["session"]
            await alice.request("session.end", session_id=sid)
            summary = await alice.expect("billing.summary")
            earned = await expert.expect("billing.summary")
        server.stop(signal.SIGTERM)
    finally:
        for publisher in publishers:
            await publisher.close()
        if server.proc is not None and server.proc.poll() is None:
            server.stop(signal.SIGKILL)

    units, live, ids = ledger(data_dir / Database.FILENAME, sid)
    assert len(at_kill) >= 2 and units[: len(at_kill)] == at_kill
    # Live from the first flow until the dead process's last heartbeat, where the restarted Meter
    # paused it: every 1 s unit started in that time is charged once (a unit starting exactly at
    # the pause counts as started), and the outage itself is not billed.
    assert units == list(range(len(units))) and math.ceil(live) <= len(units) <= math.floor(live) + 1, (units, live)
    assert len(at_kill) <= len(units) <= len(at_kill) + 1
    assert len(ids) == len(set(ids))
    assert [i for i in ids if ":unit:" in i] == [f"{sid}:unit:{n}" for n in range(len(units))]
    assert (summary["units"], summary["charged"]["amount"]) == (len(units), 100 * len(units))
    assert earned["fee"]["amount"] + earned["payout"]["amount"] == earned["gross"]["amount"] == 100 * len(units)
