"""Congestion per subscriber without simulcast (sfu/congestion.py): the policy, then the router
applying it to real producers and consumers."""

from __future__ import annotations

import struct

import pytest

from aiortc.rtp import RtcpPacket, RtcpPsfbPacket

from sfu import congestion, rtcp
from sfu.api import MediaError, MediaQuality, Message
from sfu.congestion import VideoGate
from sfu.consumer import Consumer
from sfu.forwarder import ExtensionLayout
from sfu.options import CongestionOptions, MediaOptions
from sfu.producer import Codec, Producer
from sfu.router import Router
from sfu.transport import Transport

PAUSE_AFTER = CongestionOptions().pause_after
RESUME_AFTER = CongestionOptions().resume_after
PROBE_AFTER = CongestionOptions().probe_after
VP8 = Codec("video/VP8", 90000, 97, nack=True, pli=True, remb=True)
OPUS = Codec("audio/opus", 48000, 111)


def test_an_estimate_is_shared_among_the_streams_it_covers() -> None:
    assert congestion.share(1_000_000, [900_000, 100_000]) == [900_000, 100_000]
    assert congestion.share(1_000_000, [0, 0]) == [500_000, 500_000]  # no bitrates yet


def test_the_publisher_follows_the_subscribers_that_can_take_the_stream() -> None:
    # the 300 kbps subscriber is far below the others: it does not set everyone's quality
    assert congestion.remb_target([2_000_000, 1_500_000, 300_000, 0], 2_500_000, 150_000) \
        == 1_500_000
    assert congestion.remb_target([900_000, 700_000], 2_500_000, 150_000) == 700_000
    assert congestion.remb_target([100_000, 90_000], 2_500_000, 150_000) == 150_000
    assert congestion.remb_target([], 2_500_000, 150_000) == 2_500_000


def test_the_gate_pauses_after_a_sustained_shortfall_and_resumes_after_a_recovery() -> None:
    gate = VideoGate()
    t = 0.0
    assert gate.update(1_000_000, 0, 1_000_000, t) is None  # enough
    decisions = []
    while t < PAUSE_AFTER + 1:
        t += 1
        decisions.append(gate.update(500_000, 0, 1_000_000, t))
    assert decisions[-1] is True and decisions.count(True) == 1 and gate.paused
    t += 1
    assert gate.update(1_200_000, 0, 1_000_000, t) is None  # recovering ...
    t += RESUME_AFTER
    assert gate.update(1_200_000, 0, 1_000_000, t) is False and not gate.paused  # ... resumed

    gate = VideoGate()
    for t in range(int(PAUSE_AFTER) + 1):  # loss alone also pauses
        decision = gate.update(0, 60, 1_000_000, float(t))
    assert decision is True
    # loss cannot show gone without video: a good estimate does not resume it, a probe does
    for t in range(int(PAUSE_AFTER) + 1, int(PAUSE_AFTER + RESUME_AFTER) + 3):
        assert gate.update(2_000_000, 0, 1_000_000, float(t)) is None
    assert gate.update(100_000, 0, 1_000_000, PAUSE_AFTER + PROBE_AFTER) is False
    assert gate.probe_after == 2 * PROBE_AFTER  # the next probe waits longer ...
    for t in range(int(PAUSE_AFTER + PROBE_AFTER) + 1, int(PAUSE_AFTER + PROBE_AFTER) + 5):
        decision = gate.update(0, 60, 1_000_000, float(t))
    assert decision is True  # (it congested again)
    assert gate.update(0, 0, 1_000_000, PAUSE_AFTER + 3 * PROBE_AFTER) is None
    assert gate.update(0, 0, 1_000_000, PAUSE_AFTER + 4 * PROBE_AFTER) is False


def _sink(producer: Producer, name: str, ssrc: int) -> tuple[Consumer, list[bytes]]:
    sent: list[bytes] = []
    consumer = Consumer(f"{producer.id}>{name}", producer, name, ssrc=ssrc, rtx_ssrc=ssrc + 1,
                        send_rtp=lambda d: sent.append(d) or True, send_rtcp=lambda d: True)
    consumer.configure(100, None, ExtensionLayout())
    producer.add_consumer(consumer)
    consumer.paused = False
    return consumer, sent


def _media(producer: Producer, seq: int, arrival_ms: int, key: bool = False) -> None:
    payload = (b"\x10\x00" if key else b"\x10\x01") + bytes(500)
    pt = producer.codec.payload_type
    data = struct.pack("!BBHII", 0x80, pt, seq, seq * 3000, producer.ssrc or 0) + payload
    producer.receive(data, 0x80, pt, seq, seq * 3000, 12, arrival_ms)


