"""Light WHIP publishers and WHEP subscribers for the media bench: no encoder, no decoder.

aiortc does SDP, ICE, DTLS and SRTP for them; the media path is ours:

- ``Publisher`` loops pre-encoded VP8 (and Opus) from ``bench.encoded`` as RTP through its
  sender's DTLS transport, rewriting sequence numbers and timestamps, keeping aiortc's
  retransmission history filled so NACKs are answered, and answering PLI/FIR with a keyframe.
  Before the first packet of frame ``n`` it writes the wall-clock send time into a shared table at
  ``n mod 2^15``, which is also the frame's VP8 PictureID: subscribers in other processes (same
  machine, same clock) compute the added latency without any header extension the SFU could
  rewrite.
- ``Subscriber`` parses each decrypted RTP packet's header and VP8 payload descriptor only: it
  counts packets, bytes, sequence gaps, complete frames and keyframes, and notes the time of its
  first complete keyframe. A frame's latency is taken twice: when the kernel received its first
  packet on the subscriber's socket (SIOCGSTAMP: what the SFU added, on the wire) and when this
  process got to it (that plus the client processes' own queueing on a shared machine). With
  ``receiver_reports`` it sends what a browser's receiver sends once a second (RR and REMB).

Either negotiates over WHIP/WHEP (``start``, the client offers), or through any other signalling:
``Publisher.negotiate`` takes a function from our offer to the server's answer, and
``Subscriber.answer`` answers an offer the server makes (expertcall's subscribe transport, a
Janus VideoRoom subscription).

Every private reach into aiortc used here goes through ``bench/client_hooks.py`` (pinned).
"""

from __future__ import annotations

import asyncio
import fcntl
import random
import struct
import time
from collections.abc import Awaitable, Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pylibsrtp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtpPacket,
    pack_remb_fci,
)
from aiortc.sdp import SessionDescription
from yarl import URL

from sfu.aiortc_hooks import sender_ssrcs

from . import client_hooks
from .encoded import AUDIO_CLOCK, VIDEO_CLOCK, EncodedAudio, EncodedVideo
from .loopback import no_ice_servers

PICTURE_IDS = 1 << 15
REMB_BPS = 1_500_000  # what a subscriber with room to spare reports
_HEADER = struct.Struct("!BBHII")
SIOCGSTAMP = 0x8906  # linux/sockios.h: when the kernel received the last datagram read
_TIMEVAL = struct.Struct("@ll")
_TIMEVAL_BUFFER = bytes(_TIMEVAL.size)


def kernel_arrival(fd: int) -> float:
    """The kernel's receive time of the datagram last read from socket ``fd`` (0.0 if none).
    The first call on a socket turns its timestamps on and answers with the time of the call:
    make it before the datagrams that count arrive."""
    try:
        seconds, micros = _TIMEVAL.unpack(fcntl.ioctl(fd, SIOCGSTAMP, _TIMEVAL_BUFFER))
    except OSError:
        return 0.0
    return seconds + micros / 1e6


class WhipError(Exception):
    pass


class _Idle(MediaStreamTrack):
    """A track that never yields a frame: it gives the sender a codec to negotiate while the
    packets come from our own loop."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[Any] = asyncio.get_event_loop().create_future()

    async def recv(self) -> Any:
        return await self._never


Exchange = Callable[[str], Awaitable[str]]
"""How a client-offered transport is negotiated: our offer's SDP in, the server's answer's SDP out
(a WHIP/WHEP POST, a /ws ``media.offer``, a Janus ``publish``)."""


async def _post_offer(http: aiohttp.ClientSession, url: str, token: str, offer: str) -> tuple[str, str]:
    """POST an SDP offer to a WHIP/WHEP endpoint: (the answer, the resource URL)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
    async with http.post(url, data=offer, headers=headers) as response:
        body = await response.text()
        if response.status != 201:
            raise WhipError(f"{url}: {response.status} {body}")
        location = response.headers["Location"]
    return body, str(URL(url).join(URL(location)))


