"""A producer: one track a participant publishes, fanned out to its consumers.

A producer outlives the publish transport that feeds it: when a publisher reconnects (ICE restart
after a network drop), the new transport attaches to the same producer, ``epoch`` moves on, and
each consumer re-bases its sequence numbers and timestamps so that subscribers see one continuous
stream. ``receive`` is the per-packet entry point.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from sfu import congestion, fastsend, rtcp
from sfu.forwarder import KEYFRAME_DETECTORS, MAX_FORWARDED_PAYLOAD, current_ms, find_extension
from sfu.nack import UpstreamNacks
from sfu.options import CongestionOptions

# Producer.receive's fan-out in C when sfu/_fastsend.c is built (None: the Python loop), and its
# plain case (None: all of it in Python, the reference)
_fanout = fastsend.native_fanout
_receive = fastsend.native_receive
MAX_ASKED = 256  # sequence numbers subscribers asked for that we had to ask the publisher for
MIN_REMB = 150_000  # bps: the least we ever ask a video publisher for
# libwebrtc drops a keyframe request that comes within 300 ms of the previous one
# (EncoderRtcpFeedback), so keyframe requests for joiners are spaced at least this far apart...
MIN_KEYFRAME_SPACING = 0.3
# ...and repeated while anyone still waits: a dropped request or a lost keyframe must not leave a
# subscriber black until someone else asks.
JOIN_KEYFRAME_RETRY = 0.5
# A video joiner starts on the newest keyframe and what followed it, sent in one burst, instead of
# waiting for a fresh keyframe (a 300 ms spacing and a round trip to the encoder): the producer
# keeps that run of packets while it is short and recent enough to be worth a burst...
GOP_MAX_PACKETS = 256
GOP_MAX_AGE_MS = 1000  # ...so a joiner starts at most this far behind, then catches up
# A joiner served from a run older than this asks for a fresh keyframe (PLI-throttled), so that
# during a stream of joins the next ones find a young run.
GOP_REFRESH_MS = 500
if fastsend.configure_receive is not None:
    fastsend.configure_receive(MAX_FORWARDED_PAYLOAD, GOP_MAX_PACKETS, GOP_MAX_AGE_MS)
# the keyframe detectors the C receive has (_keyframe_kind); any other codec's video is Python's
_KEYFRAME_KINDS = {"vp8": 1, "h264": 2}


class Scheduler(Protocol):
    """The part of an event loop that keyframe requests use: a clock and timers (tests pass
    a fake one)."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...


class ProducerListener(Protocol):
    """What a producer feeds and tells: a ``Consumer`` (mediasoup style), which imports the
    producer it listens to; the producer never imports the consumer."""

    remb_bitrate: int  # what the subscriber's receiver estimates it can take, in bps
    gate: congestion.VideoGate

    def forward(self, payload: bytes, padding: int, marker: int, seq: int, ts: int, level: int,
                abs24: int, keyframe: bool, epoch: int, arrival_ms: int) -> None:
        """One packet of the producer's track, for this subscriber."""
        ...

    def restart(self) -> None:
        """The producer's source changed (a publisher's reconnect): wait for a keyframe."""
        ...

    def failed(self, exc: Exception) -> None:
        """Forwarding to this subscriber raised; the fan-out carries on with the others."""
        ...

    def close(self, reason: str = "closed") -> None:
        """The producer closed."""
        ...


# The consumers a producer feeds (``Producer[Consumer]`` in a router).
Listener = TypeVar("Listener", bound=ProducerListener)


@dataclass(frozen=True)
class Codec:
    """The one codec a producer sends, as negotiated with its publisher."""

    mime_type: str  # "video/VP8"
    clock_rate: int
    payload_type: int
    rtx_payload_type: int | None = None
    channels: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    nack: bool = False
    pli: bool = False
    remb: bool = False

    @property
    def name(self) -> str:
        return self.mime_type.split("/")[1].lower()


# With sfu/_fastsend.c built, the attributes receive() reads and writes per packet are C members
# of this base class (as Consumer's are: sfu/consumer.py), so that its plain case runs in C.
if TYPE_CHECKING or fastsend.ProducerBase is None:
    class _Base:  # (not object: ``object, Generic`` has no MRO)
        """Without the helper: plain attributes."""
else:
    _Base = fastsend.ProducerBase


