"""aiortc client peers for SFU tests (and benches): over 127.0.0.1 only, driven straight through
a MediaPlane's requests and events.

- ``Publisher``: VP8 video whose frames carry a drawn 16-bit frame counter, plus an Opus tone
  (loud or quiet, so audio levels differ), plus a "chat" data channel.
- ``Subscriber``: answers the SFU's offers; with ``decode=True`` it decodes video and reads the
  counter back, otherwise it counts raw RTP packets without decoding (a light client).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from sfu import aiortc_hooks
from sfu.api import Answer, AnswerToServerOffer, GetStats, MediaPlane, Message, Offer, ServerOffer, Stats, Subscribe
from sfu.network import NetworkOptions

WIDTH, HEIGHT, FPS = 160, 120, 30
BITS, BLOCK = 12, 12  # counter bits drawn as BLOCK-pixel squares, in two rows of six
VIDEO_CLOCK = 90000
LOOPBACK = NetworkOptions(loopback=True)


async def answer_to(plane: MediaPlane, offer: Offer) -> Answer:
    """The media plane's answer to ``offer`` (a test fails on any other reply)."""
    reply = await plane.request(offer)
    assert isinstance(reply, Answer), reply
    return reply


async def track_stats(plane: MediaPlane, room_id: str) -> list[dict[str, Any]]:
    """The room's per-track statistics (``GetStats``)."""
    reply = await plane.request(GetStats(room_id))
    assert isinstance(reply, Stats), reply
    return reply.tracks


def video_frames(pc: RTCPeerConnection) -> list[Any]:
    """The frames of every video track ``pc`` receives from now on, decoded as they come."""
    frames: list[Any] = []

    def on_track(track: MediaStreamTrack) -> None:
        async def read() -> None:
            while True:
                frames.append(await track.recv())

        if track.kind == "video":
            asyncio.ensure_future(read())

    pc.on("track", on_track)
    return frames


def client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


def prefer_codec(transceiver: RTCRtpTransceiver, mime_type: str | None) -> None:
    """Offer only ``mime_type`` (e.g. "video/H264") on ``transceiver``; None: aiortc's order."""
    if mime_type:
        transceiver.setCodecPreferences([
            c for c in RTCRtpSender.getCapabilities(transceiver.kind).codecs if c.mimeType == mime_type
        ][:1])


async def publish_offer(plane: MediaPlane, pc: RTCPeerConnection, room_id: str, participant_id: str) -> None:
    """Offer ``pc``'s tracks on the participant's publish transport and apply the answer."""
    LOOPBACK.prepare(pc)
    await pc.setLocalDescription(await pc.createOffer())
    answer = await answer_to(plane, Offer(room_id, participant_id, "publish", pc.localDescription.sdp))
    await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))


async def subscribe_offer(plane: MediaPlane, pc: RTCPeerConnection, room_id: str,
                          participant_id: str) -> str:
    """WHEP's shape: offer ``pc``'s recvonly m-lines on the participant's subscribe transport,
    apply the answer and return it."""
    LOOPBACK.prepare(pc)
    await pc.setLocalDescription(await pc.createOffer())
    answer = await answer_to(plane, Offer(room_id, participant_id, "subscribe", pc.localDescription.sdp))
    await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
    return answer.sdp


def _square(bit: int, complement: int) -> tuple[int, int]:
    row, col = divmod(bit, 6)
    return 20 + (row + 2 * complement) * 2 * BLOCK, 20 + col * 2 * BLOCK


def draw_counter(counter: int) -> np.ndarray:
    """Each bit twice: as itself, and inverted two rows below."""
    image = np.full((HEIGHT, WIDTH, 3), 96, dtype=np.uint8)
    for bit in range(BITS):
        for complement in (0, 1):
            y, x = _square(bit, complement)
            image[y : y + BLOCK, x : x + BLOCK] = 255 if (counter >> bit & 1) ^ complement else 0
    return image


def read_counter(frame: av.VideoFrame) -> int:
    """A bit is set when its square is brighter than its inverted twin. aiortc's VP8 encoder,
    restarted mid-stream by a REMB change, renders some changed squares half-way for a frame
    (121 of 255): a fixed threshold would misread those, the pair does not."""
    gray = frame.reformat(width=WIDTH, height=HEIGHT).to_ndarray(format="gray")
    value = 0
    for bit in range(BITS):
        # the squares' interiors, averaged: codec ringing at the edges must not flip a bit
        plain, inverted = (
            gray[y + 3 : y + BLOCK - 3, x + 3 : x + BLOCK - 3].mean()
            for y, x in (_square(bit, 0), _square(bit, 1))
        )
        if plain > inverted:
            value |= 1 << bit
    return value


