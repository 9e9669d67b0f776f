"""The two-party-call bench's client processes (bench/calls.py is the coordinator).

Each process runs a share of the calls on one uvloop event loop. A call is two participants, an
expert and a client, each a light ``Publisher`` (VP8 + Opus, never encoding) and a light
``Subscriber`` watching the other (parsing, never decoding) from bench/clients.py. Both ends of a
call live in the same process: a frame's send time, written by one participant's publisher into
its table at the frame's PictureID, is read by the other's subscriber on the same clock.

A call is set up the way each server's applications set one up:

- expertcall: both connect to ``/ws`` and say ``hello``; the expert goes online, the client sends
  ``help.request``, the expert accepts the ``ring``; then each publishes with a ``media.offer``
  (``chat: false``: no data channel, as Janus's calls have none) and answers the server's
  ``media.offer``s for its subscribe transport (the first, and the renegotiation that adds the
  other side's tracks). The session is billed per minute.
- Janus: each participant opens a Janus session (its own WebSocket) and attaches a VideoRoom
  handle; the expert creates the call's room; each joins it as a publisher with its offer, then
  attaches a second handle, subscribes to the other's feed and answers Janus's offer.
"""

from __future__ import annotations

import array
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from signalling.auth.tokens import Role, TokenIssuer

from .clients import PICTURE_IDS, Publisher, Subscriber
from .encoded import EncodedAudio, EncodedVideo
from .signalling import Socket, WorkerResult, connect
from .workers import Shared, _run, measure

JOIN_TIMEOUT = 30.0  # a call not up by then has failed
CONNECT_CONCURRENCY = 64
# What a per-minute expert charges in the bench: metering runs as for any paid call.
PRICE = {"mode": "per_minute", "amount": 100, "currency": "USD"}
JANUS_ROOM_BASE = 1000


@dataclass
class Participant:
    name: str
    publisher: Publisher
    subscriber: Subscriber  # watches the other participant
    channel: Any = None  # its signalling connection (a /ws Socket, a JanusSession): close() ends it

    async def stop(self) -> None:
        await self.publisher.stop()
        await self.subscriber.stop()
        if self.channel is not None:
            await self.channel.close()


@dataclass
class Call:
    index: int
    expert: Participant
    client: Participant
    started_at: float = 0.0  # set-up began (connect, signalling)
    media_at: float = 0.0  # both began publishing: first-frame times count from here
    up_at: float = 0.0  # both publish and receive
    session_id: str = ""  # expertcall's
    error: str = ""
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    def new(cls, index: int, video: EncodedVideo, audio: EncodedAudio) -> Call:
        tables = [array.array("d", bytes(8 * PICTURE_IDS)) for _ in range(2)]
        # The expert's subscriber reads the client's send times, and the other way round.
        expert = Participant(f"e{index}", Publisher("", "", video, audio, tables[0]),
                             Subscriber("", "", tables[1], audio=True, receiver_reports=True))
        client = Participant(f"c{index}", Publisher("", "", video, audio, tables[1]),
                             Subscriber("", "", tables[0], audio=True, receiver_reports=True))
        return cls(index, expert, client)

    @property
    def participants(self) -> tuple[Participant, Participant]:
        return self.expert, self.client


class CallServer(Protocol):
    async def connect(self, call: Call) -> None:
        """Set the call up until both participants publish and receive; set ``call.media_at``."""

    async def hang_up(self, call: Call) -> None:
        """End the call and close its connections (errors ignored)."""


