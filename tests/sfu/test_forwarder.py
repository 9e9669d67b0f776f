"""The per-packet path on raw bytes: header parsing, keyframe detection, rewriting."""

from __future__ import annotations

import logging
import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from sfu.consumer import Consumer
from sfu.forwarder import (
    ExtensionLayout,
    current_ms,
    find_extension,
    h264_keyframe_start,
    payload_offset,
    vp8_keyframe_start,
)
from sfu.producer import GOP_MAX_AGE_MS, GOP_MAX_PACKETS, Codec, Producer

from .test_rtcp import FakeScheduler

VP8 = Codec("video/VP8", 90000, 97, rtx_payload_type=98, nack=True, pli=True, remb=True)
OPUS = Codec("audio/opus", 48000, 111)


def _packet(seq: int, ts: int, payload: bytes, ssrc: int = 1234, pt: int = 97,
            extensions: bytes = b"", marker: int = 0) -> bytes:
    b0 = 0x80 | (0x10 if extensions else 0)
    header = struct.pack("!BBHII", b0, (marker << 7) | pt, seq, ts, ssrc)
    if extensions:
        extensions += b"\x00" * (-len(extensions) % 4)
        header += struct.pack("!HH", 0xBEDE, len(extensions) // 4) + extensions
    return header + payload


def test_payload_offset_and_extension_lookup() -> None:
    data = _packet(1, 2, b"PAYLOAD", extensions=bytes([0x10, 0x7F, 0x33]) + b"abcd")
    assert data[payload_offset(data):] == b"PAYLOAD"
    assert find_extension(data, 1) == b"\x7f"
    assert find_extension(data, 3) == b"abcd"
    assert find_extension(data, 2) is None
    assert payload_offset(data[:11]) == -1
    assert payload_offset(data[:14]) == -1


@given(st.binary(max_size=40))
def test_parsers_never_raise_on_garbage(data: bytes) -> None:
    offset = payload_offset(data)
    if offset >= 0 and len(data) >= 12:
        find_extension(data, 1)
    vp8_keyframe_start(data)
    h264_keyframe_start(data)


def test_vp8_keyframe_detection() -> None:
    assert vp8_keyframe_start(bytes([0x10, 0x00]))  # S=1, PID=0, P=0
    assert not vp8_keyframe_start(bytes([0x10, 0x01]))  # interframe
    assert not vp8_keyframe_start(bytes([0x00, 0x00]))  # not a partition start
    # X with a 15-bit picture id, then a keyframe
    assert vp8_keyframe_start(bytes([0x90, 0x80, 0x81, 0x23, 0x00]))
    assert not vp8_keyframe_start(bytes([0x90, 0x80, 0x81, 0x23, 0x01]))


def test_h264_keyframe_detection() -> None:
    assert h264_keyframe_start(bytes([0x65, 0]))  # IDR
    assert h264_keyframe_start(bytes([0x67, 0]))  # SPS
    assert not h264_keyframe_start(bytes([0x41, 0]))  # non-IDR slice
    assert h264_keyframe_start(bytes([0x78, 0, 2, 0x67, 0]))  # STAP-A with SPS
    assert h264_keyframe_start(bytes([0x7C, 0x85]))  # FU-A start of IDR
    assert not h264_keyframe_start(bytes([0x7C, 0x05]))  # FU-A continuation


def _consumer(codec: Codec, layout: ExtensionLayout) -> tuple[Producer[Consumer], Consumer, list[bytes]]:
    producer: Producer[Consumer] = Producer("p", "alice", "video" if codec.clock_rate == 90000 else "audio", codec,
                        max_bitrate=0, keyframe_interval=1.0)
    sent: list[bytes] = []
    consumer = Consumer("c", producer, "bob", ssrc=0xABCD, rtx_ssrc=0xBEEF,
                        send_rtp=lambda d: sent.append(d) or True, send_rtcp=lambda d: True)
    consumer.configure(100, 101, layout)
    producer.add_consumer(consumer)
    producer.attach_source(1234, None, 2 if producer.kind == "audio" else 0, lambda d: True)
    consumer.paused = False
    return producer, consumer, sent


def _parse(data: bytes, ext_ids: dict[str, int]) -> RtpPacket:
    mapping = HeaderExtensionsMap()
    mapping.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in ext_ids.items()
    ]))
    return RtpPacket.parse(data, mapping)


