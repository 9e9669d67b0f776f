"""RTCP per hop: packet builders, keyframe-request throttling, REMB, NACK upstream, policing."""

from __future__ import annotations

import asyncio
import collections
import random
import struct
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc.rtp import (
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)

from sfu import congestion, rtcp
from sfu.consumer import CACHE_MS, RTX_BURST, Consumer
from sfu.forwarder import ExtensionLayout, payload_offset
from sfu.producer import Codec, Producer
from sfu.transport import Transport

VP8 = Codec("video/VP8", 90000, 97, nack=True, pli=True, remb=True)


def _is_pli(data: bytes) -> bool:
    (packet,) = RtcpPacket.parse(data)
    return isinstance(packet, RtcpPsfbPacket) and packet.fmt == rtcp.FMT_PLI


def _producer(max_bitrate: int = 0, interval: float = 1.0) -> tuple[Producer[Consumer], list[bytes]]:
    producer: Producer[Consumer] = Producer("p", "alice", "video", VP8, max_bitrate=max_bitrate,
                        keyframe_interval=interval)
    upstream: list[bytes] = []
    producer.attach_source(1234, None, 0, lambda d: upstream.append(d) or True)
    return producer, upstream


def _receive(producer: Producer, seq: int, arrival_ms: int, size: int = 100,
             ts: int | None = None) -> None:
    ts = seq * 3000 if ts is None else ts
    data = struct.pack("!BBHII", 0x80, 97, seq, ts, 1234) + b"\x10\x01" + bytes(size)
    producer.receive(data, 0x80, 97, seq, ts, payload_offset(data), arrival_ms)


def test_nack_packs_runs_and_wraps_around() -> None:
    (packet,) = RtcpPacket.parse(rtcp.nack(1, 2, [65534, 65535, 0, 1, 40]))
    assert isinstance(packet, RtcpRtpfbPacket) and packet.media_ssrc == 2
    assert [s & 0xFFFF for s in packet.lost] == [65534, 65535, 0, 1, 40]


def test_builders_parse_back() -> None:
    sr, rr, pli, remb = RtcpPacket.parse(
        rtcp.sender_report(7, 1 << 40, 1234, 10, 1000)
        + rtcp.receiver_report(7, 9, 25, 3, 70000, 12, 5, 6)
        + rtcp.pli(7, 9)
        + rtcp.remb(7, 300_000, [9])
    )
    assert isinstance(sr, RtcpSrPacket) and sr.sender_info.rtp_timestamp == 1234
    assert isinstance(rr, RtcpRrPacket) and rr.reports[0].packets_lost == 3
    assert rr.reports[0].highest_sequence == 70000 and rr.reports[0].fraction_lost == 25
    assert isinstance(pli, RtcpPsfbPacket) and pli.fmt == rtcp.FMT_PLI
    assert unpack_remb_fci(remb.fci)[0] == 300_000  # type: ignore[union-attr]
    assert rtcp.walk(b"\x80\xc9garbage") == []


async def test_keyframe_requests_are_throttled_but_never_lost() -> None:
    producer, upstream = _producer(interval=0.3)
    for _ in range(5):
        producer.request_keyframe()
    assert len(upstream) == 1  # the first goes at once, the rest wait for the interval
    await asyncio.sleep(0.4)
    assert len(upstream) == 2  # ... and then go as one
    assert all(_is_pli(p) for p in upstream)
    producer.close()


