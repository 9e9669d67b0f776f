"""A router: one room (one session) — its participants, their transports and tracks.

Closing the router closes every transport, closing a transport closes its producers and
consumers, closing a producer closes its consumers (mediasoup's cascade). A timer, one per event
loop for all its rooms, does the per-room bookkeeping that must not sit on the packet path: RTCP
reports and REMB, bitrates, media state (debounced) and the active speaker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sfu import rtcp
from sfu.api import (
    ActiveSpeaker,
    MediaError,
    MediaQuality,
    MediaState,
    Message,
    RoomClosed,
    ServerOffer,
    TransportClosed,
    TransportKind,
)
from sfu.consumer import Consumer
from sfu.forwarder import current_ms, ms_of, ntp_of
from sfu.network import NetworkOptions
from sfu.udp_mux import UdpMux
from sfu.options import MediaOptions
from sfu.producer import Codec, Producer
from sfu.recorder import Recorder
from sfu.transport import Transport

logger = logging.getLogger(__name__)

TICK = 0.25  # seconds between bookkeeping passes
RTCP_EVERY = 4  # ticks between RTCP reports (1 s)
SPEAKER_THRESHOLD = 70  # -dBov: quieter than this is not speaking


@dataclass
class Participant:
    id: str
    publish: Transport | None = None
    subscribe: Transport | None = None
    flowing: bool = False

    def transports(self) -> list[Transport]:
        return [t for t in (self.publish, self.subscribe) if t is not None]


class Router:
    def __init__(self, room_id: str, options: MediaOptions, emit: Callable[[Message], None],
                 app_data: dict[str, Any] | None = None, mux: UdpMux | None = None) -> None:
        self.id = room_id
        self.options = options
        self.network: NetworkOptions = options.network(mux)
        self.app_data = app_data or {}
        self.closed = False
        self.participants: dict[str, Participant] = {}
        self.producers: dict[str, Producer[Consumer]] = {}
        self._emit = emit
        self._speaker: str | None = None
        self._levels: dict[str, float] = {}
        self._offer_tasks: dict[Transport, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # connected transports whose DTLS state release_dtls may still free (in connect order)
        self._releasing: dict[Transport, None] = {}
        self.recorder: Recorder | None = None  # while the room is recorded
        self._ticks = 0
        self._ticker = _ticker(asyncio.get_running_loop())
        self._ticker.add(self)

    @staticmethod
    def now_ms() -> int:
        return current_ms()  # the clock packet arrivals are stamped with

    # --- participants and transports ---------------------------------------------------------

    def participant(self, participant_id: str) -> Participant:
        if not isinstance(participant_id, str) or not participant_id:
            raise MediaError("bad_participant", "participant_id must be a non-empty string")
        if participant_id not in self.participants:
            self.participants[participant_id] = Participant(participant_id)
        return self.participants[participant_id]

    def transport(self, participant_id: str, kind: TransportKind) -> Transport:
        if kind not in ("publish", "subscribe"):
            raise MediaError("bad_transport", "transport must be 'publish' or 'subscribe'")
        participant = self.participant(participant_id)
        existing = getattr(participant, kind)
        if existing is None:
            existing = Transport(self, participant_id, kind)
            setattr(participant, kind, existing)
        return existing

    def existing_transport(self, participant_id: str, kind: TransportKind) -> Transport:
        participant = self.participants.get(participant_id) if isinstance(participant_id, str) \
            else None
        transport = getattr(participant, kind, None) if participant else None
        if transport is None:
            raise MediaError("unknown_transport", f"{participant_id} has no {kind} transport")
        return transport

    async def subscribe(self, participant_id: str, chat: bool = True) -> None:
        """(Re)create the participant's subscribe transport, offering every track in the room,
        and the "chat" data channel when ``chat``. A resume replaces the old transport: aiortc
        cannot restart ICE in place."""
        participant = self.participant(participant_id)
        if participant.subscribe is not None:
            await self._close_transport(participant.subscribe, "replaced", announce=False)
        transport = self.transport(participant_id, "subscribe")
        transport.offers_chat = chat
        for producer in self.producers_for(participant_id):
            transport.add_consumer(producer)
        await self._offer(transport)

    def producers_for(self, participant_id: str) -> list[Producer[Consumer]]:
        """The tracks a participant may receive: everyone's but its own."""
        return [p for p in self.producers.values() if p.participant_id != participant_id]

    async def leave(self, participant_id: str, kind: TransportKind | None) -> None:
        if kind not in (None, "publish", "subscribe"):
            raise MediaError("bad_transport", "transport must be 'publish', 'subscribe' or null")
        participant = self.participants.get(participant_id) if isinstance(participant_id, str) \
            else None
        if participant is None:
            return
        for transport in participant.transports():
            if kind is None or transport.kind == kind:
                await self._close_transport(transport, "left")
        if not participant.transports():
            self.participants.pop(participant_id, None)
            if participant.flowing:
                self._emit(MediaState(self.id, participant_id, False, _now(), "left"))

    async def hand_over(self, old_id: str, new_id: str) -> None:
        """``new_id`` publishes in place of ``old_id`` (a WHIP encoder that reconnected without
        DELETE, whose old connection may look alive for a while yet): ``old_id`` leaves, and
        each WHEP m-line that showed one of its tracks gets ``new_id``'s next track of the same
        kind, continuing its sequence numbers, from a keyframe. WHEP cannot renegotiate, so
        without this its viewers would stay on the dead track; SFU-offered subscribers get the
        new tracks by renegotiation, as for any publisher."""
        if old_id == new_id or old_id not in self.participants:
            return
        successors: dict[str, list[Producer[Consumer]]] = {}
        for producer in self.producers.values():
            if producer.participant_id == new_id:
                successors.setdefault(producer.kind, []).append(producer)
        moves: list[tuple[Transport, Producer[Consumer]]] = []
        for producer in [p for p in self.producers.values() if p.participant_id == old_id]:
            fitting = successors.get(producer.kind)
            if not fitting:
                continue
            successor = fitting.pop(0)
            for consumer in producer.consumers:
                viewer = self.participants.get(consumer.participant_id)
                if viewer is not None and viewer.subscribe is not None \
                        and viewer.subscribe.client_offers:
                    moves.append((viewer.subscribe, successor))
        await self.leave(old_id, None)  # their m-lines now wait for a track
        for transport, successor in moves:
            if not transport.consumes(successor):
                transport.add_consumer(successor)

    async def _close_transport(self, transport: Transport, reason: str,
                               announce: bool = True) -> None:
        self._releasing.pop(transport, None)
        participant = self.participants.get(transport.participant_id)
        if participant is not None and getattr(participant, transport.kind) is transport:
            setattr(participant, transport.kind, None)
        task = self._offer_tasks.pop(transport, None)
        if task is not None:
            task.cancel()
        await transport.close(reason)
        logger.info("room %s: %s %s transport closed (%s)", self.id, transport.participant_id,
                    transport.kind, reason)
        if announce:
            self._emit(TransportClosed(self.id, transport.participant_id, transport.kind, reason))

    # --- producers ---------------------------------------------------------------------------

    def create_producer(self, participant_id: str, mid: str, kind: str, codec: Codec) -> Producer[Consumer]:
        producer: Producer[Consumer] = Producer(
            f"{participant_id}:{mid}", participant_id, kind, codec,
            max_bitrate=self.options.max_publish_bitrate if kind == "video"
            else self.options.max_audio_bitrate,
            keyframe_interval=self.options.keyframe_interval,
            congestion=self.options.congestion,
        )
        self.producers[producer.id] = producer
        producer.on_close.append(self._producer_closed)
        logger.info("room %s: %s publishes %s %s", self.id, participant_id, kind, codec.mime_type)
        for participant in self.participants.values():
            sub = participant.subscribe
            if (participant.id != participant_id and sub is not None and not sub.closed
                    and sub.add_consumer(producer) is not None and not sub.client_offers):
                self.schedule_offer(sub)
        if self.recorder is not None:
            self.recorder.add_producers([producer])
        return producer


    def _producer_closed(self, producer: Producer[Consumer]) -> None:
        self.producers.pop(producer.id, None)
        self._levels.pop(producer.participant_id, None)

    def schedule_offer(self, transport: Transport) -> None:
        if self.closed or transport in self._offer_tasks:
            return
        task = asyncio.get_running_loop().create_task(self._offer(transport))
        self._offer_tasks[transport] = task
        task.add_done_callback(lambda _: self._offer_tasks.pop(transport, None))

    async def _offer(self, transport: Transport) -> None:
        # Let the other changes of this moment (a publisher adds audio and video) join the offer.
        await asyncio.sleep(0)
        offer = await transport.create_offer()
        if offer is not None:
            sdp, offer_id = offer
            self._emit(ServerOffer(self.id, transport.participant_id, "subscribe", sdp, offer_id))

    async def answer(self, transport: Transport, sdp: str, offer_id: int) -> None:
        if await transport.handle_answer(sdp, offer_id):
            self.schedule_offer(transport)

    # --- chat, state, speaker ----------------------------------------------------------------

    def relay_chat(self, sender: str, message: str) -> None:
        for participant in self.participants.values():
            if participant.id == sender:
                continue
            for transport in (participant.subscribe, participant.publish):
                if transport is not None and transport.send_chat(sender, message):
                    break

    def connection_closed(self, transport: Transport) -> None:
        """A transport's connection closed for good: the transport leaves the room."""
        if self.closed or transport.closed:
            return
        task = asyncio.get_running_loop().create_task(self._drop(transport))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _drop(self, transport: Transport) -> None:
        if transport.closed:
            return
        await self._close_transport(transport, "closed")
        participant = self.participants.get(transport.participant_id)
        if participant is not None and not participant.transports():
            self.participants.pop(participant.id, None)
            if participant.flowing:
                self._emit(MediaState(self.id, participant.id, False, _now(), "disconnected"))

    def transport_state_changed(self, transport: Transport) -> None:
        if transport.connected:
            self._releasing[transport] = None
        participant = self.participants.get(transport.participant_id)
        if participant is not None:
            self._update_media_state(participant, self.now_ms())

    def _update_media_state(self, participant: Participant, now_ms: int) -> None:
        """Flowing: some transport connected, with a packet within the debounce window. Every
        tick for every participant, so nothing is built unless the state changes."""
        window = self.options.media_state_debounce * 1000
        publish, subscribe = participant.publish, participant.subscribe
        flowing = (
            (publish is not None and publish.connected
             and now_ms - publish.last_packet_ms < window)
            or (subscribe is not None and subscribe.connected
                and now_ms - subscribe.last_packet_ms < window)
        )
        if flowing == participant.flowing:
            return
        participant.flowing = flowing
        transports = participant.transports()
        if flowing:
            reason = "media"
        elif any(t.state == "failed" for t in transports):
            reason = "ice_failed"
        elif not any(t.connected for t in transports):
            reason = "disconnected"
        else:
            reason = "no_media"
        self._emit(MediaState(self.id, participant.id, flowing, _now(), reason))

    def _update_speaker(self) -> None:
        for producer in self.producers.values():
            if producer.kind != "audio":
                continue
            if producer.level_count:
                level = producer.level_sum / producer.level_count
                producer.level_sum = producer.level_count = 0
            else:
                level = 127.0
            previous = self._levels.get(producer.participant_id, 127.0)
            self._levels[producer.participant_id] = previous * 0.5 + level * 0.5
        if not self._levels:
            return
        loudest = min(self._levels, key=self._levels.__getitem__)
        level = self._levels[loudest]
        if level < SPEAKER_THRESHOLD and loudest != self._speaker:
            self._speaker = loudest
            self._emit(ActiveSpeaker(self.id, loudest, int(level)))

    def _tick(self) -> None:
        self._ticks += 1
        try:
            now_ms = self.now_ms()
            for participant in list(self.participants.values()):
                self._update_media_state(participant, now_ms)
            for transport in list(self._releasing):
                if transport.release_dtls():
                    del self._releasing[transport]
            self._update_speaker()
            self._report(self._ticks % RTCP_EVERY)
        except Exception:  # bookkeeping must never die with the room still open
            logger.exception("room %s: bookkeeping failed", self.id)

    def _report(self, slot: int) -> None:
        """RTCP and bitrates, once every RTCP_EVERY ticks for each stream, but for one slice of
        the subscribers per tick (by participant): sender reports to a few hundred subscribers
        take milliseconds, and a packet arriving behind one burst of them would wait all of it.
        Each connection's reports of the tick leave in one compound packet (rtcp.join): a
        subscriber's streams share its slice, a publisher's get theirs at once. One clock
        reading serves the whole tick's reports."""
        interval = TICK * RTCP_EVERY
        now = time.time()
        ntp = ntp_of(now)
        now_ms = ms_of(now)
        compounds: rtcp.Compounds = {}
        for producer in self.producers.values():
            if slot == 0:
                producer.send_feedback(now, compounds)
                nbytes = producer.bytes
                before = producer.bytes_at_report
                producer.bitrate = int((nbytes - before) * 8 / interval) if before >= 0 else 0
                producer.bytes_at_report = nbytes
                if producer.kind == "video":
                    self._gate_video(producer, time.monotonic())
            for consumer in producer.consumers:
                if hash(consumer.participant_id) % RTCP_EVERY == slot:
                    consumer.send_sender_report(ntp, now_ms, compounds)
                    nbytes = consumer.bytes
                    before = consumer.bytes_at_report
                    consumer.bitrate = int((nbytes - before) * 8 / interval) if before >= 0 else 0
                    consumer.bytes_at_report = nbytes
        rtcp.send_all(compounds)

    def _gate_video(self, producer: Producer[Consumer], now: float) -> None:
        """Pause or resume each subscriber's video of ``producer`` for congestion."""
        for consumer in list(producer.consumers):
            if consumer.paused and not consumer.gate.paused:
                continue  # not connected yet, or reconnecting: not a congestion matter
            decision = consumer.gate.update(consumer.remb_bitrate, consumer.fraction_lost,
                                            producer.bitrate, now)
            if decision is None:
                continue
            if decision:
                consumer.suspend()
            else:
                consumer.unsuspend()
            logger.info("room %s: %s's video of %s %s (estimate %d, stream %d bps, loss %d/256)",
                        self.id, consumer.participant_id, producer.id,
                        "paused" if decision else "resumed", consumer.remb_bitrate,
                        producer.bitrate, consumer.fraction_lost)
            self._emit(MediaQuality(
                self.id, consumer.participant_id, producer.participant_id, producer.id,
                decision, "congestion" if decision else "recovered", consumer.remb_bitrate,
                producer.bitrate, consumer.fraction_lost))

    # --- statistics --------------------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        tracks: list[dict[str, Any]] = []
        for producer in self.producers.values():
            tracks.append({
                "track_id": producer.id, "participant_id": producer.participant_id,
                "kind": producer.kind, "direction": "inbound", "codec": producer.codec.mime_type,
                "bitrate": producer.bitrate, "packets": producer.packets,
                "bytes": producer.bytes, "packets_lost": producer.packets_lost,
                "packets_policed": producer.packets_policed,
                "packets_oversized": producer.packets_oversized,
                "retransmissions": producer.retransmissions,
                "rtx_padding": producer.rtx_padding,
                "rtx_unasked": producer.rtx_unasked,
                "jitter": round(producer.jitter_seconds, 6), "rtt": None,
            })
            for consumer in producer.consumers:
                tracks.append({
                    "track_id": producer.id, "participant_id": consumer.participant_id,
                    "kind": consumer.kind, "direction": "outbound",
                    "codec": producer.codec.mime_type, "bitrate": consumer.bitrate,
                    "packets": consumer.packets, "bytes": consumer.bytes,
                    "packets_dropped": consumer.packets_dropped,
                    "send_errors": consumer.send_errors,
                    "packets_lost": consumer.packets_lost,
                    "retransmitted": consumer.retransmitted, "nacks": consumer.nacks,
                    "plis": consumer.plis, "remb": consumer.remb_bitrate,
                    "nacks_ignored": consumer.nacks_ignored,
                    "video_paused": consumer.gate.paused,
                    "plis_ignored": consumer.plis_ignored,
                    "jitter": round(consumer.jitter / producer.codec.clock_rate, 6),
                    "rtt": consumer.rtt,
                })
        return tracks

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self._ticker.discard(self)
        if self.recorder is not None:
            self.recorder.stop(reason)
        for task in list(self._offer_tasks.values()):
            task.cancel()
        for participant in list(self.participants.values()):
            for transport in participant.transports():
                await self._close_transport(transport, reason)
        self.participants.clear()
        for producer in list(self.producers.values()):
            producer.close()
        self._emit(RoomClosed(self.id, reason))


def _now() -> float:
    return time.time()


class _Ticker:
    """One timer per event loop for the bookkeeping of all its routers, instead of a task
    waking per room: a worker with many rooms wakes once a tick, and their reports leave in the
    same turn's batch (sfu.udp_mux)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._routers: dict[Router, None] = {}  # in the order they opened
        self._timer: asyncio.TimerHandle | None = None

    def add(self, router: Router) -> None:
        self._routers[router] = None
        if self._timer is None:
            self._timer = self._loop.call_later(TICK, self._tick)

    def discard(self, router: Router) -> None:
        self._routers.pop(router, None)
        if not self._routers and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = self._loop.call_later(TICK, self._tick)
        for router in list(self._routers):
            router._tick()


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = \
    weakref.WeakKeyDictionary()


def _ticker(loop: asyncio.AbstractEventLoop) -> _Ticker:
    ticker = _tickers.get(loop)
    if ticker is None:
        ticker = _tickers[loop] = _Ticker(loop)
    return ticker
