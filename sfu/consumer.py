"""A consumer: one producer's track as one subscriber receives it.

It owns the outgoing stream's identity (SSRC, payload type, header extension ids, sequence and
timestamp spaces), so it rewrites every packet, keeps the last second of them for NACKs (answered
with RTX where the subscriber negotiated it), starts on a keyframe, and writes the sender reports.
``forward`` is the per-packet, per-subscriber hot path.
"""

from __future__ import annotations

import logging
import random
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from sfu import fastsend, rtcp
from sfu.congestion import DEFAULT, VideoGate
from sfu.forwarder import ExtensionLayout, current_ms, current_ntp, payload_offset
from sfu.options import CongestionOptions
from sfu.producer import Producer

logger = logging.getLogger(__name__)

# Packets kept per subscriber stream for retransmission: the last CACHE_MS of them, as long as that
# fits in MAX_CACHE (~2 s of 4 Mbps video). The ring starts at MIN_CACHE slots (~1.3 s of Opus or of
# 500 kbps VP8) and is resized as it turns, by the media time (RTP timestamps, which a busy event
# loop's late reads do not bunch up) a turn spanned: a fixed ring sized for the fastest stream kept
# ~10 s of a call's video (600 KiB per subscriber) and ~10 s of its audio.
CACHE_MS = 1000  # as long as the SFU itself would wait for a retransmission (sfu/nack.py)
MIN_CACHE = 64
MAX_CACHE = 1024
RING_STEP = 16  # sizes are multiples of this: a power of two would keep up to twice what is needed
# A subscriber that negotiated no NACK for the stream (Opus as browsers and aiortc offer it) never
# asks for a retransmission: its ring only lends the C fan-out the bytearrays it rewrites each
# packet into, and stays this size (a turn, when _turned is called, every NO_NACK_CACHE packets).
NO_NACK_CACHE = RING_STEP
# A subscriber's NACKs are answered at most once per round trip per packet (a NACK repeated
# sooner is a duplicate: the answer is still on its way), and within a budget of retransmitted
# packets per second, so that a subscriber cannot turn the SFU into an amplifier.
MIN_RTX_GAP_MS = 10
RTX_PER_SECOND = 500
RTX_BURST = 128
# libwebrtc ignores a keyframe request within 300 ms of the last one; so do we, per subscriber.
MIN_PLI_SPACING_MS = 300
_SEQ = struct.Struct("!H")
# _resize's move in C when sfu/_fastsend.c is built (None: the Python loop, the reference)
_ring_move = fastsend.native_ring_move