class Producer(_Base, Generic[Listener]):
    # No per-instance __dict__ (as Consumer: sfu/consumer.py): 63 attributes, a dict of its own
    # of ~1.5 KiB each. Those the C base already has are left out.
    __slots__ = tuple(name for name in (
        "id", "participant_id", "kind", "codec", "app_data", "closed", "on_close", "consumers",
        "ssrc", "rtx_ssrc", "_send_rtcp", "rtcp_ssrc", "epoch", "audio_level_id",
        "_keyframe_kind", "_is_keyframe_start", "_clock_per_ms", "waiting_for_keyframe", "_gop",
        "_gop_at", "_gop_ms", "_gop_ts", "_gop_seq", "_caching", "packets", "bytes",
        "packets_policed", "packets_oversized", "retransmissions", "rtx_padding", "_base_seq",
        "_max_seq", "_cycles", "_expected_prior", "_received_prior", "_received_base",
        "_lost_before", "_jitter", "_transit", "last_arrival_ms", "level_sum", "level_count",
        "bitrate", "bytes_at_report", "_nacks", "_asked", "rtx_unasked", "sr_ntp", "sr_rtp",
        "sr_received_at", "max_bitrate", "_congestion", "_bytes_per_ms", "_bucket_size",
        "_tokens", "_bucket_ms", "_keyframe_interval", "_scheduler", "_last_keyframe_request",
        "_keyframe_timer", "_join_spacing", "_join_timer", "_join_due",
    ) if not hasattr(_Base, name))

    def __init__(
        self,
        producer_id: str,
        participant_id: str,
        kind: str,
        codec: Codec,
        *,
        max_bitrate: int,
        keyframe_interval: float,
        app_data: dict[str, Any] | None = None,
        scheduler: Scheduler | None = None,
        congestion: CongestionOptions = congestion.DEFAULT,
    ) -> None:
        self.id = producer_id
        self.participant_id = participant_id
        self.kind = kind
        self.codec = codec
        self.app_data = app_data or {}
        self.closed = False
        self.consumers: list[Listener] = []
        self.on_close: list[Callable[[Producer], None]] = []

        # Where the media comes from: set (again) by each publish transport that feeds us.
        self.epoch = 0
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.audio_level_id = 0
        self._send_rtcp: Callable[[bytes], bool] = _drop
        self.rtcp_ssrc = random.getrandbits(32)

        self._is_keyframe_start = KEYFRAME_DETECTORS[codec.name]
        self._keyframe_kind = _KEYFRAME_KINDS.get(codec.name, 0)
        self._clock_per_ms = codec.clock_rate // 1000
        self.waiting_for_keyframe = 0  # consumers that start on the next keyframe
        # the run of video packets from the newest keyframe on, as forward() takes them:
        # (payload, padding, marker, seq, ts); None when there is none worth replaying
        self._gop: list[tuple[bytes, int, int, int, int]] | None = None
        self._gop_ms = 0  # arrival of its keyframe (packet clock)
        self._gop_at = 0.0  # the same, on the scheduler's clock
        self._gop_ts = -1
        self._gop_seq = 0
        self._caching = kind == "video"

        # receive statistics (RFC 3550 A.1/A.8)
        self.packets = 0
        self.bytes = 0
        self.packets_policed = 0
        self.packets_oversized = 0
        self.retransmissions = 0
        self.rtx_padding = 0  # padding-only RTX (bandwidth probes): dropped
        self._base_seq = -1
        self._max_seq = 0
        self._cycles = 0
        self._jitter = 0.0
        self._transit = 0
        self.last_arrival_ms = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._received_base = 0  # self.packets when the current source attached
        self._lost_before = 0  # packets lost by earlier sources (for stats)
        self.level_sum = 0  # audio levels (-dBov) since the router last looked
        self.level_count = 0
        self.bitrate = 0  # bps over the last second, set by the router
        self.bytes_at_report = -1  # self.bytes at the router's last report (-1: none yet)
        self._nacks = UpstreamNacks()
        # seq -> (when, the consumers that asked for it): a packet the SFU had, gone from their
        # caches; its retransmission goes to them alone
        self._asked: dict[int, tuple[int, list[Listener]]] = {}
        self.rtx_unasked = 0  # retransmissions nobody was waiting for: dropped

        # sender report from the publisher: for RR's lsr/dlsr and for A/V sync downstream
        self.sr_ntp = 0
        self.sr_rtp = 0
        self.sr_received_at = 0.0

        # bitrate control: REMB down to the publisher, policing of anything above it
        self.max_bitrate = max_bitrate
        self._congestion = congestion
        self._bytes_per_ms = max_bitrate * 1.5 / 8000 if max_bitrate else 0.0
        self._bucket_size = max_bitrate * 1.5 / 8 if max_bitrate else 0.0
        self._tokens = self._bucket_size
        self._bucket_ms = 0

        # keyframe requests: at most one per keyframe_interval towards the publisher
        self._keyframe_interval = keyframe_interval
        self._scheduler = scheduler  # None: the running event loop
        self._last_keyframe_request = -1e9
        self._keyframe_timer: Any = None
        # keyframe requests on join/resume: not held back by the subscribers' PLI throttle; a
        # join storm shares the one pending request
        self._join_spacing = min(MIN_KEYFRAME_SPACING, keyframe_interval)
        self._join_timer: Any = None
        self._join_due = 0.0  # when the pending join request (or retry) fires

    # --- wiring ------------------------------------------------------------------------------

    def attach_source(
        self,
        ssrc: int | None,
        rtx_ssrc: int | None,
        audio_level_id: int,
        send_rtcp: Callable[[bytes], bool],
    ) -> None:
        """A publish transport now feeds this producer (first time, or after a reconnect)."""
        self.epoch += 1
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.audio_level_id = audio_level_id
        self._send_rtcp = send_rtcp
        # A new source is a new RTP session for the receive statistics (RFC 3550 A.1): the
        # old cycle count, counters and NTP/RTP mapping would make receiver reports go
        # backwards, hide the new source's losses, and give subscribers a wrong A/V sync.
        self._lost_before += self.packets_lost
        self._base_seq = -1
        self._cycles = 0
        self._received_base = self.packets
        self._expected_prior = self._received_prior = 0
        self._jitter = 0.0
        self._transit = 0
        self.sr_ntp = self.sr_rtp = 0
        self.sr_received_at = 0.0
        self._nacks.clear()
        self._asked.clear()
        self._gop = None  # the new encoder's frames do not follow the old one's
        for consumer in self.consumers:
            consumer.restart()
        if self.waiting_for_keyframe:
            self.request_join_keyframe()  # (an SSRC switch too: nothing else would ask)

    def detach_source(self) -> None:
        self._send_rtcp = _drop

    def add_consumer(self, consumer: Listener) -> None:
        self.consumers.append(consumer)

    def remove_consumer(self, consumer: Listener) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._keyframe_timer is not None:
            self._keyframe_timer.cancel()
        if self._join_timer is not None:
            self._join_timer.cancel()
        self._gop = None
        for consumer in list(self.consumers):
            consumer.close("producer_closed")
        for callback in self.on_close:
            callback(self)
        self.on_close.clear()

    # --- the per-packet path -----------------------------------------------------------------

    def receive(self, data: bytes, b0: int, b1: int, seq: int, ts: int, offset: int,
                arrival_ms: int) -> None:
        """One media packet from the publisher, header already split by the transport."""
        if _receive is not None and _receive(self, data, b0, b1, seq, ts, offset, arrival_ms):
            return
        size = len(data)
        if size - offset > MAX_FORWARDED_PAYLOAD:
            self.packets_oversized += 1  # no subscriber could be sent it
            return
        if self._bytes_per_ms:  # (inline: _police() for every media packet costs a call)
            tokens = self._tokens + (arrival_ms - self._bucket_ms) * self._bytes_per_ms
            self._bucket_ms = arrival_ms
            tokens = min(tokens, self._bucket_size)
            if tokens < size:
                self._tokens = tokens
                self.packets_policed += 1
                return
            self._tokens = tokens - size
        self.packets += 1
        self.bytes += size
        self.last_arrival_ms = arrival_ms

        if self._base_seq < 0:
            self._base_seq = self._max_seq = seq
        else:
            delta = (seq - self._max_seq) & 0xFFFF
            if delta == 0:
                return  # duplicate
            if delta < 0x8000:
                if seq < self._max_seq:
                    self._cycles += 0x10000
                if delta > 1 and self.codec.nack:
                    self._note_missing(delta, arrival_ms)
                self._max_seq = seq
                nacks = self._nacks
                if nacks.due_ms and arrival_ms >= nacks.due_ms:
                    self._request_upstream(nacks.due(arrival_ms))
                transit = arrival_ms * self._clock_per_ms - ts
                d = transit - self._transit
                self._transit = transit
                self._jitter += ((d if d > 0 else -d) - self._jitter) / 16
            elif self._nacks.pending:
                self._nacks.arrived(seq, arrival_ms, False)

        level = -1
        if self.audio_level_id:
            level = self._read_audio_level(data)

        payload = data[offset:]
        padding = b0 & 0x20
        marker = b1 & 0x80
        if self._caching:
            keyframe = self._cache_gop(payload, padding, marker, seq, ts, arrival_ms)
        else:
            keyframe = self.waiting_for_keyframe > 0 and self._is_keyframe_start(payload)
        abs24 = (arrival_ms * 262144 // 1000) & 0xFFFFFF
        epoch = self.epoch
        if _fanout is not None:  # the loop below, in C (sfu/fastsend.py)
            _fanout(self.consumers, (payload, padding, marker, seq, ts, level, abs24, keyframe,
                                     epoch, arrival_ms))
            return
        # a copy, as the C fan-out walks: a consumer closed by another's sending (and so taken
        # off the list) must not take this packet from the one after it
        for consumer in tuple(self.consumers):
            try:  # (free in CPython 3.11 until something raises)
                consumer.forward(payload, padding, marker, seq, ts, level, abs24, keyframe,
                                 epoch, arrival_ms)
            except Exception as exc:  # one subscriber's fault is its own
                consumer.failed(exc)

    def _cache_gop(self, payload: bytes, padding: int, marker: int, seq: int, ts: int,
                   arrival_ms: int) -> bool:
        """Keep the run from the newest keyframe on; True when this packet starts a keyframe."""
        gop = self._gop
        if self._is_keyframe_start(payload):
            if gop is None or ts != self._gop_ts:  # (an H.264 IDR after its SPS is one picture)
                self._gop = [(payload, padding, marker, seq, ts)]
                self._gop_ms = arrival_ms
                self._gop_at = self._now()
                self._gop_ts = ts
                self._gop_seq = seq
                return True
        elif gop is None:
            return False
        if len(gop) < GOP_MAX_PACKETS and arrival_ms - self._gop_ms <= GOP_MAX_AGE_MS:
            gop.append((payload, padding, marker, seq, ts))
        else:
            self._gop = None
        return False

    def replay_gop(self, consumer: Listener) -> bool:
        """Start ``consumer`` right away on the cached run from the newest keyframe, if there is
        one young enough; False when it must wait for a new keyframe instead."""
        gop = self._gop
        age_ms = (self._now() - self._gop_at) * 1000
        if gop is None or age_ms > GOP_MAX_AGE_MS:
            return False
        now_ms = current_ms()
        abs24 = (now_ms * 262144 // 1000) & 0xFFFFFF
        epoch = self.epoch
        keyframe = True  # the run's first packet: a waiting consumer starts on it
        try:
            for payload, padding, marker, seq, ts in gop:
                consumer.forward(payload, padding, marker, seq, ts, -1, abs24, keyframe, epoch,
                                 now_ms)
                keyframe = False
        except Exception as exc:
            consumer.failed(exc)
        if age_ms > GOP_REFRESH_MS:
            self.request_keyframe()
        return True

    def receive_rtx(self, data: bytes, b0: int, b1: int, seq: int, ts: int, offset: int,
                    arrival_ms: int) -> None:
        """A retransmission on the RTX stream (RFC 4588): unwrap, then handle as media."""
        content = len(data) - offset
        if b0 & 0x20:
            content -= data[-1]  # RFC 3550 5.1: the last octet counts the padding
        if content < 2:
            # No original sequence number: a padding-only probe (libwebrtc's bandwidth
            # probing) or a truncated packet. Reading one would corrupt the sequence state.
            self.rtx_padding += 1
            return
        if self._bytes_per_ms and not self._police(len(data), arrival_ms):
            return  # retransmissions count against the publisher's allowance too
        self.retransmissions += 1
        original_seq = (data[offset] << 8) | data[offset + 1]
        stripped = data[:offset] + data[offset + 2 :]
        if len(stripped) - offset > MAX_FORWARDED_PAYLOAD:
            self.packets_oversized += 1
            return
        delta = (original_seq - self._max_seq) & 0xFFFF
        if delta < 0x8000 and delta:  # ahead of the stream: media like any other
            self._tokens += len(stripped)  # (receive() charges it again)
            self.receive(stripped, b0, b1, original_seq, ts, offset, arrival_ms)
            return
        if self._nacks.arrived(original_seq, arrival_ms, True):
            # a hole in what we received: every consumer missed it
            self.packets += 1  # a repaired hole is a packet received (RFC 3550 A.3)
            self.bytes += len(stripped)
            targets = self.consumers
            self._asked.pop(original_seq, None)
        else:
            # a packet we had and forwarded: only those who asked for it again want it
            asked = self._asked.pop(original_seq, None)
            if asked is None:
                self.rtx_unasked += 1
                return
            targets = asked[1]
        level = -1
        payload = stripped[offset:]
        gop = self._gop
        if gop is not None and targets is self.consumers \
                and ((original_seq - self._gop_seq) & 0xFFFF) < 0x8000 \
                and len(gop) < GOP_MAX_PACKETS:
            gop.append((payload, b0 & 0x20, b1 & 0x80, original_seq, ts))  # a repaired hole
        keyframe = self.waiting_for_keyframe > 0 and self._is_keyframe_start(payload)
        abs24 = (arrival_ms * 262144 // 1000) & 0xFFFFFF
        for consumer in tuple(targets):  # a copy, as in receive()
            try:
                consumer.forward(payload, b0 & 0x20, b1 & 0x80, original_seq, ts, level, abs24,
                                 keyframe, self.epoch, arrival_ms)
            except Exception as exc:
                consumer.failed(exc)

    def _police(self, size: int, arrival_ms: int) -> bool:
        """Take ``size`` bytes from the token bucket: False (counted) when it lacks them."""
        tokens = self._tokens + (arrival_ms - self._bucket_ms) * self._bytes_per_ms
        self._bucket_ms = arrival_ms
        tokens = min(tokens, self._bucket_size)
        if tokens < size:
            self._tokens = tokens
            self.packets_policed += 1
            return False
        self._tokens = tokens - size
        return True

    def _read_audio_level(self, data: bytes) -> int:
        value = find_extension(data, self.audio_level_id)
        if value is None:
            return -1
        self.level_sum += value[0] & 0x7F
        self.level_count += 1
        return value[0]

    def _note_missing(self, delta: int, arrival_ms: int) -> None:
        lost = [(self._max_seq + i) & 0xFFFF for i in range(1, min(delta, 64))]
        self._request_upstream(self._nacks.missing(lost, arrival_ms))

    # --- feedback towards the publisher ------------------------------------------------------

    def _request_upstream(self, sequence_numbers: list[int]) -> None:
        if self.ssrc is not None and sequence_numbers and self.codec.nack:
            self._send_rtcp(rtcp.nack(self.rtcp_ssrc, self.ssrc, sequence_numbers))

    def request_retransmission(self, sequence_numbers: list[int], consumer: Listener) -> None:
        """``consumer`` asked for packets its cache no longer has: ask the publisher, once for
        all the consumers that ask within a retry interval, and send the answer to them only.
        Holes still pending upstream are already being asked for, for everyone."""
        if self.ssrc is None or not self.codec.nack:
            return
        asked = self._asked
        pending = self._nacks.pending
        now_ms = current_ms()
        retry_ms = self._nacks.retry_ms
        upstream = []
        for seq in sequence_numbers:
            if seq in pending:
                continue
            entry = asked.get(seq)
            if entry is None or now_ms - entry[0] >= retry_ms:
                waiting = entry[1] if entry is not None else []
                asked[seq] = (now_ms, waiting)
                upstream.append(seq)
            else:
                waiting = entry[1]
            if consumer not in waiting:
                waiting.append(consumer)
        while len(asked) > MAX_ASKED:
            del asked[next(iter(asked))]
        self._request_upstream(upstream)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per keyframe_interval: a request
        inside the interval is deferred to its end rather than lost."""
        if self.kind != "video" or self.closed:
            return
        wait = self._last_keyframe_request + self._keyframe_interval - self._now()
        if wait <= 0:
            self._send_keyframe_request()
        elif self._keyframe_timer is None:
            self._keyframe_timer = self._call_later(wait, self._send_keyframe_request)

    def _send_keyframe_request(self) -> None:
        self._keyframe_timer = None
        if self.closed or self.ssrc is None:
            return
        self._last_keyframe_request = self._now()
        self._send_rtcp(rtcp.pli(self.rtcp_ssrc, self.ssrc))

    def request_join_keyframe(self) -> None:
        """Ask for a keyframe for a consumer that starts (or resumes) waiting for one: as soon as
        the spacing since the last request allows, and again every retry period while anyone
        waits. Joiners meanwhile share the pending request."""
        if self.kind != "video" or self.closed:
            return
        now = self._now()
        due = max(now, self._last_keyframe_request + self._join_spacing)
        if self._join_timer is not None:
            if self._join_due <= due:
                return  # the pending request (or retry) comes soon enough
            self._join_timer.cancel()  # a retry further off than this joiner should wait
            self._join_timer = None
        if due <= now:
            self._send_join_request()
        else:
            self._join_due = due
            self._join_timer = self._call_later(due - now, self._send_join_request)

    def _send_join_request(self) -> None:
        self._join_timer = None
        if self.closed or self.waiting_for_keyframe <= 0:
            return  # a keyframe came and started every waiting consumer
        self._send_keyframe_request()
        self._join_due = self._now() + JOIN_KEYFRAME_RETRY
        self._join_timer = self._call_later(JOIN_KEYFRAME_RETRY, self._send_join_request)

    def _now(self) -> float:
        return self._scheduler.time() if self._scheduler else time.monotonic()

    def _call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return (self._scheduler or asyncio.get_running_loop()).call_later(delay, callback)

    def handle_sender_report(self, ntp: int, rtp_ts: int) -> None:
        self.sr_ntp = ntp
        self.sr_rtp = rtp_ts
        self.sr_received_at = time.time()

    def send_feedback(self, now: float | None = None,
                      compounds: rtcp.Compounds | None = None) -> None:
        """Periodic RTCP to the publisher: a receiver report, and REMB with target_bitrate().
        ``now``: time.time(), when the caller already read it; ``compounds``: joined to the
        connection's compound there (rtcp.join) instead of sent."""
        if self.ssrc is None or self._base_seq < 0:
            return
        extended = self._cycles + self._max_seq
        expected = extended - self._base_seq + 1
        received = self.packets - self._received_base
        lost = max(0, expected - received)
        expected_interval = expected - self._expected_prior
        received_interval = received - self._received_prior
        self._expected_prior = expected
        self._received_prior = received
        lost_interval = expected_interval - received_interval
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 and lost_interval > 0 else 0
        lsr = (self.sr_ntp >> 16) & 0xFFFFFFFF
        if now is None:
            now = time.time()
        dlsr = int((now - self.sr_received_at) * 65536) if self.sr_ntp else 0
        packet = rtcp.receiver_report(
            self.rtcp_ssrc, self.ssrc, min(fraction, 255), lost, extended,
            int(self._jitter), lsr, dlsr,
        )
        if self.kind == "video" and self.codec.remb:
            packet += rtcp.remb(self.rtcp_ssrc, self.target_bitrate(), [self.ssrc])
        if compounds is None:
            self._send_rtcp(packet)
        else:
            rtcp.join(compounds, self._send_rtcp, packet)

    def target_bitrate(self) -> int:
        """What the publisher is asked for: the subscribers that can take the stream decide,
        not the weakest (sfu/congestion.py). The floor: a fresh subscriber's estimate starts
        near what it receives and ramps up, and the publisher must be able to climb back."""
        return congestion.remb_target(
            [c.remb_bitrate for c in self.consumers if not c.gate.paused], self.max_bitrate,
            MIN_REMB, self._congestion)

    # --- statistics --------------------------------------------------------------------------

    @property
    def packets_lost(self) -> int:
        if self._base_seq < 0:
            return self._lost_before
        received = self.packets - self._received_base
        return self._lost_before + max(0, self._cycles + self._max_seq - self._base_seq + 1
                                       - received)

    @property
    def jitter_seconds(self) -> float:
        return self._jitter / self.codec.clock_rate


def _drop(data: bytes) -> bool:
    return False