async def _exchange(http: aiohttp.ClientSession, url: str, token: str, pc: RTCPeerConnection,
                    gathered: Callable[[], None] | None = None) -> str:
    """POST our offer (ICE gathered), apply the answer; returns the resource URL."""
    await pc.setLocalDescription(await pc.createOffer())
    if gathered is not None:
        gathered()
    answer, resource = await _post_offer(http, url, token, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return resource


async def _delete(http: aiohttp.ClientSession, url: str | None, token: str) -> None:
    if url:
        try:
            async with http.delete(url, headers={"Authorization": f"Bearer {token}"}):
                pass
        except aiohttp.ClientError:
            pass


# --- publisher ------------------------------------------------------------------------------


NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900 (NTP's epoch) to 1970


def _ntp_now() -> int:
    """aiortc's clock.current_ntp_time() (64-bit NTP time), from time.time() rather than
    through datetime objects: a few µs less per frame."""
    seconds, fraction = divmod(time.time() + NTP_UNIX_OFFSET, 1.0)
    return int(seconds) << 32 | int(fraction * (1 << 32))


class _History(dict):  # type: ignore[type-arg]
    """aiortc's retransmission history of one sender, holding each packet as it was sent and
    parsing one back into an RtpPacket only when a NACK asks for it (on loopback, almost never)."""

    def __init__(self, extensions_map: Any) -> None:
        super().__init__()
        self.extensions_map = extensions_map

    def get(self, key: int, default: Any = None) -> Any:
        data = super().get(key)
        return default if data is None else RtpPacket.parse(data, self.extensions_map)


class _Outgoing:
    """One sending stream: packets built here and written straight onto the transport's socket
    (sfu.aiortc_hooks.RawSender: SRTP, then sendto, no await), while the aiortc sender keeps
    what its RTCP needs (SSRC, sender-report counters) and answers NACKs from our history."""

    def __init__(self, sender: Any, payload_type: int) -> None:
        from sfu.aiortc_hooks import RawSender

        self.sender = sender
        self.payload_type = payload_type
        self.sequence = random.randint(0, 0xFFFF)
        self.timestamp_base = random.randint(0, 0xFFFFFFFF)
        self.packets = 0
        self._raw = RawSender(sender.transport)
        extensions_map = client_hooks.header_extensions(sender)
        self._history = _History(extensions_map)
        client_hooks.replace_history(sender, self._history)
        # The one-byte header extensions aiortc would write (RFC 8285): mid, then abs-send-time,
        # whose 3 bytes are filled in per frame.
        mid_id, self._abs_id = client_hooks.extension_ids(extensions_map)
        mid = client_hooks.sender_mid(sender).encode()
        self._ext_head = bytes((mid_id << 4 | len(mid) - 1,)) + mid if mid_id and mid else b""
        size = len(self._ext_head) + (4 if self._abs_id else 0)
        self._ext_pad = bytes(-size % 4)
        self._ext_profile = struct.pack("!HH", 0xBEDE, (size + len(self._ext_pad)) // 4) if size else b""
        self._first_byte = 0x90 if size else 0x80
        self._ssrc = sender_ssrcs(sender)[0]

    def send_frame(self, payloads: list[bytes], timestamp: int, marker: bool) -> None:
        """One frame's packets, the marker bit on the last if ``marker``."""
        ntp = _ntp_now()
        extension = self._ext_profile + self._ext_head
        if self._abs_id:
            extension += bytes((self._abs_id << 4 | 2,)) + ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")
        extension += self._ext_pad
        last = len(payloads) - 1
        octets = 0
        history = self._history
        for i, payload in enumerate(payloads):
            data = _HEADER.pack(self._first_byte, self.payload_type | (0x80 if marker and i == last else 0),
                                self.sequence, timestamp, self._ssrc) + extension + payload
            dict.__setitem__(history, self.sequence % RTP_HISTORY_SIZE, data)
            self._raw.send_rtp(data)
            self.sequence = (self.sequence + 1) & 0xFFFF
            octets += len(payload)
        self.packets += len(payloads)
        client_hooks.count_sent(self.sender, len(payloads), octets, ntp, timestamp)


class Publisher:
    def __init__(self, url: str, token: str, video: EncodedVideo, audio: EncodedAudio | None,
                 send_times: MutableSequence[float]) -> None:
        self.url, self.token = url, token
        self.video, self.audio = video, audio
        self.send_times = send_times  # shared table indexed by PictureID
        self.pc = RTCPeerConnection(no_ice_servers())
        self.resource: str | None = None
        self.keyframe_requests = 0
        self._keyframe = False
        self._tasks: list[asyncio.Task[None]] = []
        self.frames_sent = 0
        self.frames_skipped = 0  # ticks missed because this process was late: a live encoder drops them

    def _request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._keyframe = True

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Publish over WHIP to ``url``."""

        async def whip(offer: str) -> str:
            answer, self.resource = await _post_offer(http, self.url, self.token, offer)
            return answer

        await self.negotiate(whip)

    async def negotiate(self, exchange: Exchange) -> None:
        """Offer our tracks through ``exchange``, wait for ICE and DTLS, start sending."""
        video = self.pc.addTransceiver(_Idle("video"), direction="sendonly")
        audio = self.pc.addTransceiver(_Idle("audio"), direction="sendonly") if self.audio else None
        client_hooks.on_keyframe_request(video.sender, self._request_keyframe)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await exchange(self.pc.localDescription.sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await _connected(self.pc)
        self._tasks.append(asyncio.ensure_future(self._send_video(_outgoing(video))))
        if audio is not None:
            self._tasks.append(asyncio.ensure_future(self._send_audio(_outgoing(audio))))

    async def _send_video(self, out: _Outgoing) -> None:
        loop = asyncio.get_running_loop()
        interval = 1 / self.video.fps
        step = VIDEO_CLOCK // self.video.fps
        frames = len(self.video.delta)
        start = loop.time()
        n, previous = 0, frames
        while True:
            index = n % frames
            chunks = self.video.delta[index]
            # A keyframe when asked, and where the loop starts over (also when a skip crossed it).
            if self._keyframe or index <= previous:
                self._keyframe = False
                chunks = self.video.keyframes[index] if index else chunks
            previous = index
            picture_id = self.frames_sent % PICTURE_IDS  # consecutive, as from an encoder
            descriptor = bytes((0x90, 0x80, 0x80 | picture_id >> 8, picture_id & 0xFF))
            following = bytes((0x80, 0x80, 0x80 | picture_id >> 8, picture_id & 0xFF))
            timestamp = (out.timestamp_base + n * step) & 0xFFFFFFFF
            self.send_times[picture_id] = time.time()
            out.send_frame([(descriptor if i == 0 else following) + chunk for i, chunk in enumerate(chunks)],
                           timestamp, True)
            self.frames_sent += 1
            n = _next_tick(n, start, interval, loop.time())
            self.frames_skipped = n - self.frames_sent
            await asyncio.sleep(max(0.0, start + n * interval - loop.time()))

    async def _send_audio(self, out: _Outgoing) -> None:
        assert self.audio is not None
        loop = asyncio.get_running_loop()
        interval = self.audio.frame_ms / 1000
        step = AUDIO_CLOCK * self.audio.frame_ms // 1000
        start = loop.time()
        n = 0
        while True:
            payload = self.audio.packets[n % len(self.audio.packets)]
            timestamp = (out.timestamp_base + n * step) & 0xFFFFFFFF
            out.send_frame([payload], timestamp, n == 0)
            n = _next_tick(n, start, interval, loop.time())
            await asyncio.sleep(max(0.0, start + n * interval - loop.time()))

    async def close(self, http: aiohttp.ClientSession) -> None:
        """Stop sending, DELETE the WHIP resource, close the connection."""
        await self._stop_sending()
        await _delete(http, self.resource, self.token)
        await self.pc.close()

    async def stop(self) -> None:
        """Stop sending and close the connection (a transport negotiated by ``negotiate``)."""
        await self._stop_sending()
        await self.pc.close()

    async def _stop_sending(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _next_tick(n: int, start: float, interval: float, now: float) -> int:
    """The next frame to send: the one after ``n``, or, when this process fell behind, the one
    the clock is at (bursting the missed ones out late would fake both frame rate and latency)."""
    return max(n + 1, int((now - start) / interval))


def _outgoing(transceiver: Any) -> _Outgoing:
    return _Outgoing(transceiver.sender, transceiver._codecs[0].payloadType)


async def _connected(pc: RTCPeerConnection, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
            raise WhipError(f"connection {pc.connectionState}")
        await asyncio.sleep(0.02)


# --- subscriber -----------------------------------------------------------------------------


@dataclass
class StreamCounters:
    """Receive counters of one RTP stream (one SSRC)."""

    received: int = 0
    bytes: int = 0
    highest: int = -1  # extended sequence number
    cycles: int = 0
    last_seq: int = -1
    first: int = -1

    def add(self, seq: int, size: int) -> int:
        self.received += 1
        self.bytes += size
        if self.last_seq < 0:
            self.first = self.highest = seq
        else:
            if seq < self.last_seq and self.last_seq - seq > 0x8000:
                self.cycles += 0x10000
            elif seq > self.last_seq and seq - self.last_seq > 0x8000:
                # A late packet from before the wrap.
                return self.cycles - 0x10000 + seq
        self.last_seq = seq
        extended = self.cycles + seq
        self.highest = max(self.highest, extended)
        return extended


@dataclass
class Snapshot:
    at: float
    packets: int  # video
    bytes: int  # video payload
    expected: int  # video, from the sequence numbers
    frames: int  # complete video frames
    keyframes: int
    audio_packets: int
    audio_expected: int = 0


@dataclass
class Subscriber:
    url: str
    token: str
    send_times: MutableSequence[float]
    audio: bool = False
    # Send what a browser's receiver sends once a second (a receiver report per stream, a REMB
    # for the video), so that the server's RTCP input costs what it costs in a real call.
    receiver_reports: bool = False
    pc: RTCPeerConnection = field(init=False)
    resource: str | None = None
    started_at: float = 0.0
    answered_at: float = 0.0  # the WHEP answer arrived
    connected_at: float = 0.0  # ICE and DTLS done
    first_frame_at: float = 0.0  # the first complete keyframe arrived
    error: str = ""
    video_types: set[int] = field(default_factory=set)
    audio_types: set[int] = field(default_factory=set)
    video: StreamCounters = field(default_factory=StreamCounters)
    audio_counters: StreamCounters = field(default_factory=StreamCounters)
    other_packets: int = 0
    frames: int = 0
    keyframes: int = 0
    latencies: list[float] = field(default_factory=list)  # to the kernel's receive time
    delivered_latencies: list[float] = field(default_factory=list)  # to this process's
    measuring: bool = False
    video_ssrc: int = 0
    audio_ssrc: int = 0
    _fd: int = -1  # the socket the packet in hand came from, -1 when not straight off one
    _hooked: set[int] = field(default_factory=set)  # id() of the DTLS transports hooked
    _reports: asyncio.Task[None] | None = None
    _frame_ts: int = -1
    _frame_start: int = -1
    _frame_packets: int = 0
    _frame_key: bool = False

    def __post_init__(self) -> None:
        self.pc = RTCPeerConnection(no_ice_servers())

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Watch over WHEP: we offer recvonly media to ``url``."""
        self.started_at = time.time()
        self.pc.addTransceiver("video", direction="recvonly")
        if self.audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        transports = self._hook_transceivers()

        def gathered() -> None:
            self._hook_sockets(transports)

        self._watch_state()
        try:
            self.resource = await _exchange(http, self.url, self.token, self.pc, gathered)
        except Exception as exc:
            self.error = str(exc)
            raise
        self.answered_at = time.time()
        self._learn_payload_types()
        self._start_reports()

    async def answer(self, offer: str) -> str:
        """Answer an offer the server made for this subscriber's transport (the first one or a
        renegotiation adding the other side's tracks): the SDP of our answer."""
        first = self.pc.remoteDescription is None
        if first:
            self._watch_state()
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            transports = self._hook_transceivers()
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:
            self.error = str(exc)
            raise
        # Gathered now, and aiortc's connect task has not run yet.
        self._hook_sockets(transports)
        if first:
            self.answered_at = time.time()
            self._start_reports()
        self._learn_payload_types()
        return str(self.pc.localDescription.sdp)

    def _hook_transceivers(self) -> list[Any]:
        transports = []
        for transceiver in self.pc.getTransceivers():
            client_hooks.idle_receiver(transceiver.receiver)
            client_hooks.take_rtp(transceiver.receiver.transport, self._on_rtp)
            transports.append(transceiver.receiver.transport)
        return transports

    def _hook_sockets(self, transports: list[Any]) -> None:
        for transport in transports:
            if id(transport) not in self._hooked:
                self._hooked.add(id(transport))
                _hook_sockets(transport, self._on_datagram)

    def _watch_state(self) -> None:
        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState == "connected" and not self.connected_at:
                self.connected_at = time.time()

    def _learn_payload_types(self) -> None:
        for media in SessionDescription.parse(self.pc.remoteDescription.sdp).media:
            for codec in media.rtp.codecs:
                if codec.payloadType is None:
                    continue
                if codec.mimeType.lower() == "video/vp8":
                    self.video_types.add(codec.payloadType)
                elif media.kind == "audio" and codec.mimeType.lower() != "audio/rtx":
                    self.audio_types.add(codec.payloadType)

    def _start_reports(self) -> None:
        if self.receiver_reports and self._reports is None:
            self._reports = asyncio.ensure_future(self._send_reports())

    async def _send_reports(self) -> None:
        own_ssrc = random.getrandbits(32)
        previous: dict[int, tuple[int, int]] = {}  # ssrc: (expected, received) at the last report
        while True:
            await asyncio.sleep(0.5 + random.random())  # RFC 3550's randomised interval, as aiortc's
            transports = [t.receiver.transport for t in self.pc.getTransceivers()]
            if not transports or transports[0].state != "connected":
                continue
            reports = []
            for ssrc, counters in ((self.video_ssrc, self.video), (self.audio_ssrc, self.audio_counters)):
                if not ssrc or counters.first < 0:
                    continue
                expected = counters.highest - counters.first + 1
                last_expected, last_received = previous.get(ssrc, (0, 0))
                interval_expected = expected - last_expected
                interval_lost = interval_expected - (counters.received - last_received)
                fraction = 0 if interval_expected <= 0 or interval_lost <= 0 \
                    else min(255, (interval_lost << 8) // interval_expected)
                previous[ssrc] = (expected, counters.received)
                reports.append(RtcpReceiverInfo(
                    ssrc=ssrc, fraction_lost=fraction, packets_lost=max(0, expected - counters.received),
                    highest_sequence=counters.highest & 0xFFFFFFFF, jitter=0, lsr=0, dlsr=0))
            if not reports:
                continue
            data = bytes(RtcpRrPacket(ssrc=own_ssrc, reports=reports))
            if self.video_ssrc:
                data += bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=own_ssrc, media_ssrc=0,
                                             fci=pack_remb_fci(REMB_BPS, [self.video_ssrc])))
            try:
                await transports[0]._send_rtp(data)
            except ConnectionError:
                return

    async def _on_rtp(self, data: bytes, arrival_time_ms: int = 0) -> None:
        """Packets aiortc queued before our socket hook took over (the first few at most)."""
        self._fd = -1
        self._on_packet(data, time.time())

    def _on_datagram(self, data: bytes, srtp: pylibsrtp.Session, fd: int) -> None:
        arrived = time.time()
        if 191 < data[1] < 224:  # SRTCP: sender reports are of no use to a counter
            return
        self._fd = fd
        try:
            self._on_packet(srtp.unprotect(data), arrived)
        except pylibsrtp.Error:
            self.other_packets += 1

    def _on_packet(self, data: bytes, arrived: float) -> None:
        # The per-packet path of the bench: keep it lean, it runs for every subscriber.
        if len(data) < 12:
            return
        first, second, seq, timestamp, ssrc = _HEADER.unpack_from(data)
        payload_type = second & 0x7F
        if payload_type in self.video_types:
            self.video_ssrc = ssrc
            pos = 12 + 4 * (first & 0x0F)
            if first & 0x10:
                pos += 4 + 4 * int.from_bytes(data[pos + 2:pos + 4], "big")
            end = len(data) - (data[-1] if first & 0x20 else 0)
            extended = self.video.add(seq, end - pos)
            self._on_vp8(data, pos, end, extended, timestamp, second & 0x80, arrived)
        elif payload_type in self.audio_types:
            self.audio_ssrc = ssrc
            self.audio_counters.add(seq, len(data) - 12)
        else:
            self.other_packets += 1

    def _on_vp8(self, data: bytes, pos: int, end: int, extended: int, timestamp: int, marker: int,
                arrived: float) -> None:
        if end - pos < 1:
            return
        descriptor = data[pos]
        if descriptor & 0x10 and not descriptor & 0x0F:  # S=1, partition 0: a frame starts
            picture_id = -1
            header = pos + 1
            if descriptor & 0x80 and header < end:
                extension = data[header]
                header += 1
                if extension & 0x80 and header < end:  # PictureID
                    if data[header] & 0x80:
                        picture_id = ((data[header] & 0x7F) << 8) | data[header + 1]
                        header += 2
                    else:
                        picture_id = data[header]
                        header += 1
                if extension & 0x40:
                    header += 1
                if extension & 0x30:
                    header += 1
            self._frame_ts = timestamp
            self._frame_start = extended
            self._frame_packets = 0
            self._frame_key = header < end and not data[header] & 0x01
            if self.measuring and picture_id >= 0:
                sent = self.send_times[picture_id]
                if sent:
                    latency = arrived - sent
                    if 0 <= latency < 10:
                        self.delivered_latencies.append(latency)
                        on_wire = kernel_arrival(self._fd) - sent if self._fd >= 0 else latency
                        self.latencies.append(on_wire if 0 <= on_wire <= latency else latency)
        if timestamp == self._frame_ts:
            self._frame_packets += 1
            if marker and self._frame_packets == extended - self._frame_start + 1:
                self.frames += 1
                if self._frame_key:
                    self.keyframes += 1
                    if not self.first_frame_at:
                        self.first_frame_at = time.time()
                self._frame_ts = -1

    def snapshot(self) -> Snapshot:
        v, a = self.video, self.audio_counters
        expected = v.highest - v.first + 1 if v.first >= 0 else 0
        audio_expected = a.highest - a.first + 1 if a.first >= 0 else 0
        return Snapshot(time.time(), v.received, v.bytes, expected, self.frames, self.keyframes,
                        a.received, audio_expected)

    async def close(self, http: aiohttp.ClientSession) -> None:
        """DELETE the WHEP resource and close the connection."""
        await _delete(http, self.resource, self.token)
        await self.stop()

    async def stop(self) -> None:
        """Close the connection (a transport the server offered)."""
        if self._reports is not None:
            self._reports.cancel()
        await self.pc.close()


def _hook_sockets(transport: Any,
                  on_datagram: Callable[[bytes, pylibsrtp.Session, int], None]) -> None:
    """Take SRTP straight from the sockets once DTLS has keyed it. aioice's
    StunProtocol.datagram_received would first try to parse every datagram as STUN, then queue
    it for RTCDtlsTransport._recv_next on another task; for a subscriber that only counts
    packets that is most of its cost, and its queueing would be charged to the server as
    latency. STUN and DTLS still take aiortc's path."""
    for protocol in client_hooks.socket_protocols(transport):
        through_aioice = protocol.datagram_received
        fd = protocol.transport.get_extra_info("socket").fileno()
        kernel_arrival(fd)  # from now on, the kernel stamps what this socket receives

        def datagram_received(data: bytes, addr: Any, through_aioice: Any = through_aioice,
                              fd: int = fd) -> None:
            srtp = client_hooks.rx_srtp(transport)
            if srtp is not None and 127 < data[0] < 192 and len(data) > 12:
                on_datagram(data, srtp, fd)
            else:
                through_aioice(data, addr)

        protocol.datagram_received = datagram_received