class FakeScheduler:
    """A clock that moves only when told to, with the timers it owes."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeScheduler:
        self.timers.append((self.now + delay, callback))
        return self

    def cancel(self) -> None:
        self.timers.clear()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback in due:
            callback()


def test_joiners_share_a_keyframe_without_waiting_out_the_pli_throttle() -> None:
    clock = FakeScheduler()
    producer: Producer[Consumer] = Producer("p", "alice", "video", VP8, max_bitrate=0, keyframe_interval=1.0,
                        scheduler=clock)
    upstream: list[bytes] = []
    producer.attach_source(1234, None, 0, lambda d: upstream.append(d) or True)

    producer.request_keyframe()  # a subscriber's PLI: the 1 s throttle starts
    assert len(upstream) == 1
    _receive(producer, 1, 0)
    clock.advance(0.2)

    # A joiner waits only for libwebrtc's 300 ms spacing, not the 1 s throttle ...
    producer.waiting_for_keyframe = 1
    producer.request_join_keyframe()
    assert len(upstream) == 1 and len(clock.timers) == 1
    for _ in range(50):  # ... and a join storm shares that one request
        clock.advance(0.001)
        producer.waiting_for_keyframe += 1
        producer.request_join_keyframe()
    assert len(upstream) == 1 and len(clock.timers) == 1
    clock.advance(0.1)
    assert len(upstream) == 2

    # The keyframe starts everyone waiting: the retry finds nobody and stops.
    _receive_keyframe(producer, 2, 60)
    producer.waiting_for_keyframe = 0  # (the consumers count themselves out as they start)
    clock.advance(0.5)
    assert len(upstream) == 2 and not clock.timers

    # A joiner whose request the publisher drops (or whose keyframe is lost) is asked for again.
    producer.waiting_for_keyframe = 1
    producer.request_join_keyframe()
    assert len(upstream) == 3
    clock.advance(0.5)
    assert len(upstream) == 4
    # A new joiner does not wait out the retry: its request comes after the 300 ms spacing.
    clock.advance(0.3)
    producer.waiting_for_keyframe = 2
    producer.request_join_keyframe()
    assert len(upstream) == 5 and len(clock.timers) == 1
    clock.advance(0.5)
    assert len(upstream) == 6
    assert all(_is_pli(p) for p in upstream)
    producer.waiting_for_keyframe = 0
    clock.advance(0.5)
    assert not clock.timers

    # subscribers' PLIs stay at one per second, join requests included
    producer.request_keyframe()
    assert len(upstream) == 6 and len(clock.timers) == 1
    clock.advance(0.5)
    assert len(upstream) == 7
    producer.close()


def _receive_keyframe(producer: Producer, seq: int, arrival_ms: int) -> None:
    data = struct.pack("!BBHII", 0x80, 97, seq, seq * 3000, 1234) + b"\x10\x00" + bytes(100)
    producer.receive(data, 0x80, 97, seq, seq * 3000, payload_offset(data), arrival_ms)


def test_gap_is_nacked_upstream_and_counted() -> None:
    producer, upstream = _producer()
    _receive(producer, 10, 0)
    _receive(producer, 14, 10)
    (nack,) = RtcpPacket.parse(upstream[-1])
    assert isinstance(nack, RtcpRtpfbPacket) and nack.lost == [11, 12, 13]
    assert producer.packets_lost == 3
    _receive(producer, 12, 20)  # a late packet fills part of the gap
    assert producer.packets_lost == 2


def test_subscriber_nack_missing_from_cache_goes_upstream() -> None:
    producer, upstream = _producer()
    consumer = Consumer("c", producer, "bob", ssrc=1, rtx_ssrc=2, send_rtp=lambda d: True,
                        send_rtcp=lambda d: True)
    consumer.configure(100, None, ExtensionLayout())
    producer.add_consumer(consumer)
    consumer.paused = False
    _receive(producer, 500, 0)
    upstream.clear()
    first = consumer._last_seq
    consumer.retransmit([(first + 1) & 0xFFFF])  # never sent to this subscriber
    (nack,) = RtcpPacket.parse(upstream[0])
    assert isinstance(nack, RtcpRtpfbPacket) and nack.lost == [501]


def test_remb_follows_the_subscribers_that_can_take_the_stream_capped() -> None:
    producer, upstream = _producer(max_bitrate=1_000_000)
    for estimate in (800_000, 600_000, 0):  # 0: no estimate yet
        consumer = Consumer("c", producer, "x", ssrc=1, rtx_ssrc=2, send_rtp=lambda d: True,
                            send_rtcp=lambda d: True)
        consumer.remb_bitrate = estimate
        producer.add_consumer(consumer)
    assert producer.target_bitrate() == 600_000
    _receive(producer, 1, 0)
    producer.send_feedback()
    rr, remb = RtcpPacket.parse(upstream[-1])
    assert isinstance(rr, RtcpRrPacket) and rr.reports[0].ssrc == 1234
    assert unpack_remb_fci(remb.fci) == (600_000, [1234])  # type: ignore[union-attr]
    for consumer in producer.consumers:
        consumer.remb_bitrate = 5_000_000
    assert producer.target_bitrate() == 1_000_000  # capped by the allowed bitrate
    producer.consumers[0].remb_bitrate = 20_000  # one who cannot take video: left out
    assert producer.target_bitrate() == 1_000_000
    for consumer in producer.consumers:
        consumer.remb_bitrate = 20_000
    assert producer.target_bitrate() == 150_000  # floored


def test_publisher_above_its_allowed_bitrate_is_policed() -> None:
    producer, _ = _producer(max_bitrate=800_000)  # policed at 1.2 Mbps = 150 bytes/ms
    for i in range(2000):  # 1200-byte packets every ms: 9.6 Mbps
        _receive(producer, i, i, size=1200)
    assert producer.packets_policed > 1500
    forwarded_bits = producer.bytes * 8
    assert forwarded_bits <= 1.2e6 * 2 + 1.2e6 * 1.0 + 20000  # 2 s at the limit + one bucket


def _receive_from(producer: Producer, ssrc: int, seq: int, arrival_ms: int,
                  payload: bytes = b"\x10\x01") -> None:
    data = struct.pack("!BBHII", 0x80, 97, seq, seq * 3000, ssrc) + payload + bytes(100)
    producer.receive(data, 0x80, 97, seq, seq * 3000, payload_offset(data), arrival_ms)


def test_a_new_source_starts_fresh_receive_statistics_and_asks_for_a_keyframe() -> None:
    clock = FakeScheduler()
    producer: Producer[Consumer] = Producer("p", "alice", "video", VP8, max_bitrate=0, keyframe_interval=1.0,
                        scheduler=clock)
    upstream: list[bytes] = []
    producer.attach_source(1234, None, 0, lambda d: upstream.append(d) or True)
    consumer = Consumer("c", producer, "bob", ssrc=1, rtx_ssrc=2, send_rtp=lambda d: True,
                        send_rtcp=lambda d: True)
    consumer.configure(100, None, ExtensionLayout())
    producer.add_consumer(consumer)
    consumer.paused = False
    # the old source wrapped its sequence numbers once, and sent an SR
    for i, seq in enumerate(range(65000, 65536 + 100)):
        _receive_from(producer, 1234, seq & 0xFFFF, i)
    producer.handle_sender_report(5 << 32, 12345)
    producer.send_feedback()
    upstream.clear()

    # the publisher reconnects (or switches SSRC): new numbering, 20% loss
    producer.attach_source(0xC0FFEE, None, 0, lambda d: upstream.append(d) or True)
    (pli,) = (RtcpPacket.parse(p)[0] for p in upstream)  # the running subscriber needs one
    assert isinstance(pli, RtcpPsfbPacket) and pli.fmt == rtcp.FMT_PLI
    assert pli.media_ssrc == 0xC0FFEE
    upstream.clear()
    _receive_from(producer, 0xC0FFEE, 1000, 1000, b"\x10\x00")  # its keyframe
    for seq in range(1001, 1100):
        if seq % 5:
            _receive_from(producer, 0xC0FFEE, seq, 1000 + seq)
    producer.send_feedback()
    rr, _ = RtcpPacket.parse(upstream[-1])
    assert isinstance(rr, RtcpRrPacket)
    (report,) = rr.reports
    assert report.ssrc == 0xC0FFEE
    assert report.highest_sequence == 1099  # not the old source's cycles
    assert report.packets_lost == 19  # the new source's losses are seen
    assert report.fraction_lost == 19 * 256 // 100
    assert report.lsr == 0 and report.dlsr == 0  # no SR from this source yet
    assert producer.sr_ntp == 0  # subscribers' SRs do not use the old NTP/RTP mapping
    assert producer.packets_lost == 19  # stats: what every source lost
    producer.close()


def _rtx_of(seq: int, rtx_seq: int = 1, size: int = 100) -> tuple[bytes, int, int, int, int, int]:
    data = struct.pack("!BBHII", 0x80, 98, rtx_seq, seq * 3000, 4321) \
        + struct.pack("!H", seq) + b"\x10\x01" + bytes(size)
    return data, 0x80, 98, rtx_seq, seq * 3000, 12


def _nacked(upstream: list[bytes]) -> list[list[int]]:
    return [[s & 0xFFFF for s in p.lost] for d in upstream for p in RtcpPacket.parse(d)
            if isinstance(p, RtcpRtpfbPacket)]


def _sink(producer: Producer, name: str) -> tuple[Consumer, list[bytes]]:
    sent: list[bytes] = []
    consumer = Consumer(name, producer, name, ssrc=hash(name) & 0xFFFF, rtx_ssrc=2,
                        send_rtp=lambda d: sent.append(d) or True, send_rtcp=lambda d: True)
    consumer.configure(100, None, ExtensionLayout())
    producer.add_consumer(consumer)
    consumer.paused = False
    return consumer, sent


def test_retransmissions_go_only_to_the_subscribers_that_asked() -> None:
    producer, upstream = _producer()
    asker, asker_sent = _sink(producer, "asker")
    other, other_sent = _sink(producer, "other")
    for seq in range(1, 601):  # 500 a second: packet 1 is older than the subscribers' caches now
        _receive(producer, seq, 2 * seq)
    first_out = (asker._last_seq - 599) & 0xFFFF
    asker.retransmit([first_out])
    other.retransmit([(other._last_seq - 599) & 0xFFFF])  # the same packet: one upstream NACK
    assert _nacked(upstream) == [[1]]
    before = len(asker_sent), len(other_sent)
    producer.receive_rtx(*_rtx_of(1), 1300)
    assert (len(asker_sent), len(other_sent)) == (before[0] + 1, before[1] + 1)
    third, third_sent = _sink(producer, "third")
    producer.receive_rtx(*_rtx_of(1, rtx_seq=2), 1301)  # a duplicate nobody waits for
    assert third_sent == [] and producer.rtx_unasked == 1
    assert len(asker_sent) == before[0] + 1

    # a hole in what the SFU received: everyone missed it, everyone gets it
    _receive(producer, 603, 1310)
    assert _nacked(upstream)[-1] == [601, 602]
    producer.receive_rtx(*_rtx_of(601, rtx_seq=3), 1320)
    assert len(asker_sent) == before[0] + 3 and len(third_sent) == 2
    producer.close()


def _stream(producer: Producer, bitrate: int, seconds: float, first_seq: int = 1, start_ms: int = 0,
            size: int = 1200) -> tuple[int, int]:
    """Feed ``seconds`` of ``size``-byte packets at ``bitrate``, stamped (90 kHz) as they arrive;
    returns (next seq, next ms)."""
    interval = size * 8 * 1000 / bitrate
    n = int(seconds * 1000 / interval)
    for i in range(n):
        ms = start_ms + int(i * interval)
        _receive(producer, first_seq + i, ms, size=size - 14, ts=ms * 90)
    return first_seq + n, start_ms + int(n * interval)


def _resend(consumer: Consumer, sent: list[bytes], upstream: list[bytes], back: int) -> bool:
    """NACK the packet sent ``back`` packets before the newest: True when answered from the
    cache (resent, nothing asked of the publisher)."""
    seq = (consumer._last_seq - back) & 0xFFFF
    sent.clear()
    nacks = len(_nacked(upstream))
    consumer.retransmit([seq])
    resent = [struct.unpack_from("!H", d, 2)[0] for d in sent]
    assert resent in ([], [seq])
    return resent == [seq] and len(_nacked(upstream)) == nacks


@pytest.mark.parametrize(("bitrate", "size", "age_ms"), [
    (2_000_000, 1200, 500), (4_000_000, 1200, 900), (500_000, 1200, 900), (64_000, 160, 900),
])
def test_a_nack_for_a_packet_up_to_a_second_old_is_answered_from_the_cache(
        bitrate: int, size: int, age_ms: int) -> None:
    producer, upstream = _producer()
    consumer, sent = _sink(producer, "bob")
    _stream(producer, bitrate, 3.0, size=size)
    back = int(age_ms * bitrate / (size * 8 * 1000))
    assert _resend(consumer, sent, upstream, back)
    assert consumer.retransmitted == 1
    producer.close()


def test_the_cache_holds_about_a_second_whatever_the_bitrate() -> None:
    producer, upstream = _producer()
    consumer, sent = _sink(producer, "bob")
    seq, ms = _stream(producer, 500_000, 5.0)  # ~52 packets a second
    held = sum(p is not None for p in consumer._cache)
    assert 52 * CACHE_MS // 1000 <= held <= 52 * 2.5 * CACHE_MS / 1000
    assert not _resend(consumer, sent, upstream, 52 * 3)  # 3 s old: asked of the publisher
    assert _nacked(upstream)[-1]

    # faster (~416 packets a second): the ring grows, keeping what it held
    size = len(consumer._cache)
    while len(consumer._cache) == size:
        seq, ms = _stream(producer, 4_000_000, 0.0025, seq, ms)  # one packet
    assert _resend(consumer, sent, upstream, size - 4)  # held before the growth
    seq, ms = _stream(producer, 4_000_000, 2.0, seq, ms)
    assert _resend(consumer, sent, upstream, 416 * 9 // 10)
    assert 416 <= len(consumer._cache) <= 448  # a second of it, not the next power of two

    # slower again: at its next turn (up to MAX_CACHE packets later) the ring shrinks back,
    # keeping the newest second
    _stream(producer, 200_000, 30.0, seq, ms)  # ~21 packets a second
    assert len(consumer._cache) < 128
    assert _resend(consumer, sent, upstream, 18)
    producer.close()


def test_upstream_nacks_are_retried_per_round_trip_then_given_up() -> None:
    producer, upstream = _producer()
    _receive(producer, 10, 0)
    _receive(producer, 12, 0)
    assert _nacked(upstream) == [[11]]
    _receive(producer, 13, 50)  # within the retry interval (1.5 x 100 ms before any sample)
    assert len(_nacked(upstream)) == 1
    _receive(producer, 14, 160)
    assert _nacked(upstream)[-1] == [11]  # asked again
    for i, seq in enumerate(range(15, 40)):  # never answered: at most 5 requests, then given up
        _receive(producer, seq, 300 + i * 200)
    assert [n for n in _nacked(upstream) if n == [11]] == [[11]] * 5
    assert 11 not in producer._nacks.pending and producer._nacks.given_up == 1

    # quick answers shorten the retry interval to the measured round trip
    seq = 40
    for k in range(10):  # ten holes, each answered 20 ms after its request
        _receive(producer, seq + 1, 6000 + k * 100)
        producer.receive_rtx(*_rtx_of(seq, rtx_seq=k), 6000 + k * 100 + 20)
        seq += 2
    assert producer._nacks.rtt_ms < 60
    upstream.clear()
    _receive(producer, 70, 8000)  # 60..69 missing
    _receive(producer, 71, 8000 + producer._nacks.retry_ms)
    assert len(_nacked(upstream)) == 2 and producer._nacks.retry_ms < 100
    producer.close()


def test_subscriber_nacks_and_plis_are_deduplicated_and_rate_limited() -> None:
    producer, upstream = _producer()
    consumer, sent = _sink(producer, "bob")
    for seq in range(1, 501):
        _receive(producer, seq, seq, ts=seq * 90)  # a packet a millisecond
    sent.clear()
    last = consumer._last_seq
    consumer.retransmit([last])
    consumer.retransmit([last])  # again before a round trip: its answer is on the way
    assert len(sent) == 1 and consumer.nacks_ignored == 1
    consumer.retransmit([(last - i) & 0xFFFF for i in range(1, 400)])
    assert len(sent) <= 1 + RTX_BURST + 2  # the budget holds, a NACK flood is not amplified
    assert consumer.nacks_ignored >= 399 - RTX_BURST - 1

    consumer.keyframe_requested()
    consumer.keyframe_requested()
    consumer.keyframe_requested()
    plis = [d for d in upstream if isinstance(RtcpPacket.parse(d)[0], RtcpPsfbPacket)]
    assert len(plis) == 1 and consumer.plis == 3 and consumer.plis_ignored == 2
    producer.close()


async def test_audio_and_retransmissions_are_policed() -> None:
    from sfu.options import MediaOptions
    from sfu.router import Router

    router = Router("r", MediaOptions(loopback=True, max_audio_bitrate=64_000), lambda m: None)
    audio = router.create_producer("alice", "0", "audio", Codec("audio/opus", 48000, 111))
    audio.attach_source(1, None, 0, lambda d: True)
    for i in range(1000):  # 1000-byte packets every ms: 8 Mbps of "audio"
        data = struct.pack("!BBHII", 0x80, 111, i, i * 48, 1) + bytes(1000)
        audio.receive(data, 0x80, 111, i, i * 48, 12, i)
    assert audio.packets_policed > 900
    await router.close()

    producer, _ = _producer(max_bitrate=800_000)  # 150 bytes/ms
    _receive(producer, 1, 0)
    for i in range(2000):  # retransmissions flooding at 9.6 Mbps
        producer.receive_rtx(*_rtx_of(1, rtx_seq=i, size=1200), i)
    assert producer.packets_policed > 1500
    producer.close()


class RecordingConsumer:
    """A subscriber's consumer as Transport._receive_rtcp sees it: each call it gets, recorded
    (``bitrate``: its producer's, which a REMB's share follows)."""

    def __init__(self, calls: list[tuple[Any, ...]], ssrc: int, bitrate: int = 1_000_000) -> None:
        self.calls, self.ssrc = calls, ssrc
        self.producer = SimpleNamespace(bitrate=bitrate)

    def retransmit(self, lost: list[int]) -> None:
        self.calls.append(("nack", self.ssrc, list(lost)))

    def handle_report(self, *report: int) -> None:
        self.calls.append(("report", self.ssrc, *report))

    def keyframe_requested(self) -> None:
        self.calls.append(("keyframe", self.ssrc))

    @property
    def remb_bitrate(self) -> int:
        raise AttributeError

    @remb_bitrate.setter
    def remb_bitrate(self, value: int) -> None:
        self.calls.append(("remb", self.ssrc, value))


PUBLISHED_SSRCS = (11, 12)
CONSUMER_SSRCS = (21, 22, 23)


def _recording_transport() -> tuple[Transport, list[tuple[Any, ...]]]:
    """A Transport with just what _receive_rtcp uses: two published streams, three consumers."""
    calls: list[tuple[Any, ...]] = []
    transport = Transport.__new__(Transport)
    transport.router = SimpleNamespace(now_ms=lambda: 5)
    transport.last_packet_ms = 0
    transport.producers = {str(ssrc): SimpleNamespace(  # type: ignore[misc]
        ssrc=ssrc, handle_sender_report=lambda ntp, ts, s=ssrc: calls.append(("sr", s, ntp, ts)))
        for ssrc in PUBLISHED_SSRCS}
    transport._rtcp_consumers = {ssrc: RecordingConsumer(calls, ssrc, 500_000 + ssrc % 7 * 100_000)  # type: ignore[misc]
                                 for ssrc in CONSUMER_SSRCS}
    return transport, calls


def test_a_remb_listing_more_ssrcs_than_it_holds_is_ignored_not_raised() -> None:
    """aiortc's unpack_remb_fci reads the SSRCs the REMB counts with struct, which raises
    struct.error (not a ValueError) past the end: out of _receive_rtcp that ended aiortc's DTLS
    receive loop, the peer's connection. Such a REMB is ignored as one without "REMB" is."""
    transport, calls = _recording_transport()
    bad_remb = bytearray(rtcp.remb(9, 300_000, [21]))
    bad_remb[16] = 2  # two SSRCs, one there
    transport._receive_rtcp(rtcp.receiver_report(9, 21, 1, 2, 3, 4, 5, 6) + bytes(bad_remb)
                            + rtcp.pli(9, 22))
    assert calls == [("report", 21, 1, 2, 4, 5, 6), ("keyframe", 22)]