async def _until(condition: Any, what: str, timeout: float = JOIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


def _receiving(subscriber: Subscriber) -> bool:
    """Negotiated the other side's video and audio, and connected."""
    return bool(subscriber.video_types and subscriber.audio_types) and subscriber.pc.connectionState == "connected"


class ExpertcallCalls:
    def __init__(self, http: aiohttp.ClientSession, url: str, secret: str) -> None:
        self.http, self.url = http, url
        self.issuer = TokenIssuer(secret)
        self.limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(self, call: Call) -> None:
        unused = WorkerResult()
        expert_token = self.issuer.mint(call.expert.name, Role.EXPERT, ttl=6 * 3600, name=call.expert.name)
        client_token = self.issuer.mint(call.client.name, Role.CLIENT, ttl=6 * 3600, name=call.client.name)
        expert = call.expert.channel = await connect(self.http, self.url, expert_token, self.limit, unused)
        ref = await expert.send("presence.set", status="online")
        await expert.expect(lambda m: m.get("type") == "presence" and m.get("ref") == ref, "presence")
        client = call.client.channel = await connect(self.http, self.url, client_token, self.limit, unused)
        await client.send("help.request", expert_id=call.expert.name)
        _, ring = await expert.expect(lambda m: m.get("type") == "ring", "ring")
        session_id = call.session_id = ring["session"]["id"]
        ref = await expert.send("help.accept", session_id=session_id)
        await asyncio.gather(
            expert.expect(lambda m: m.get("ref") == ref and m.get("type") == "session.state", "accept reply"),
            client.expect(lambda m: m.get("type") == "session.state" and m["session"]["state"] == "accepted",
                          "accepted"))
        call.media_at = time.time()
        await asyncio.gather(*(self._media(call, p, s, session_id)
                               for p, s in ((call.expert, expert), (call.client, client))))

    async def _media(self, call: Call, participant: Participant, sock: Socket, session_id: str) -> None:
        subscriber = participant.subscriber
        subscriber.started_at = call.media_at

        async def answer(offer: dict[str, Any]) -> None:
            if offer.get("transport") != "subscribe":
                return
            if offer.get("new_connection") and subscriber.pc.remoteDescription is not None:
                subscriber.error = "the server opened a second subscribe connection"
                return
            try:
                sdp = await subscriber.answer(offer["sdp"])
            except Exception:  # noqa: BLE001 - answer() noted it in subscriber.error
                return
            await sock.send("media.answer", session_id=session_id, transport="subscribe", sdp=sdp,
                            offer_id=offer["offer_id"])

        def on_offer(offer: dict[str, Any]) -> None:
            task = asyncio.ensure_future(answer(offer))
            call.tasks.add(task)
            task.add_done_callback(call.tasks.discard)

        sock.handlers["media.offer"] = on_offer

        async def exchange(offer: str) -> str:
            # Light clients never chat (nor do Janus's here, which negotiate no data channel): no
            # "chat" channel on the subscribe transport, as for a native client without chat.
            ref = await sock.send("media.offer", session_id=session_id, transport="publish", sdp=offer,
                                  chat=False)
            _, reply = await sock.expect(lambda m: m.get("ref") == ref and m.get("type") == "media.answer",
                                         "publish answer")
            return str(reply["sdp"])

        await participant.publisher.negotiate(exchange)
        await _until(lambda: _receiving(subscriber) or bool(subscriber.error), f"{participant.name} subscribed")
        if subscriber.error:
            raise RuntimeError(subscriber.error)

    async def hang_up(self, call: Call) -> None:
        if call.client.channel is not None and call.session_id:
            try:
                await call.client.channel.send("session.end", session_id=call.session_id)
            except Exception:  # noqa: BLE001 - the socket may be gone already
                pass
        for task in call.tasks:
            task.cancel()
        for participant in call.participants:
            await participant.stop()


class JanusCalls:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url

    async def connect(self, call: Call) -> None:
        from .janus import JanusSession

        room = JANUS_ROOM_BASE + call.index
        sessions = []
        for participant in call.participants:
            participant.channel = await JanusSession.open(self.http, self.url)
            sessions.append(participant.channel)
        handles = await asyncio.gather(*(s.attach() for s in sessions))
        # One room per call, as a VideoRoom application would open for it: VP8 and Opus only, two
        # publishers, and the same REMB cap expertcall puts on a publisher.
        await sessions[0].request(handles[0], {"request": "create", "room": room, "publishers": 2,
                                               "videocodec": "vp8", "audiocodec": "opus", "bitrate": 2_500_000})
        call.media_at = time.time()
        ids = [room * 10 + 1, room * 10 + 2]
        await asyncio.gather(*(self._publish(s, h, room, i, p.publisher)
                               for s, h, i, p in zip(sessions, handles, ids, call.participants)))
        await asyncio.gather(*(self._subscribe(s, room, feed, p.subscriber, call.media_at)
                               for s, feed, p in zip(sessions, reversed(ids), call.participants)))

    @staticmethod
    async def _publish(session: Any, handle: int, room: int, feed: int, publisher: Publisher) -> None:
        async def exchange(offer: str) -> str:
            _, jsep = await session.message(handle, {"request": "joinandconfigure", "ptype": "publisher",
                                                     "room": room, "id": feed},
                                            {"type": "offer", "sdp": offer})
            if jsep is None:
                raise RuntimeError("Janus answered the publish without an SDP")
            return str(jsep["sdp"])

        await publisher.negotiate(exchange)
        await session.end_of_candidates(handle)

    @staticmethod
    async def _subscribe(session: Any, room: int, feed: int, subscriber: Subscriber, media_at: float) -> None:
        from .janus import NO_SUCH_FEED, JanusError

        subscriber.started_at = media_at
        handle = await session.attach()
        deadline = time.monotonic() + JOIN_TIMEOUT
        while True:
            try:
                _, jsep = await session.message(handle, {"request": "join", "ptype": "subscriber", "room": room,
                                                         "streams": [{"feed": feed}]})
                break
            except JanusError as exc:
                # The other's PeerConnection is up on our side before Janus calls the feed active.
                if exc.code != NO_SUCH_FEED or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        if jsep is None:
            raise RuntimeError("Janus's subscriber join came without an SDP offer")
        answer = await subscriber.answer(jsep["sdp"])
        await session.message(handle, {"request": "start"}, {"type": "answer", "sdp": answer})
        await session.end_of_candidates(handle)
        await _until(lambda: _receiving(subscriber), "subscribed")

    async def hang_up(self, call: Call) -> None:
        for participant in call.participants:
            await participant.stop()


def run(worker: int, target: str, url: str, secret: str, plan: list[tuple[int, float]], shared: Shared,
        results: Any) -> None:
    """``plan``: (call index, wall time its set-up starts) per call of this worker."""
    _run(_run_calls(worker, target, url, secret, plan, shared, results))


async def _run_calls(worker: int, target: str, url: str, secret: str, plan: list[tuple[int, float]],
                     shared: Shared, results: Any) -> None:
    from . import encoded

    video, audio = encoded.video(fps=30), encoded.audio()
    calls = [Call.new(index, video, audio) for index, _ in plan]
    errors: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        server: CallServer = ExpertcallCalls(http, url, secret) if target == "expertcall" else JanusCalls(http, url)

        async def join(call: Call, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.time()))
            call.started_at = time.time()
            try:
                await asyncio.wait_for(server.connect(call), JOIN_TIMEOUT)
                call.up_at = time.time()
                shared.joined[worker] += 1
            except Exception as exc:  # noqa: BLE001 - a failed call is counted and reported, not fatal
                call.error = f"{type(exc).__name__}: {exc}"[:200]
                errors[call.error] += 1
                for participant in call.participants:
                    participant.subscriber.error = participant.subscriber.error or call.error
                shared.failed[worker] += 1

        joins = [asyncio.ensure_future(join(call, at)) for call, (_, at) in zip(calls, plan)]
        subscribers = [p.subscriber for call in calls for p in call.participants]
        publishers = [p.publisher for call in calls for p in call.participants]
        # Each subscriber watches the other participant of its call.
        sources = [p.publisher for call in calls for p in reversed(call.participants)]

        async def progress() -> None:
            while True:
                shared.packets[worker] = sum(s.video.received + s.audio_counters.received for s in subscribers)
                await asyncio.sleep(0.5)

        reporter = asyncio.ensure_future(progress())
        report = await measure(subscribers, shared, lambda s: not s.error and bool(s.connected_at), sources)
        reporter.cancel()
        results.put(("calls", {
            "subscribers": report,
            "publishers": {"count": len(publishers), "frames_sent": sum(p.frames_sent for p in publishers),
                           "frames_skipped": sum(p.frames_skipped for p in publishers),
                           "keyframe_requests": sum(p.keyframe_requests for p in publishers)},
            "call_setup_ms": [round((c.up_at - c.started_at) * 1000, 1) for c in calls if c.up_at],
            "errors": dict(errors),
        }))
        while not shared.stop.is_set():
            await asyncio.sleep(0.05)
        for task in joins:
            task.cancel()
        await asyncio.gather(*joins, return_exceptions=True)
        await asyncio.gather(*(server.hang_up(call) for call in calls), return_exceptions=True)