class CounterTrack(MediaStreamTrack):
    """Video frames numbered 0, 1, 2, ... with the number drawn in."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.counter = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.counter / FPS
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(draw_counter(self.counter % (1 << BITS)), format="rgb24")
        frame.pts = self.counter * VIDEO_CLOCK // FPS
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.counter += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """20 ms frames of a 440 Hz tone; ``amplitude`` 0..1 sets the RFC 6464 level aiortc sends."""

    kind = "audio"

    def __init__(self, amplitude: float) -> None:
        super().__init__()
        self.amplitude = amplitude
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._samples / 48000
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        t = (np.arange(960) + self._samples) / 48000
        pcm = (np.sin(2 * math.pi * 440 * t) * 32767 * self.amplitude).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, 48000)
        self._samples += 960
        return frame


class EventHub:
    """Routes a media plane's events to the test clients by participant."""

    def __init__(self, plane: MediaPlane) -> None:
        self.events: list[Message] = []
        self._clients: dict[str, Subscriber] = {}
        plane.on_event(self._on_event)

    def register(self, participant_id: str, subscriber: Subscriber) -> None:
        self._clients[participant_id] = subscriber

    def _on_event(self, event: Message) -> Awaitable[None] | None:
        self.events.append(event)
        if isinstance(event, ServerOffer):
            client = self._clients.get(event.participant_id)
            if client is not None:
                return client.handle_offer(event)
        return None

    def of(self, kind: type[Message]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Publisher:
    plane: MediaPlane
    room_id: str
    participant_id: str
    video: bool = True
    audio: bool = True
    amplitude: float = 0.5
    video_codec: str | None = None  # e.g. "video/H264"; default: aiortc's order (VP8 first)
    pc: RTCPeerConnection = field(default_factory=client_pc)
    data_channel: bool = True  # offer the chat data channel on this connection
    chat_received: list[dict[str, Any]] = field(default_factory=list)

    async def start(self) -> None:
        if self.video:
            self.video_track = CounterTrack()
            prefer_codec(self.pc.addTransceiver(self.video_track, direction="sendonly"), self.video_codec)
        if self.audio:
            self.pc.addTransceiver(ToneTrack(self.amplitude), direction="sendonly")
        if self.data_channel:
            self.chat = self.pc.createDataChannel("chat")
            self.chat.on("message", lambda m: self.chat_received.append(json.loads(m)))
        await publish_offer(self.plane, self.pc, self.room_id, self.participant_id)

    async def close(self) -> None:
        await self.pc.close()


@dataclass
class Subscriber:
    """``decode=True``: decode video, ``frames`` holds (arrival, counter). ``decode=False``:
    count raw RTP per SSRC without any aiortc receiver (``packets``)."""

    plane: MediaPlane
    hub: EventHub
    room_id: str
    participant_id: str
    decode: bool = True
    loss: float = 0.0
    with_chat: bool = True  # sfu.api.Subscribe: the SFU's offer opens the "chat" data channel
    pc: RTCPeerConnection | None = None
    frames: list[tuple[float, int]] = field(default_factory=list)
    audio_frames: int = 0
    packets: dict[int, int] = field(default_factory=dict)
    first_packet_at: dict[int, float] = field(default_factory=dict)
    chat_received: list[dict[str, Any]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    record_sequence: bool = False
    sequences: dict[int, list[int]] = field(default_factory=dict)
    _lossy: bool = False

    async def start(self) -> None:
        self.hub.register(self.participant_id, self)
        self._new_pc()
        await self.plane.request(Subscribe(self.room_id, self.participant_id, self.with_chat))

    def _new_pc(self) -> None:
        self.pc = client_pc()
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)

    def _on_datachannel(self, channel: Any) -> None:
        self.chat = channel
        channel.on("message", lambda m: self.chat_received.append(json.loads(m)))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.decode:
            self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    assert isinstance(frame, av.VideoFrame)
                    self.frames.append((time.monotonic(), read_counter(frame)))
                else:
                    self.audio_frames += 1
        except MediaStreamError:
            return

    async def handle_offer(self, event: ServerOffer) -> None:
        if self.pc is None or self.pc.signalingState == "closed":
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(event.sdp, "offer"))
        if not self.decode:
            for transceiver in self.pc.getTransceivers():
                aiortc_hooks.disarm_receiver(transceiver.receiver, lambda params: None)
            aiortc_hooks.intercept_packets(self.pc, self._count_rtp, self._ignore_rtcp)
        if self.loss and not self._lossy:
            self._lossy = True
            rng = np.random.default_rng(7)
            aiortc_hooks.filter_rtp_input(self.pc, lambda data: rng.random() >= self.loss)
        LOOPBACK.prepare(self.pc)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.plane.request(AnswerToServerOffer(
            self.room_id, self.participant_id, "subscribe", self.pc.localDescription.sdp,
            event.offer_id,
        ))

    async def _count_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        ssrc = int.from_bytes(data[8:12], "big")
        self.packets[ssrc] = self.packets.get(ssrc, 0) + 1
        self.first_packet_at.setdefault(ssrc, time.monotonic())
        if self.record_sequence:
            self.sequences.setdefault(ssrc, []).append(int.from_bytes(data[2:4], "big"))

    async def _ignore_rtcp(self, data: bytes) -> None:
        return None

    def counters(self) -> list[int]:
        return [c for _, c in self.frames]

    async def wait_frames(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
