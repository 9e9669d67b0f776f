"""``expertcall serve --sfu-workers 2``: a real paid call over /ws whose media runs through an SFU
worker process, and that worker SIGKILLed mid-call.

Each participant is a real aiortc client: it publishes video (a drawn frame counter) and audio,
and watches the other on the subscribe transport the server opens for it. The
killed worker's room opens again on the other worker: both participants hear ``session.state``
``paused`` / ``media_restarted``, start media again from new connections, and the call is live
again within 10 s. The ledger shows the gap billed as a pause and no unit charged twice.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.procfs import process_tree
from sfu.api import AnswerToServerOffer, Answer, EventHandler, Message, Offer, Ok, ServerOffer, Subscribe
from signalling.auth.tokens import TokenIssuer
from signalling.core.database import Database

from ..media_clients import EventHub, Publisher, Subscriber
from ..signalling.billing.test_session_billing_crash import SECRET, Server, free_port, ledger
from ..utils import server_errors

pytestmark = pytest.mark.integration

METRICS_TOKEN = "metrics-token-0123456789abcdef-0123456789"


class SocketPlane:
    """A participant's /ws socket, seen by the test clients of media_clients as a MediaPlane: an
    ``Offer`` is a ``media.offer``, an ``AnswerToServerOffer`` a ``media.answer``, the server's
    ``media.offer`` a ``ServerOffer`` event. ``Subscribe`` is the server's to send (it opens the
    subscribe transport when the participant publishes), so here it does nothing."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, user_id: str) -> None:
        self.ws = ws
        self.user_id = user_id
        self.session_id = ""
        self.messages: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: list[EventHandler] = []
        self._ids = iter(range(1, 1 << 30))
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            msg = json.loads(frame.data)
            assert server_errors(msg) == [], msg
            future = self._replies.pop(msg.get("ref"), None) if msg.get("ref") is not None else None
            if future is not None:
                future.set_result(msg)
            elif msg["type"] == "media.offer":
                event = ServerOffer(msg["session_id"], self.user_id, msg["transport"], msg["sdp"], msg["offer_id"])
                for handler in self._handlers:
                    result = handler(event)
                    if result is not None:
                        asyncio.ensure_future(result)
            else:
                self.messages.append(msg)
                self._arrived.set()

    async def call(self, type_: str, **fields: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self._replies[msg_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps({"v": 1, "type": type_, "id": msg_id, **fields}))
        return await asyncio.wait_for(self._replies[msg_id], 30)

    async def expect(self, fits: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for i, msg in enumerate(self.messages):
                    if fits(msg):
                        return self.messages.pop(i)
                self._arrived.clear()
                await self._arrived.wait()

    # --- MediaPlane, as media_clients uses it --------------------------------------------------

    def on_event(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    async def request(self, message: Message) -> Message:
        if isinstance(message, Subscribe):
            return Ok()
        if isinstance(message, Offer):
            reply = await self.call("media.offer", session_id=self.session_id, transport=message.transport, sdp=message.sdp)
            assert reply["type"] == "media.answer", reply
            return Answer(reply["sdp"])
        assert isinstance(message, AnswerToServerOffer), message
        reply = await self.call("media.answer", session_id=self.session_id, transport=message.transport,
                                sdp=message.sdp, offer_id=message.offer_id)
        assert reply["type"] == "ack", reply
        return Ok()

    async def close(self) -> None:
        self._pump.cancel()
        await self.ws.close()


def state_is(state: str, reason: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "session.state" and m["session"]["state"] == state and (
        reason is None or m["session"]["reason"] == reason)


class Side:
    """One participant's media: a publisher and a light subscriber (it counts the other's RTP per
    SSRC: aiortc's own receivers do not start on a transport renegotiated to add tracks, which
    is how the first to publish receives the other), started over on demand."""

    def __init__(self, plane: SocketPlane, hub: EventHub) -> None:
        self.plane = plane
        self.hub = hub
        self.publisher: Publisher | None = None
        self.subscriber: Subscriber | None = None

    async def start(self) -> None:
        await self.close()
        self.subscriber = Subscriber(self.plane, self.hub, self.plane.session_id, self.plane.user_id,  # type: ignore[arg-type]
                                     decode=False)
        await self.subscriber.start()
        self.publisher = Publisher(self.plane, self.plane.session_id, self.plane.user_id)  # type: ignore[arg-type]
        await self.publisher.start()

    async def close(self) -> None:
        for peer in (self.subscriber, self.publisher):
            if peer is not None:
                await peer.close()


async def receiving(subscriber: Subscriber, packets: int = 50) -> None:
    """Until the other's audio and video both reached ``subscriber`` (``packets`` of each)."""
    async with asyncio.timeout(10):
        while len(subscriber.packets) < 2 or min(subscriber.packets.values()) < packets:
            await asyncio.sleep(0.05)


async def metrics(http: aiohttp.ClientSession, server: Server) -> dict[str, float]:
    async with http.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^(expertcall_sfu_worker_\w+\{worker="\d+"\}|expertcall_media_tracks\{[^}]*\}) (\S+)$', text, re.M)}


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def worker_pid(server_pid: int, index: int) -> int:
    for pid in process_tree(server_pid)[1:]:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"sfu.worker_process" in argv and argv[argv.index(b"sfu.worker_process") + 1] == str(index).encode():
            return pid
    raise AssertionError(f"no worker {index} under {server_pid}")


async def test_a_worker_killed_mid_call_brings_the_call_back_paused_not_charged_twice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "var"
    server = Server(data_dir, free_port(), env={"EXPERTCALL_SFU_WORKERS": "2", "EXPERTCALL_METRICS_TOKEN": METRICS_TOKEN},
                    ready="/readyz")
    sides: list[Side] = []
    planes: list[SocketPlane] = []
    await server.start()
    assert server.proc is not None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/readyz") as resp:
                ready = await resp.json()
            assert ready["sfu_workers"] == [{"worker": 0, "up": True}, {"worker": 1, "up": True}]
            headers = {"Authorization": f"Bearer {TokenIssuer(SECRET).mint('erin', 'expert')}"}
            profile = {"display_name": "Erin", "skills": ["python"], "price": {"mode": "per_minute", "amount": 100, "currency": "USD"}}
            async with http.put(f"{server.url}/api/experts/erin", json=profile, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
            for user, role in (("erin", "expert"), ("alice", "client")):
                plane = SocketPlane(await http.ws_connect(f"{server.url}/ws"), user)
                planes.append(plane)
                welcome = await plane.call("hello", token=TokenIssuer(SECRET).mint(user, role))
                assert welcome["type"] == "welcome", welcome
            expert, alice = planes
            sid = (await alice.call("help.request", expert_id="erin"))["session"]["id"]
            await expert.expect(lambda m: m["type"] == "ring")
            await expert.call("help.accept", session_id=sid)
            for plane in planes:
                plane.session_id = sid
                sides.append(Side(plane, EventHub(plane)))  # type: ignore[arg-type]
            for side in sides:
                await side.start()
            await alice.expect(state_is("live"))
            await alice.expect(lambda m: m["type"] == "billing.cost" and m["units"] >= 2, timeout=10)
            for side in sides:
                assert side.subscriber is not None
                await receiving(side.subscriber)

            # The worker's media statistics reach /metrics (polled every few seconds).
            async with asyncio.timeout(20):
                while (await metrics(http, server)).get('expertcall_media_tracks{direction="inbound",kind="video"}') != 2:
                    await asyncio.sleep(0.5)
            # The room's worker.
            seen = await metrics(http, server)
            hosting = [i for i in (0, 1) if seen[f'expertcall_sfu_worker_rooms{{worker="{i}"}}'] == 1]
            assert len(hosting) == 1, seen
            victim = worker_pid(server.proc.pid, hosting[0])
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            for plane in planes:
                await plane.expect(state_is("paused", "media_restarted"), timeout=10)
            for side in sides:
                await side.start()  # new connections, as after a resume
            await alice.expect(state_is("live"), timeout=max(0.1, 10 - (time.monotonic() - killed_at)))
            assert time.monotonic() - killed_at < 10
            for side in sides:
                assert side.subscriber is not None
                await receiving(side.subscriber)
            await alice.expect(lambda m: m["type"] == "billing.cost", timeout=10)  # metering again

            # The worker came back (restarted, not merely replaced) and /readyz says so.
            for _ in range(600):
                seen = await metrics(http, server)
                if seen[f'expertcall_sfu_worker_up{{worker="{hosting[0]}"}}'] == 1:
                    break
                await asyncio.sleep(0.1)
            assert seen[f'expertcall_sfu_worker_restarts_total{{worker="{hosting[0]}"}}'] == 1, seen
            assert worker_pid(server.proc.pid, hosting[0]) != victim
            async with http.get(f"{server.url}/readyz") as resp:
                assert resp.status == 200 and (await resp.json())["sfu_workers"][hosting[0]]["up"]

            await alice.call("session.end", session_id=sid)
            summary = await alice.expect(lambda m: m["type"] == "billing.summary")
            earned = await expert.expect(lambda m: m["type"] == "billing.summary")
        workers = [worker_pid(server.proc.pid, i) for i in (0, 1)]
        server.stop(signal.SIGTERM)
        assert server.proc.returncode == 0, server.tail()
        # The server closed its workers before exiting: none left running, orphaned.
        assert not [pid for pid in workers if running(pid)]
    finally:
        for side in sides:
            await side.close()
        for plane in planes:
            await plane.close()
        if server.proc is not None and server.proc.poll() is None:
            server.stop(signal.SIGKILL)

    units, live, ids = ledger(data_dir / Database.FILENAME, sid)
    assert units == list(range(len(units))) and math.ceil(live) <= len(units) <= math.floor(live) + 1, (units, live)
    assert len(ids) == len(set(ids))
    # live, paused when the worker died, live again: the gap is an unbilled pause
    assert [i for i in ids if ":paused:" in i or ":resumed:" in i][:3] == [
        f"{sid}:resumed:0", f"{sid}:paused:0", f"{sid}:resumed:1"], ids
    with sqlite3.connect(data_dir / Database.FILENAME) as conn:
        intervals = conn.execute(
            'SELECT start, "end" FROM billing_intervals WHERE session_id = ? ORDER BY idx', (sid,)).fetchall()
    assert len(intervals) == 2 and intervals[0][1] < intervals[1][0], intervals
    assert (summary["units"], summary["charged"]["amount"]) == (len(units), 100 * len(units))
    assert earned["fee"]["amount"] + earned["payout"]["amount"] == earned["gross"]["amount"] == 100 * len(units)