def test_rewrites_ssrc_pt_sequence_and_extensions() -> None:
    layout = ExtensionLayout(mid_id=4, mid="7", abs_send_time_id=9)
    producer, _, sent = _consumer(VP8, layout)
    for i in range(3):
        producer.receive(*_split(_packet(1000 + i, 5000 + 3000 * i, b"\x10\x00frame",
                                         extensions=bytes([0x50, 0x01, 0x02]))), 1000 + 33 * i)
    packets = [_parse(d, {"urn:ietf:params:rtp-hdrext:sdes:mid": 4,
                          "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 9})
               for d in sent]
    assert [p.ssrc for p in packets] == [0xABCD] * 3
    assert [p.payload_type for p in packets] == [100] * 3
    assert [(p.sequence_number - packets[0].sequence_number) & 0xFFFF for p in packets] == [0, 1, 2]
    assert [(p.timestamp - packets[0].timestamp) & 0xFFFFFFFF for p in packets] == [0, 3000, 6000]
    assert all(p.extensions.mid == "7" and p.extensions.abs_send_time is not None for p in packets)
    assert all(p.payload == b"\x10\x00frame" for p in packets)


def test_audio_level_is_carried_with_the_subscribers_id() -> None:
    layout = ExtensionLayout(mid_id=1, mid="0", audio_level_id=6)
    producer, _, sent = _consumer(OPUS, layout)
    producer.receive(*_split(_packet(1, 960, b"opus", pt=111, extensions=bytes([0x20, 0x80 | 25]))), 10)
    packet = _parse(sent[0], {"urn:ietf:params:rtp-hdrext:ssrc-audio-level": 6,
                              "urn:ietf:params:rtp-hdrext:sdes:mid": 1})
    assert packet.extensions.audio_level == (True, 25)
    assert packet.extensions.mid == "0"


async def test_sequence_and_timestamp_continue_across_a_new_epoch() -> None:
    # async: a new source's keyframe request arms its retry on the running loop
    producer, _, sent = _consumer(VP8, ExtensionLayout())
    producer.receive(*_split(_packet(100, 9000, b"\x10\x00a")), 1000)
    producer.attach_source(999, None, 0, lambda d: True)  # the publisher reconnected
    producer.receive(*_split(_packet(50000, 123, b"\x10\x00b", ssrc=999)), 1100)
    first, second = (_parse(d, {}) for d in sent)
    assert (second.sequence_number - first.sequence_number) & 0xFFFF == 1
    assert (second.timestamp - first.timestamp) & 0xFFFFFFFF == 100 * 90
    producer.close()


async def test_waits_for_a_keyframe_after_resume_and_answers_nacks_with_rtx() -> None:
    # async: resume() arms the producer's join-keyframe retry on the running loop
    producer, consumer, sent = _consumer(VP8, ExtensionLayout())
    consumer.paused = True
    consumer.resume()
    producer.receive(*_split(_packet(1, 0, b"\x10\x01delta")), 0)
    assert sent == []  # a delta frame is useless to a fresh decoder
    producer.receive(*_split(_packet(2, 3000, b"\x10\x00key")), 33)
    producer.receive(*_split(_packet(3, 6000, b"\x10\x01delta")), 66)
    assert len(sent) == 2
    first = _parse(sent[0], {})
    consumer.retransmit([first.sequence_number])
    rtx = _parse(sent[2], {})
    assert rtx.ssrc == 0xBEEF and rtx.payload_type == 101
    assert rtx.payload == struct.pack("!H", first.sequence_number) + b"\x10\x00key"
    assert consumer.retransmitted == 1
    producer.close()


def _split(data: bytes) -> tuple[bytes, int, int, int, int, int]:
    b0, b1, seq, ts, _ = struct.unpack_from("!BBHII", data)
    return data, b0, b1, seq, ts, payload_offset(data)


async def test_a_new_source_restarts_on_a_keyframe() -> None:
    # async: a new source's keyframe request arms its retry on the running loop
    producer, _, sent = _consumer(VP8, ExtensionLayout())
    producer.receive(*_split(_packet(10, 0, b"\x10\x01delta")), 0)
    assert len(sent) == 1  # already running: deltas pass
    producer.attach_source(777, None, 0, lambda d: True)  # the publisher reconnected
    producer.receive(*_split(_packet(5000, 90, b"\x10\x01delta", ssrc=777)), 50)
    assert len(sent) == 1  # the new encoder's deltas are held back ...
    producer.receive(*_split(_packet(5001, 3090, b"\x10\x00key", ssrc=777)), 83)
    assert len(sent) == 2  # ... until its keyframe, which follows on without a gap
    first, second = (_parse(d, {}) for d in sent)
    assert (second.sequence_number - first.sequence_number) & 0xFFFF == 1
    producer.close()


H264 = Codec("video/H264", 90000, 102, nack=True, pli=True)


def _joiner(producer: Producer, name: str) -> tuple[Consumer, list[bytes]]:
    sent: list[bytes] = []
    consumer = Consumer(name, producer, name, ssrc=0x5151, rtx_ssrc=0x5152,
                        send_rtp=lambda d: sent.append(d) or True, send_rtcp=lambda d: True)
    consumer.configure(100, None, ExtensionLayout())
    producer.add_consumer(consumer)
    return consumer, sent


def _gop_producer() -> tuple[Producer[Consumer], FakeScheduler, list[bytes]]:
    scheduler = FakeScheduler()
    producer: Producer[Consumer] = Producer("p", "alice", "video", VP8, max_bitrate=0, keyframe_interval=1.0,
                        scheduler=scheduler)
    upstream: list[bytes] = []
    producer.attach_source(1234, None, 0, lambda d: upstream.append(d) or True)
    return producer, scheduler, upstream


def test_a_joiner_starts_at_once_on_the_run_since_the_newest_keyframe() -> None:
    producer, scheduler, upstream = _gop_producer()
    producer.receive(*_split(_packet(9, 0, b"\x10\x01old-delta")), 0)
    producer.receive(*_split(_packet(10, 3000, b"\x10\x00key")), 33)
    producer.receive(*_split(_packet(11, 3000, b"\x00\x00key-2", marker=1)), 34)
    producer.receive(*_split(_packet(12, 6000, b"\x10\x01delta", marker=1)), 66)
    scheduler.advance(0.1)
    consumer, sent = _joiner(producer, "bob")
    consumer.resume()
    # the keyframe and what followed it, no earlier, without asking the publisher
    assert [_parse(d, {}).payload for d in sent] == [b"\x10\x00key", b"\x00\x00key-2",
                                                     b"\x10\x01delta"]
    assert upstream == [] and not scheduler.timers
    producer.receive(*_split(_packet(13, 9000, b"\x10\x01live")), 99)  # live continues the run
    packets = [_parse(d, {}) for d in sent]
    assert [(p.sequence_number - packets[0].sequence_number) & 0xFFFF for p in packets] == [0, 1, 2, 3]
    assert [(p.timestamp - packets[0].timestamp) & 0xFFFFFFFF for p in packets] == [0, 0, 3000, 6000]
    assert packets[1].marker == 1 and packets[0].marker == 0
    # a replayed packet is in the NACK cache like any other
    consumer.retransmit([packets[1].sequence_number])
    assert sent[-1] == sent[1]
    producer.close()


def test_a_stale_or_overlong_run_is_not_replayed_and_the_joiner_waits() -> None:
    producer, scheduler, upstream = _gop_producer()
    producer.receive(*_split(_packet(10, 0, b"\x10\x00key")), 0)
    scheduler.advance(GOP_MAX_AGE_MS / 1000 + 0.1)  # nothing came since: too far behind to replay
    late, late_sent = _joiner(producer, "late")
    late.resume()
    assert late_sent == [] and len(upstream) == 1  # a keyframe is asked for instead
    producer.receive(*_split(_packet(11, 3000, b"\x10\x00key")), 1100)
    assert len(late_sent) == 1  # ... and starts it

    # a run longer than a burst should be is dropped as it grows
    for i in range(GOP_MAX_PACKETS):
        producer.receive(*_split(_packet(12 + i, 6000 + i, b"\x10\x01delta")), 1101)
    joiner, sent = _joiner(producer, "joiner")
    joiner.resume()
    assert sent == []
    # and a run that spans more than the age limit in arrival time
    producer.receive(*_split(_packet(1000, 10**6, b"\x10\x00key")), 5000)
    producer.receive(*_split(_packet(1001, 10**6 + 1, b"\x10\x01delta")),
                     5000 + GOP_MAX_AGE_MS + 1)
    assert len(sent) == 2  # (the waiting joiner started on that keyframe)
    other, other_sent = _joiner(producer, "other")
    other.resume()
    assert other_sent == []
    producer.close()


def test_a_joiner_on_an_ageing_run_asks_for_a_fresh_keyframe_for_the_next_ones() -> None:
    producer, scheduler, upstream = _gop_producer()
    producer.receive(*_split(_packet(10, 0, b"\x10\x00key")), 0)
    scheduler.advance(0.2)
    _joiner(producer, "a")[0].resume()
    assert upstream == []
    scheduler.advance(0.4)
    consumer, sent = _joiner(producer, "b")
    consumer.resume()
    assert len(sent) == 1 and len(upstream) == 1  # served, and a refresh requested
    producer.close()


def test_a_publisher_reconnect_drops_the_run() -> None:
    producer, scheduler, upstream = _gop_producer()
    producer.receive(*_split(_packet(10, 0, b"\x10\x00key")), 0)
    producer.attach_source(777, None, 0, lambda d: upstream.append(d) or True)
    consumer, sent = _joiner(producer, "bob")
    consumer.resume()
    assert sent == [] and len(upstream) == 1
    producer.close()


def test_h264_sps_and_idr_of_one_picture_stay_one_run() -> None:
    scheduler = FakeScheduler()
    producer: Producer[Consumer] = Producer("p", "alice", "video", H264, max_bitrate=0, keyframe_interval=1.0,
                        scheduler=scheduler)
    producer.attach_source(1234, None, 0, lambda d: True)
    producer.receive(*_split(_packet(1, 90, bytes([0x67, 1]), pt=102)), 0)  # SPS
    producer.receive(*_split(_packet(2, 90, bytes([0x7C, 0x85, 2]), pt=102)), 1)  # FU-A IDR start
    producer.receive(*_split(_packet(3, 90, bytes([0x7C, 0x45, 3]), pt=102, marker=1)), 2)
    consumer, sent = _joiner(producer, "bob")
    consumer.resume()
    assert [_parse(d, {}).payload[-1] for d in sent] == [1, 2, 3]
    producer.close()


def test_audio_keeps_no_run() -> None:
    producer, consumer, sent = _consumer(OPUS, ExtensionLayout())
    producer.receive(*_split(_packet(1, 960, b"opus", pt=111)), 10)
    assert producer.replay_gop(consumer) is False


def test_packet_clock_is_aiortcs_without_the_datetimes() -> None:
    from aiortc import clock

    before = clock.current_ms()
    ours = current_ms()
    assert before - 1 <= ours <= clock.current_ms() + 1


def test_ntp_clock_is_aiortcs_without_the_datetimes() -> None:
    from aiortc import clock

    from sfu.forwarder import current_ntp

    ms = 2**32 // 1000
    before = clock.current_ntp_time()
    ours = current_ntp()
    assert before - ms <= ours <= clock.current_ntp_time() + ms


def test_a_payload_too_large_to_protect_is_dropped_and_counted_not_raised() -> None:
    from sfu.forwarder import MAX_FORWARDED_PAYLOAD, MAX_PROTECTED_RTP

    producer, _, sent = _consumer(VP8, ExtensionLayout(mid_id=4, mid="x" * 16, abs_send_time_id=9))
    producer.receive(*_split(_packet(1, 0, b"\x10\x00" + bytes(MAX_FORWARDED_PAYLOAD + 1))), 0)
    assert sent == [] and producer.packets_oversized == 1
    # the largest accepted payload still fits, with the longest header, and as RTX
    producer.receive(*_split(_packet(2, 0, b"\x10\x00" + bytes(MAX_FORWARDED_PAYLOAD - 2))), 1)
    assert len(sent) == 1 and producer.packets_oversized == 1
    assert len(sent[0]) + 2 <= MAX_PROTECTED_RTP


def _rtx(seq: int, ts: int, payload: bytes, padding: int = 0) -> bytes:
    """An RTX packet (RFC 4588) on SSRC 4321, pt 98; ``padding`` bytes of RTP padding."""
    b0 = 0x80 | (0x20 if padding else 0)
    tail = bytes(padding - 1) + bytes([padding]) if padding else b""
    return struct.pack("!BBHII", b0, 98, seq, ts, 4321) + payload + tail


async def test_padding_only_rtx_is_dropped_without_touching_the_sequence_state() -> None:
    # async: a new source's keyframe request arms its retry on the running loop
    producer, consumer, sent = _consumer(VP8, ExtensionLayout())
    upstream: list[bytes] = []
    producer.attach_source(1234, 4321, 0, lambda d: upstream.append(d) or True)
    producer.receive(*_split(_packet(40049, 0, b"\x10\x00key")), 0)
    producer.receive(*_split(_packet(40050, 0, b"\x10\x01delta")), 1)
    before = (producer._max_seq, producer._cycles, producer.packets, len(sent))
    # libwebrtc's bandwidth probes: the whole payload is padding, no original sequence number
    for i in range(5):
        producer.receive_rtx(*_split(_rtx(7 + i, 0, b"", padding=224)), 2 + i)
    producer.receive_rtx(*_split(_rtx(12, 0, b"", padding=1)), 8)
    producer.receive_rtx(*_split(_rtx(13, 0, b"\x00", padding=0)), 9)  # truncated
    assert (producer._max_seq, producer._cycles, producer.packets, len(sent)) == before
    assert producer.rtx_padding == 7 and producer.retransmissions == 0
    assert producer.packets_lost == 0
    assert not [p for p in upstream if p[1] == 205]  # no bogus NACK (RTPFB)
    # a real retransmission with padding after its payload is still one
    producer.receive(*_split(_packet(40052, 0, b"\x10\x01d2")), 10)
    producer.receive_rtx(*_split(_rtx(14, 0, struct.pack("!H", 40051) + b"\x10\x01d1",
                                      padding=4)), 11)
    assert producer.retransmissions == 1 and producer.packets_lost == 0
    assert _parse(sent[-1], {}).payload.startswith(b"\x10\x01d1")
    producer.close()


def test_one_failing_subscriber_hurts_nobody_else(caplog: pytest.LogCaptureFixture) -> None:
    producer, first, first_sent = _consumer(VP8, ExtensionLayout())

    def broken(data: bytes) -> bool:
        raise RuntimeError("srtp_protect failed (10)")

    bad = Consumer("bad", producer, "mallory", ssrc=0x1111, rtx_ssrc=0x1112, send_rtp=broken,
                   send_rtcp=lambda d: True)
    bad.configure(100, 101, ExtensionLayout())
    bad.paused = False
    producer.add_consumer(bad)
    last, last_sent = _joiner(producer, "carol")
    last.paused = False
    full = Consumer("full", producer, "dave", ssrc=0x2222, rtx_ssrc=0x2223,
                    send_rtp=lambda d: False, send_rtcp=lambda d: True)  # socket full or gone
    full.configure(100, 101, ExtensionLayout())
    full.paused = False
    producer.add_consumer(full)
    with caplog.at_level(logging.WARNING, logger="sfu.consumer"):
        for i in range(10):
            if i != 5:  # a hole, repaired below
                producer.receive(*_split(_packet(100 + i, 0, b"\x10\x00k")), i)
        producer.receive_rtx(*_split(_rtx(1, 0, struct.pack("!H", 105) + b"\x10\x01old")), 20)
        bad.retransmit([bad._last_seq])
    assert len(first_sent) == len(last_sent) == 10  # every packet, after the failing one too
    assert bad.send_errors == 11 and bad.packets == 0
    assert full.packets_dropped == 10 and full.send_errors == 0
    assert len([r for r in caplog.records if "bad" in r.getMessage()]) == 1  # logged once
    producer.close()


async def test_raw_sender_drops_for_a_full_or_closed_socket_without_raising() -> None:
    import asyncio
    from types import SimpleNamespace

    import pylibsrtp
    from aiortc.rtcdtlstransport import State

    from sfu.aiortc_hooks import RawSender, SrtpStunProtocol

    loop = asyncio.get_running_loop()
    received: list[bytes] = []

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            received.append(data)

    sink, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    lost: list[object] = []
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: SrtpStunProtocol(SimpleNamespace(protocol_lost=lost.append)),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0))
    pair = SimpleNamespace(protocol=protocol, remote_addr=sink.get_extra_info("sockname"))
    policy = pylibsrtp.Policy(key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    dtls = SimpleNamespace(_state=State.CONNECTED, _tx_srtp=pylibsrtp.Session(policy=policy),
                           transport=SimpleNamespace(_connection=SimpleNamespace(
                               _nominated={1: pair})))
    raw = RawSender(dtls)  # type: ignore[arg-type]
    assert raw.send_rtp(_packet(1, 0, b"\x10\x00key"))
    protocol.pause_writing()  # asyncio: the socket's buffer is over its high-water mark
    assert not raw.send_rtp(_packet(2, 0, b"\x10\x00key"))
    protocol.resume_writing()
    assert raw.send_rtp(_packet(3, 0, b"\x10\x00key"))
    transport.close()
    await asyncio.sleep(0.01)
    assert lost == [protocol]
    assert not raw.send_rtp(_packet(4, 0, b"\x10\x00key")) and not raw.send_rtcp(rtcp_pli())  # gone: dropped, no raise
    await asyncio.sleep(0.05)
    assert len(received) == 2
    sink.close()


def rtcp_pli() -> bytes:
    from sfu import rtcp

    return rtcp.pli(1, 2)


@pytest.mark.parametrize("kind", ["rtp", "rtcp"])
async def test_raw_sender_checks_rtp_and_rtcp_alike_before_each_packet(kind: str) -> None:
    """Connected, on the pair aioice nominated now, writable, keyed with the session DTLS holds
    now: both kinds of packet wait for the first and follow the others."""
    import asyncio
    from types import SimpleNamespace

    import pylibsrtp
    from aiortc.rtcdtlstransport import State

    from sfu.aiortc_hooks import RawSender, SrtpStunProtocol

    loop = asyncio.get_running_loop()
    received: list[tuple[int, bytes]] = []

    def sink(index: int) -> type[asyncio.DatagramProtocol]:
        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                received.append((index, data))
        return Sink

    sinks = [(await loop.create_datagram_endpoint(sink(i), local_addr=("127.0.0.1", 0)))[0] for i in (0, 1)]
    sockets = [await loop.create_datagram_endpoint(
        lambda: SrtpStunProtocol(SimpleNamespace(protocol_lost=lambda _: None)),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0)) for _ in (0, 1)]
    pairs = [SimpleNamespace(protocol=protocol, remote_addr=s.get_extra_info("sockname"))
             for (_, protocol), s in zip(sockets, sinks)]

    def session(key: bytes, direction: int) -> pylibsrtp.Session:
        return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=direction))

    first, second = bytes(30), bytes(range(30))
    nominated: dict[int, object] = {}
    dtls = SimpleNamespace(_state=State.CONNECTING, _tx_srtp=session(first, pylibsrtp.Policy.SSRC_ANY_OUTBOUND),
                           transport=SimpleNamespace(_connection=SimpleNamespace(_nominated=nominated)))
    raw = RawSender(dtls)  # type: ignore[arg-type]
    send = raw.send_rtp if kind == "rtp" else raw.send_rtcp
    packets = iter([_packet(n, 0, b"\x10\x00key") if kind == "rtp" else rtcp_pli() for n in range(5)])
    nominated[1] = pairs[0]
    assert not send(next(packets))  # handshaking
    dtls._state = State.CONNECTED
    assert send(next(packets))
    pairs[0].protocol.pause_writing()
    assert not send(next(packets))  # the socket's buffer is full
    pairs[0].protocol.resume_writing()
    nominated[1] = pairs[1]  # aioice moved to another pair
    dtls._tx_srtp = session(second, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)  # DTLS keyed again
    assert send(next(packets))
    await asyncio.sleep(0.05)
    assert [index for index, _ in received] == [0, 1]
    for (_, data), key in zip(received, (first, second)):
        inbound = session(key, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        assert (inbound.unprotect if kind == "rtp" else inbound.unprotect_rtcp)(data)
    for transport, _ in sockets:
        transport.close()
    for s in sinks:
        s.close()


def test_a_full_mtu_payload_is_forwarded_and_protected_even_as_rtx() -> None:
    """A publisher on a 1,500-byte MTU (webrtcbin's default is 1,400 bytes of RTP) sends
    payloads up to ~1,450 bytes: each reaches the subscriber, with our longest header and as
    RTX, through SRTP."""
    import pylibsrtp

    from sfu.aiortc_hooks import fast_protect

    policy = pylibsrtp.Policy(key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    protect = fast_protect(pylibsrtp.Session(policy))
    producer, consumer, sent = _consumer(VP8, ExtensionLayout(mid_id=4, mid="x" * 16,
                                                              abs_send_time_id=9))
    payload = b"\x10\x00" + bytes(1500 - 20 - 8 - 10 - 12 - 2)  # IP, UDP, SRTP tag, RTP header
    producer.receive(*_split(_packet(1, 0, payload)), 0)
    assert producer.packets_oversized == 0 and len(sent) == 1
    consumer.retransmit([_parse(sent[0], {}).sequence_number])
    assert len(sent) == 2  # the RTX, 2 bytes longer
    for packet in sent:
        assert len(protect(packet)) == len(packet) + 10  # the HMAC-SHA1-80 tag
    producer.close()