def test_a_nack_across_the_sequence_wrap_is_answered_from_the_cache() -> None:
    """PID 65535 with BLP bit 0 asks for 65535 and 0. aiortc's parser gave 0 as 65536, which no
    cache slot holds: it was asked of the publisher instead of resent, and never deduplicated."""
    producer, upstream = _producer()
    sent: list[bytes] = []
    consumer = Consumer("c", producer, "bob", ssrc=77, rtx_ssrc=2,
                        send_rtp=lambda d: sent.append(d) or True, send_rtcp=lambda d: True)
    consumer._last_seq = 65530  # what it sends next crosses 65535 -> 0
    consumer.configure(100, None, ExtensionLayout())
    producer.add_consumer(consumer)
    consumer.paused = False
    for seq in range(1, 11):
        _receive(producer, seq, 2 * seq)
    assert consumer._last_seq == 4
    transport, _ = _recording_transport()
    transport._rtcp_consumers = {77: consumer}  # type: ignore[dict-item]
    sent.clear()
    upstream.clear()
    transport._receive_rtcp(rtcp.nack(9, 77, [65535, 0]))
    assert [struct.unpack_from("!H", d, 2)[0] for d in sent] == [65535, 0]
    assert _nacked(upstream) == []
    producer.close()

def test_rfc_sdes_chunks_aiortc_refused_do_not_drop_the_reports_beside_them() -> None:
    """Two SDES chunks as RFC 3550 6.5 writes them, the first item list ending on a word's last
    byte (a one-letter CNAME: END, then the next chunk at the next word): aiortc's parser refused
    the SDES, and with it the whole compound, so the receiver report before it was lost."""
    transport, calls = _recording_transport()
    consumer_ssrc = CONSUMER_SSRCS[0]
    rr = struct.pack("!BBHI", 0x81, rtcp.RTCP_RR, 7, 9) + struct.pack(
        "!IIIIII", consumer_ssrc, (12 << 24) | 3, 100, 5, 0, 0)
    chunks = (struct.pack("!I", 9) + b"\x01\x01a" + b"\x00"  # 4 + 4 bytes: END ends the word
              + struct.pack("!I", 10) + b"\x01\x02bb" + b"\x00\x00\x00\x00")
    sdes = struct.pack("!BBH", 0x82, rtcp.RTCP_SDES, len(chunks) // 4) + chunks
    with pytest.raises(ValueError):
        RtcpPacket.parse(rr + sdes)  # what the SFU read it with before
    transport._receive_rtcp(rr + sdes)
    assert [call[0] for call in calls] == ["report"]


# --- receiving: the walker against aiortc's parser ------------------------------------------


def _aiortc_receive_rtcp(transport: Transport, data: bytes) -> None:
    """Transport._receive_rtcp, _on_sender_report and _on_psfb as they were up to the walker
    (with the REMB and NACK wrap fixes above): aiortc's RtcpPacket.parse, whose ValueError
    dropped the compound."""
    transport.last_packet_ms = transport.router.now_ms()
    try:
        packets = RtcpPacket.parse(data)
    except ValueError:
        packets = []
    for packet in packets:
        if isinstance(packet, RtcpSrPacket):
            for producer in transport.producers.values():
                if producer.ssrc == packet.ssrc:
                    producer.handle_sender_report(packet.sender_info.ntp_timestamp,
                                                  packet.sender_info.rtp_timestamp)
            reports = packet.reports
        elif isinstance(packet, RtcpRrPacket):
            reports = packet.reports
        elif isinstance(packet, RtcpRtpfbPacket):
            consumer = transport._rtcp_consumers.get(packet.media_ssrc)
            if consumer is not None and packet.fmt == rtcp.FMT_NACK and packet.lost:
                consumer.retransmit([seq & 0xFFFF for seq in packet.lost[:128]])  # (fix above)
            continue
        elif isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (rtcp.FMT_PLI, rtcp.FMT_FIR):
                ssrcs = [packet.media_ssrc]
                if packet.fmt == rtcp.FMT_FIR and len(packet.fci) >= 4:
                    ssrcs.append(int.from_bytes(packet.fci[:4], "big"))
                for ssrc in ssrcs:
                    consumer = transport._rtcp_consumers.get(ssrc)
                    if consumer is not None:
                        consumer.keyframe_requested()
                        break
            elif packet.fmt == rtcp.FMT_REMB:
                try:
                    remb = unpack_remb_fci(packet.fci)
                except (ValueError, struct.error):
                    continue
                bitrate, remb_ssrcs = remb
                consumers = [c for c in map(transport._rtcp_consumers.get, remb_ssrcs)
                             if c is not None]
                shares = congestion.share(bitrate, [c.producer.bitrate for c in consumers])
                for consumer, estimate in zip(consumers, shares):
                    consumer.remb_bitrate = estimate
            continue
        else:
            continue
        for report in reports:
            consumer = transport._rtcp_consumers.get(report.ssrc)
            if consumer is not None:
                consumer.handle_report(report.fraction_lost, report.packets_lost,
                                       report.jitter, report.lsr, report.dlsr)


def _calls(receive: Callable[[Transport, bytes], None], data: bytes) -> list[tuple[Any, ...]]:
    transport, calls = _recording_transport()
    try:
        receive(transport, data)
    except Exception as exc:  # neither should raise: if one does, both must, alike
        calls.append(("raised", type(exc).__name__))
    assert transport.last_packet_ms == 5
    return calls


def _new_receive(transport: Transport, data: bytes) -> None:
    transport._receive_rtcp(data)


_SSRCS = (*PUBLISHED_SSRCS, *CONSUMER_SSRCS, *CONSUMER_SSRCS, 0, 0xFFFFFFFF, 77)


def _word(rng: random.Random) -> int:
    return rng.choice((0, 1, 0x7FFFFF, 0x800000, 0xFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)))