async def test_a_slow_subscriber_loses_only_its_own_video_and_gets_it_back_on_a_keyframe() -> None:
    events: list[Message] = []
    router = Router("room", MediaOptions(loopback=True), events.append)
    video = router.create_producer("alice", "0", "video", VP8)
    audio = router.create_producer("alice", "1", "audio", OPUS)
    upstream: list[bytes] = []
    video.attach_source(1234, None, 0, lambda d: upstream.append(d) or True)
    audio.attach_source(5678, None, 0, lambda d: True)
    fast, fast_sent = _sink(video, "bob", 10)
    slow, slow_sent = _sink(video, "carol", 20)
    slow_audio, slow_audio_sent = _sink(audio, "carol", 30)
    fast.remb_bitrate, slow.remb_bitrate = 2_000_000, 300_000
    video.bitrate = 1_200_000
    now = 100.0
    for _ in range(int(PAUSE_AFTER) + 1):
        router._gate_video(video, now)
        now += 1
    (event,) = [e for e in events if isinstance(e, MediaQuality)]
    assert event == MediaQuality("room", "carol", "alice", "alice:0", True, "congestion",
                                 300_000, 1_200_000, 0)
    assert slow.gate.paused and not fast.gate.paused

    for seq in range(1, 4):
        _media(video, seq, seq)
        _media(audio, seq, seq)
    assert len(fast_sent) == 3 and slow_sent == []  # its video stops, for it alone ...
    assert len(slow_audio_sent) == 3  # ... and its audio goes on
    # the publisher is asked for what bob can take, not carol
    assert video.target_bitrate() == 2_000_000
    slow.resume()  # e.g. its transport reconnects: still paused for congestion
    assert slow.gate.paused and slow.paused

    slow.remb_bitrate = 1_500_000  # it recovers
    upstream.clear()
    for _ in range(int(RESUME_AFTER) + 1):
        router._gate_video(video, now)
        now += 1
    assert [e.video_paused for e in events if isinstance(e, MediaQuality)] == [True, False]
    assert any(isinstance(p, RtcpPsfbPacket) and p.fmt == rtcp.FMT_PLI
               for d in upstream for p in RtcpPacket.parse(d))  # a keyframe is asked for
    _media(video, 4, 4)
    assert slow_sent == []  # a delta frame is no use to it ...
    _media(video, 5, 5, key=True)
    assert len(slow_sent) == 1  # ... it starts again on the keyframe
    stats = {t["participant_id"]: t for t in router.stats() if t["direction"] == "outbound"
             and t["kind"] == "video"}
    assert stats["carol"]["video_paused"] is False
    await router.close()


async def test_a_remb_for_several_streams_is_shared_not_given_to_each() -> None:
    router = Router("room", MediaOptions(loopback=True), lambda m: None)
    transport = Transport(router, "carol", "subscribe")
    video: Producer[Consumer] = Producer("v", "alice", "video", VP8, max_bitrate=0, keyframe_interval=1.0)
    audio: Producer[Consumer] = Producer("a", "alice", "audio", OPUS, max_bitrate=0, keyframe_interval=1.0)
    video.bitrate, audio.bitrate = 950_000, 50_000
    v, _ = _sink(video, "carol", 40)
    a, _ = _sink(audio, "carol", 50)
    transport._rtcp_consumers = {40: v, 50: a}
    transport._receive_rtcp(rtcp.remb(1, 1_000_000, [40, 50]))
    assert (v.remb_bitrate, a.remb_bitrate) == (950_000, 50_000)
    await transport.close()
    await router.close()


async def test_the_policy_is_set_in_the_media_options() -> None:
    strict = CongestionOptions(pause_below=0.95, pause_after=1.0, min_video_bitrate=100_000,
                               follow_fraction=0.1)
    options = MediaOptions(loopback=True, congestion=strict)
    assert MediaOptions.from_dict(options.to_dict()) == options  # as a worker process gets it
    events: list[Message] = []
    router = Router("room", options, events.append)
    video = router.create_producer("alice", "0", "video", VP8)
    video.attach_source(1234, None, 0, lambda d: True)
    transports = [Transport(router, name, "subscribe") for name in ("bob", "carol")]
    near, far = (t.add_consumer(video) for t in transports)
    assert near is not None and far is not None
    for consumer in (near, far):
        consumer.paused = False
    near.remb_bitrate, video.bitrate = 900_000, 1_000_000  # 90%: enough by default, not here
    far.remb_bitrate = 2_000_000
    router._gate_video(video, 0.0)
    router._gate_video(video, 1.0)
    assert near.gate.paused and not far.gate.paused
    assert [e.participant_id for e in events if isinstance(e, MediaQuality)] == ["bob"]
    # 200 kbps counts as able to take video, and a tenth of the median is close enough
    assert congestion.remb_target([2_000_000, 200_000], 0, 0, strict) == 200_000
    assert congestion.remb_target([2_000_000, 200_000], 0, 0) == 2_000_000
    for transport in transports:
        await transport.close()
    await router.close()


@pytest.mark.parametrize("bad", [
    {"pause_below": 0.0}, {"pause_below": 1.5}, {"follow_fraction": 0.0}, {"pause_loss": 256},
    {"pause_loss": -1}, {"pause_after": 0.0}, {"resume_after": -1.0}, {"probe_after": 0.0},
    {"probe_after": 10.0, "max_probe_after": 5.0}, {"min_video_bitrate": -1},
    {"probe_reset_after": -1.0},
])
def test_a_policy_that_makes_no_sense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(MediaError) as caught:
        CongestionOptions(**bad)  # type: ignore[arg-type]
    assert caught.value.code == "bad_options"