def _ring_size(packets: float) -> int:
    """The smallest multiple of RING_STEP from MIN_CACHE to MAX_CACHE that holds ``packets``."""
    return max(MIN_CACHE, min(MAX_CACHE, -int(-packets // RING_STEP) * RING_STEP))


# With sfu/_fastsend.c built, the attributes the fan-out reads and writes per packet (paused,
# _waiting, _nack, _epoch, the offsets, _last_seq/_ts/_ms, packets, bytes, _size, _cache,
# fast_sender, _fast_header) are C members of this base class: every assignment here is what the C
# fan-out reads next, and what it counts is what these read, with no per-packet Python int or dict.
if TYPE_CHECKING or fastsend.ConsumerBase is None:
    _Base = object
else:
    _Base = fastsend.ConsumerBase


class Consumer(_Base):
    # No per-instance __dict__: 56 attributes are past what a key-sharing dict holds (30), so
    # each Consumer had a dict of its own, ~1.5 KiB. Those the C base already has are left out
    # (a slot of the same name would hide its member from the C fan-out).
    __slots__ = tuple(name for name in (
        "id", "producer", "participant_id", "kind", "ssrc", "rtx_ssrc", "closed", "on_close",
        "_send_rtp", "_send_rtcp", "fast_sender", "_cache", "_size", "_nack", "_turn_ts",
        "_turn_seq", "payload_type", "rtx_payload_type", "_pack", "_ext_prefix", "_ext_tail",
        "_ext_words", "_dynamic", "_fast_header", "_epoch", "_seq_offset", "_ts_offset",
        "_last_seq", "_last_ts", "_last_ms", "_rtx_seq", "_clock_per_ms", "paused", "gate",
        "_waiting", "packets", "bytes", "packets_dropped", "send_errors", "retransmitted", "nacks",
        "nacks_ignored", "plis", "plis_ignored", "_pli_ms", "_rtx_ms", "_rtx_tokens",
        "_rtx_refill_ms", "remb_bitrate", "bitrate", "bytes_at_report", "fraction_lost",
        "packets_lost", "jitter", "rtt", "_sr_sent",
    ) if not hasattr(_Base, name))

    def __init__(
        self,
        consumer_id: str,
        producer: Producer[Consumer],
        participant_id: str,
        *,
        ssrc: int,
        rtx_ssrc: int,
        send_rtp: Callable[[bytes], bool],
        send_rtcp: Callable[[bytes], bool],
        congestion: CongestionOptions = DEFAULT,
    ) -> None:
        self.id = consumer_id
        self.producer = producer
        self.participant_id = participant_id
        self.kind = producer.kind
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.closed = False
        self.on_close: list[Callable[[Consumer, str], None]] = []
        self._send_rtp = send_rtp
        self._send_rtcp = send_rtcp
        # the sfu.aiortc_hooks.RawSender behind send_rtp, for the C fan-out (sfu/fastsend.py),
        # which does what forward() and the sender do here, reading and writing these attributes
        self.fast_sender: object | None = None
        # the NACK ring: the C fan-out rewrites its own bytearrays in place
        self._cache: list[bytes | bytearray | None] = [None] * MIN_CACHE
        self._size = MIN_CACHE
        self._nack = True  # the subscriber negotiated NACK (configure()): the ring holds CACHE_MS
        # the packet that last took slot 0: its RTP timestamp (-1: none yet) and sequence number
        self._turn_ts = -1
        self._turn_seq = 0

        # negotiated with the subscriber (set by configure(); until then nothing is sent)
        self.payload_type = -1
        self.rtx_payload_type: int | None = None
        self._pack = struct.Struct("!BBHII").pack
        self._ext_prefix = 0
        self._ext_tail = b""
        self._ext_words = 0
        self._dynamic = ""
        # the same, for the C fan-out (sfu/fastsend.py): (our header with sequence number,
        # timestamp and dynamic word zero, the dynamic word's kind: 0 none, 1 abs-send-time,
        # 2 audio level, 3 a static block only, its prefix)
        self._fast_header: tuple[bytes, int, int] | None = None

        # outgoing sequence/timestamp spaces, re-based at each new producer epoch
        self._epoch = -1
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_seq = random.getrandbits(15)
        self._last_ts = random.getrandbits(32)
        self._last_ms = 0
        self._rtx_seq = random.getrandbits(15)
        self._clock_per_ms = producer.codec.clock_rate // 1000
        self.paused = True  # until configured and the subscriber's transport is connected
        self.gate = VideoGate(congestion)  # paused for congestion (sfu/congestion.py): for video only
        self._waiting = False

        # statistics and feedback from the subscriber
        self.packets = 0
        self.bytes = 0
        self.packets_dropped = 0  # not sent: the subscriber's socket full, closed or not keyed
        self.send_errors = 0  # forward() raised: counted here, logged once
        self.retransmitted = 0
        self.nacks = 0
        self.nacks_ignored = 0  # asked again within a round trip, or over the budget
        self.plis = 0
        self.plis_ignored = 0  # within MIN_PLI_SPACING_MS of the last one passed on
        self._pli_ms = 0
        # per cache slot: (when it was last resent << 16) | its sequence number, so that a new
        # packet in the slot needs no reset on the per-packet path
        self._rtx_ms: list[int] = [0] * MIN_CACHE
        self._rtx_tokens = float(RTX_BURST)
        self._rtx_refill_ms = 0
        self.remb_bitrate = 0
        self.bitrate = 0  # bps over the last second, set by the router
        self.bytes_at_report = -1  # self.bytes at the router's last report (-1: none yet)
        self.fraction_lost = 0
        self.packets_lost = 0
        self.jitter = 0
        self.rtt: float | None = None
        self._sr_sent: dict[int, float] = {}  # middle 32 bits of NTP -> when

    def configure(self, payload_type: int, rtx_payload_type: int | None,
                  extensions: ExtensionLayout, nack: bool = True) -> None:
        """``nack``: whether the subscriber negotiated NACK feedback for this stream; without
        it the ring keeps NO_NACK_CACHE slots instead of CACHE_MS of packets."""
        self.payload_type = payload_type
        self._nack = nack
        if not nack and len(self._cache) != NO_NACK_CACHE:
            self._resize(NO_NACK_CACHE, self._last_seq)
        self.rtx_payload_type = rtx_payload_type
        fmt, prefix, tail, words = extensions.header()
        self._pack = fmt.pack
        self._ext_prefix = prefix
        self._ext_tail = tail
        self._ext_words = words
        self._dynamic = (
            "" if not words else "abs" if extensions.abs_send_time_id else
            "level" if extensions.audio_level_id else "none"
        )
        kind = ("", "abs", "level", "none").index(self._dynamic)
        if kind == 0:
            template = fmt.pack(0x80, payload_type, 0, 0, self.ssrc)
        elif kind == 3:
            template = fmt.pack(0x90, payload_type, 0, 0, self.ssrc, 0xBEDE, words, tail)
        else:
            template = fmt.pack(0x90, payload_type, 0, 0, self.ssrc, 0xBEDE, words, 0, tail)
        self._fast_header = (template, kind, prefix)

    def continue_from(self, previous: Consumer) -> None:
        """Send on from where ``previous`` stopped: the same SSRCs on a reused m-line (a WHEP
        m-line that gets a new track) must not go back in sequence, or SRTP refuses to protect
        every packet as a replay (srtp_protect error 10, replay_old)."""
        self._last_seq = previous._last_seq
        self._last_ts = previous._last_ts
        self._last_ms = previous._last_ms
        self._rtx_seq = previous._rtx_seq

    def resume(self) -> None:
        """Start (or restart) sending: video from the producer's cached run since its newest
        keyframe when it has one, else from the next keyframe, with a fresh one asked for."""
        if self.closed or self.payload_type < 0 or self.gate.paused:
            return
        if self.paused or self._waiting:
            self.paused = False
            self._epoch = -1  # re-base: whatever was skipped is not a gap to NACK
            if self.kind == "video" and self.producer.replay_gop(self):
                return
            if self.kind == "video" and not self._waiting:
                self._waiting = True
                self.producer.waiting_for_keyframe += 1
            self.producer.request_join_keyframe()

    def restart(self) -> None:
        """The producer's source changed (a publisher's reconnect): a new encoder's delta frames
        mean nothing to the subscriber's decoder, so wait for its first keyframe."""
        if not self.paused and not self._waiting and self.kind == "video":
            self._waiting = True
            self.producer.waiting_for_keyframe += 1

    def suspend(self) -> None:
        """Stop this subscriber's video for congestion (the gate says when to resume)."""
        self.gate.paused = True
        self.pause()

    def unsuspend(self) -> None:
        """Congestion is over: send again, starting on a keyframe."""
        self.gate.paused = False
        self.resume()

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.producer.waiting_for_keyframe -= 1

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_waiting()
        self.paused = True
        self.producer.remove_consumer(self)
        self._cache = []
        for callback in self.on_close:
            callback(self, reason)
        self.on_close.clear()

    # --- the per-packet path -----------------------------------------------------------------

    def forward(self, payload: bytes, padding: int, marker: int, seq: int, ts: int, level: int,
                abs24: int, keyframe: bool, epoch: int, arrival_ms: int) -> None:
        if self.paused:
            return
        if self._waiting:
            if not keyframe:
                return
            self._stop_waiting()
        if epoch != self._epoch:
            self._rebase(seq, ts, epoch, arrival_ms)
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (ts + self._ts_offset) & 0xFFFFFFFF
        b0 = 0x80 | padding
        b1 = marker | self.payload_type
        dynamic = self._dynamic
        if dynamic == "abs":
            header = self._pack(b0 | 0x10, b1, out_seq, out_ts, self.ssrc, 0xBEDE,
                                self._ext_words, self._ext_prefix | abs24, self._ext_tail)
        elif dynamic == "level":
            header = self._pack(b0 | 0x10, b1, out_seq, out_ts, self.ssrc, 0xBEDE,
                                self._ext_words, self._ext_prefix | level if level >= 0 else 0,
                                self._ext_tail)
        elif dynamic == "none":
            header = self._pack(b0 | 0x10, b1, out_seq, out_ts, self.ssrc, 0xBEDE,
                                self._ext_words, self._ext_tail)
        else:
            header = self._pack(b0, b1, out_seq, out_ts, self.ssrc)
        packet = header + payload
        if ((out_seq - self._last_seq) & 0xFFFF) < 0x8000:
            if not out_seq % self._size:
                self._turned(out_seq, out_ts)
            self._last_seq = out_seq
            self._last_ts = out_ts
            self._last_ms = arrival_ms
        self._cache[out_seq % self._size] = packet
        if self._send_rtp(packet):
            self.packets += 1
            self.bytes += len(packet)
        else:
            self.packets_dropped += 1

    def _turned(self, out_seq: int, out_ts: int) -> None:
        """The ring came round (once every len(ring) packets): resize it to hold CACHE_MS at
        the rate of the turn just ended, in steps of RING_STEP (a ring that a keyframe's burst grew
        goes back at the next turn at the usual rate; a steady rate keeps its size)."""
        if not self._nack:
            return  # nothing is ever resent: the ring keeps NO_NACK_CACHE slots
        started, self._turn_ts = self._turn_ts, out_ts
        packets, self._turn_seq = (out_seq - self._turn_seq) & 0xFFFF, out_seq
        elapsed = (out_ts - started) & 0xFFFFFFFF
        if started < 0 or elapsed >= 0x80000000:
            return  # the first turn, or timestamps going back: nothing to measure
        size = len(self._cache)
        # packets in CACHE_MS at this turn's rate (a turn right after a resize or after a lost
        # packet in slot 0 is not len(ring) packets long)
        needed = packets * CACHE_MS * self._clock_per_ms / max(elapsed, 1)
        wanted = _ring_size(needed)
        if wanted != size:
            self._resize(wanted, out_seq)

    def _resize(self, size: int, out_seq: int) -> None:
        """Move the cached packets (and when each was last resent) to a ring of ``size`` slots;
        where two land on one slot, the newer stays."""
        if _ring_move is not None:
            self._cache, self._rtx_ms = _ring_move(self._cache, self._rtx_ms, size, out_seq)
            self._size = size
            return
        cache: list[bytes | bytearray | None] = [None] * size
        resent = [0] * size
        ages = [0x10000] * size
        for packet, last in zip(self._cache, self._rtx_ms):
            if packet is None:
                continue
            seq = _SEQ.unpack_from(packet, 2)[0]
            slot = seq % size
            age = (out_seq - seq) & 0xFFFF
            if age < ages[slot]:
                ages[slot] = age
                cache[slot] = packet
                resent[slot] = last if last & 0xFFFF == seq else 0
        self._cache = cache
        self._rtx_ms = resent
        self._size = size

    def failed(self, exc: Exception) -> None:
        """Sending to this subscriber raised: the producer's fan-out carries on with the others.
        Counted, and logged once per consumer rather than once per packet."""
        self.send_errors += 1
        if self.send_errors == 1:
            logger.warning("consumer %s: sending failed (counted in send_errors from now on)",
                           self.id, exc_info=exc)

    def _rebase(self, seq: int, ts: int, epoch: int, arrival_ms: int) -> None:
        """Continue our sequence and timestamp spaces from where they stopped, whatever the
        publisher's (new) numbering: one step on in sequence, and as many clock ticks as the
        wall clock moved (at least one), so a subscriber sees one continuous stream."""
        elapsed = (arrival_ms - self._last_ms) * self._clock_per_ms if self._last_ms else 0
        self._seq_offset = (self._last_seq + 1 - seq) & 0xFFFF
        self._ts_offset = (self._last_ts + max(elapsed, 1) - ts) & 0xFFFFFFFF
        self._epoch = epoch

    # --- RTCP from the subscriber ------------------------------------------------------------

    def retransmit(self, sequence_numbers: list[int]) -> None:
        """Answer a NACK from the cache; ask the publisher for what the cache lacks. A packet
        resent less than a round trip ago, or over the budget, is not resent."""
        self.nacks += 1
        if not self._cache:
            return
        now_ms = current_ms()
        tokens = min(float(RTX_BURST),
                     self._rtx_tokens + (now_ms - self._rtx_refill_ms) * RTX_PER_SECOND / 1000)
        self._rtx_refill_ms = now_ms
        gap = max(MIN_RTX_GAP_MS, int(self.rtt * 1000) if self.rtt else 0)
        resent = self._rtx_ms
        upstream = []
        cache = self._cache
        size = len(cache)
        for seq in sequence_numbers:
            slot = seq % size
            packet = cache[slot]
            if packet is None or _SEQ.unpack_from(packet, 2)[0] != seq:
                if self._epoch == self.producer.epoch:
                    upstream.append((seq - self._seq_offset) & 0xFFFF)
                continue
            last = resent[slot]
            if (last & 0xFFFF == seq and now_ms - (last >> 16) < gap) or tokens < 1:
                self.nacks_ignored += 1
                continue
            tokens -= 1
            resent[slot] = (now_ms << 16) | seq
            data = bytes(packet)  # the C fan-out rewrites its ring's bytearrays in place
            if self.rtx_payload_type is not None:
                data = self._wrap_rtx(data)
            try:
                if self._send_rtp(data):
                    self.retransmitted += 1
            except Exception as exc:
                self.failed(exc)
                break
        self._rtx_tokens = tokens
        if upstream:
            self.producer.request_retransmission(upstream, self)

    def _wrap_rtx(self, packet: bytes) -> bytes:
        offset = payload_offset(packet)
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        header = bytearray(packet[:offset])
        header[1] = (header[1] & 0x80) | (self.rtx_payload_type or 0)
        struct.pack_into("!H", header, 2, self._rtx_seq)
        struct.pack_into("!I", header, 8, self.rtx_ssrc)
        return bytes(header) + packet[2:4] + packet[offset:]

    def keyframe_requested(self) -> None:
        """A PLI or FIR from the subscriber: passed on (throttled again, per publisher) unless it
        repeats one passed on less than MIN_PLI_SPACING_MS ago."""
        self.plis += 1
        now_ms = current_ms()
        if now_ms - self._pli_ms < MIN_PLI_SPACING_MS:
            self.plis_ignored += 1
            return
        self._pli_ms = now_ms
        self.producer.request_keyframe()

    def handle_report(self, fraction_lost: int, packets_lost: int, jitter: int, lsr: int,
                      dlsr: int) -> None:
        self.fraction_lost = fraction_lost
        self.packets_lost = packets_lost
        self.jitter = jitter
        sent = self._sr_sent.get(lsr)
        if sent is not None and dlsr:
            self.rtt = max(0.0, current_ntp() / 2**32 - sent - dlsr / 65536)

    def send_sender_report(self, ntp: int | None = None, now_ms: int | None = None,
                           compounds: rtcp.Compounds | None = None) -> None:
        """An SR for our outgoing stream (once it sent something), on ``report_clock``
        (``ntp`` and ``now_ms``: current_ntp() and current_ms(), when the caller read them);
        ``compounds``: joined to the connection's compound there (rtcp.join) instead of sent."""
        if self.packets == 0 or self.closed:
            return
        ntp, rtp_ts = self.report_clock(ntp, now_ms)
        middle = (ntp >> 16) & 0xFFFFFFFF
        self._sr_sent = {middle: ntp / 2**32}
        packet = rtcp.sender_report(self.ssrc, ntp, rtp_ts, self.packets, self.bytes)
        if compounds is None:
            self._send_rtcp(packet)
        else:
            rtcp.join(compounds, self._send_rtcp, packet)

    def outgoing_timestamp(self, publisher_ts: int) -> int:
        """A timestamp of the publisher's as this stream carries it (since the last re-base)."""
        return (publisher_ts + self._ts_offset) & 0xFFFFFFFF

    def report_clock(self, ntp: int | None = None, now_ms: int | None = None) -> tuple[int, int]:
        """(NTP time now, our stream's RTP timestamp now): through the publisher's own NTP↔RTP
        mapping when it sent one (so audio and video of one publisher stay in sync at the
        subscriber), else extrapolated from the last packet. ``ntp``/``now_ms``: the clock
        already read (current_ntp(), current_ms()) by the caller."""
        if ntp is None:
            ntp = current_ntp()
        now = ntp / 2**32
        producer = self.producer
        if producer.sr_ntp and self._epoch == producer.epoch:
            rtp_ts = producer.sr_rtp + self._ts_offset + int(
                (now - producer.sr_ntp / 2**32) * producer.codec.clock_rate
            )
        else:
            rtp_ts = self._last_ts + int(
                ((current_ms() if now_ms is None else now_ms) - self._last_ms)
                * self._clock_per_ms
            )
        return ntp, rtp_ts & 0xFFFFFFFF