def _packet(rng: random.Random) -> bytes:
    """One RTCP packet of a random type, valid more often than not."""
    ssrc = rng.choice(_SSRCS)
    blocks = [struct.pack("!IIIIII", rng.choice(_SSRCS), *(_word(rng) for _ in range(5)))
              for _ in range(rng.choice((0, 1, 1, 2, 3)))]
    kind = rng.randrange(12)
    if kind == 0:  # SR
        ssrc = rng.choice((*PUBLISHED_SSRCS, ssrc))
        count, payload = len(blocks), struct.pack("!IQIII", ssrc, rng.getrandbits(64),
                                                  *(_word(rng) for _ in range(3))) + b"".join(blocks)
        packet_type = rtcp.RTCP_SR
    elif kind == 1:  # RR
        count, payload, packet_type = len(blocks), struct.pack("!I", ssrc) + b"".join(blocks), rtcp.RTCP_RR
    elif kind == 2:  # SDES as aiortc writes it (chunks not word-aligned) or as RFC 3550 does
        chunks = []
        for _ in range(rng.choice((0, 1, 1, 2))):
            chunk = struct.pack("!I", rng.choice(_SSRCS))
            for _ in range(rng.choice((0, 1, 2))):
                value = bytes(rng.getrandbits(8) for _ in range(rng.randrange(20)))
                chunk += bytes([rng.randrange(1, 9), len(value)]) + value
            chunk += b"\x00"
            if rng.random() < 0.5:
                chunk += bytes(-len(chunk) % 4)
            chunks.append(chunk)
        payload = b"".join(chunks)
        payload += bytes(-len(payload) % 4)
        count, packet_type = len(chunks), rtcp.RTCP_SDES
    elif kind == 3:  # BYE
        sources = [rng.choice(_SSRCS) for _ in range(rng.randrange(3))]
        count, payload, packet_type = len(sources), b"".join(struct.pack("!I", s) for s in sources), rtcp.RTCP_BYE
    elif kind in (4, 5):  # generic NACK, by our builder or random FCIs; now and then another FMT
        if kind == 4:
            sequence_numbers = [rng.randrange(65536) for _ in range(rng.randrange(1, 40))]
            return rtcp.nack(ssrc, rng.choice(_SSRCS), sequence_numbers)
        fcis = b"".join(struct.pack("!HH", rng.getrandbits(16), rng.choice((0, 0xFFFF, rng.getrandbits(16))))
                        for _ in range(rng.choice((0, 1, 3, 40))))
        count = rng.choice((rtcp.FMT_NACK, rtcp.FMT_NACK, 3))
        payload, packet_type = struct.pack("!II", ssrc, rng.choice(_SSRCS)) + fcis, rtcp.RTCP_RTPFB
    elif kind in (6, 7):  # PLI, FIR (with or without its FCI), SLI
        count = rng.choice((rtcp.FMT_PLI, rtcp.FMT_FIR, rtcp.FMT_FIR, 2))
        fci = rng.choice((b"", struct.pack("!II", rng.choice(_SSRCS), rng.getrandbits(32))))
        payload = struct.pack("!II", ssrc, rng.choice(_SSRCS)) + fci
        packet_type = rtcp.RTCP_PSFB
    elif kind in (8, 9):  # REMB: valid, or not REMB, or counting more SSRCs than it holds
        remb = bytearray(rtcp.remb(ssrc, rng.getrandbits(rng.randrange(1, 34)),
                                   [rng.choice(_SSRCS) for _ in range(rng.randrange(4))]))
        if rng.random() < 0.2:
            remb[16] = rng.randrange(256)
        if rng.random() < 0.1:
            remb[12:16] = b"REMX"
        return bytes(remb)
    elif kind == 10:  # APP, XR and unknown types: passed over
        packet_type = rng.choice((204, 207, 192, 0, 255))
        count = rng.randrange(32)
        payload = bytes(rng.getrandbits(8) for _ in range(4 * rng.randrange(4)))
    else:  # anything in a valid header
        packet_type, count = rng.choice((200, 201, 202, 203, 205, 206)), rng.randrange(32)
        payload = bytes(rng.getrandbits(8) for _ in range(4 * rng.randrange(12)))
    padding = 0x20 if rng.random() < 0.1 else 0
    if padding:
        pad = rng.choice((4, 4, 8, 1, 2, 3))
        payload += bytes(pad - 1) + bytes([pad])
        payload += bytes(-len(payload) % 4)
    return struct.pack("!BBH", 0x80 | padding | count, packet_type, len(payload) // 4) + payload


def _mutated(rng: random.Random, data: bytes) -> bytes:
    damaged = bytearray(data)
    how = rng.randrange(6)
    if how == 0 and damaged:  # cut short
        del damaged[rng.randrange(len(damaged)):]
    elif how == 1 and damaged:  # bytes flipped, often in a header
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(min(len(damaged), 8) if rng.random() < 0.5 else len(damaged))] ^= (
                1 << rng.randrange(8))
    elif how == 2:  # trailing junk
        damaged += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 9)))
    elif how == 3 and len(damaged) > 3:  # another length or count
        damaged[rng.choice((0, 2, 3))] = rng.randrange(256)
    elif how == 4 and damaged:  # the padding bit
        damaged[0] ^= 0x20
    else:  # random bytes
        damaged = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(40)))
        if damaged and rng.random() < 0.7:
            damaged[0] = 0x80 | damaged[0] & 0x3F
    return bytes(damaged)


def test_the_walker_makes_the_handler_calls_aiortcs_parser_made(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Transport._receive_rtcp reads RTCP in place (rtcp.walk) instead of with aiortc's parser:
    on valid compounds of every type, and on cut, damaged and random ones, the consumers and
    producers must get the same calls with the same values, and the same compounds be dropped.
    (SDES is read by neither: aiortc's reading of its items is replaced by none.)"""
    monkeypatch.setattr(RtcpSdesPacket, "parse",
                        classmethod(lambda cls, data, count: cls(chunks=[])))
    rng = random.Random(20261204)
    valid = dropped = 0
    kinds: collections.Counter[str] = collections.Counter()
    for i in range(30_000):
        data = b"".join(_packet(rng) for _ in range(rng.choice((1, 1, 2, 3, 5))))
        if i % 2:
            data = _mutated(rng, data)
        expected = _calls(_aiortc_receive_rtcp, data)
        assert _calls(_new_receive, data) == expected, data.hex()
        kinds.update(call[0] for call in expected)
        try:
            RtcpPacket.parse(data)
            valid += 1
        except ValueError:
            dropped += 1
    # the inputs reached both sides of the checks, and every handler
    assert valid > 10_000 and dropped > 10_000, (valid, dropped)
    assert min(kinds[k] for k in ("sr", "report", "nack", "keyframe", "remb")) > 500, kinds
    assert "raised" not in kinds


def test_the_walker_reads_what_senders_write() -> None:
    """The compounds of the microbenchmark: an aiortc sender's SR + SDES, a browser's RR + REMB,
    and the SFU's own packets, through both readers."""
    sr_sdes = bytes(RtcpSrPacket(ssrc=11, sender_info=RtcpSenderInfo(
        ntp_timestamp=0xE1234567_89ABCDEF, rtp_timestamp=123456, packet_count=50, octet_count=9000)))
    sr_sdes += bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=11, items=[(1, b"{6b3e0a3c-cname}")])]))
    rr_remb = rtcp.receiver_report(9, 21, 3, -2, 70000, 12, 0xABCD, 0x10) + rtcp.remb(9, 1_200_000, [21, 22])
    nack_fir = rtcp.nack(9, 22, [65535, 0, 1, 20]) + bytes(RtcpPsfbPacket(
        fmt=rtcp.FMT_FIR, ssrc=9, media_ssrc=0, fci=struct.pack("!II", 23, 1 << 24)))
    for data, calls in [
        (sr_sdes, [("sr", 11, 0xE1234567_89ABCDEF, 123456)]),
        (rr_remb, [("report", 21, 3, -2, 12, 0xABCD, 0x10),
                   ("remb", 21, 545_454), ("remb", 22, 654_545)]),
        (nack_fir, [("nack", 22, [65535, 0, 1, 20]), ("keyframe", 23)]),
    ]:
        assert _calls(_new_receive, data) == _calls(_aiortc_receive_rtcp, data) == calls
