"""Real VP8 and Opus through the SFU over 127.0.0.1: what the subscriber decodes is what was sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sfu.api import CloseRoom, OpenRoom
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.media_clients import EventHub, Publisher, Subscriber, track_stats

pytestmark = pytest.mark.integration


@pytest.fixture(params=["one socket per worker", "a socket per connection"])
async def plane(request: pytest.FixtureRequest) -> AsyncIterator[LocalMediaPlane]:
    """Both media paths: the default shared socket (sfu/udp_mux.py) and the opt-out."""
    per_connection = request.param == "a socket per connection"
    plane = LocalMediaPlane(MediaOptions(loopback=True, per_connection_sockets=per_connection))
    assert (plane.mux is None) == per_connection
    plane.start()
    yield plane
    await plane.close()


async def test_vp8_and_opus_reach_the_subscriber_intact(plane: LocalMediaPlane) -> None:
    hub = EventHub(plane)
    await plane.request(OpenRoom("room-1"))
    publisher = Publisher(plane, "room-1", "alice")
    subscriber = Subscriber(plane, hub, "room-1", "bob")
    try:
        await publisher.start()
        await subscriber.start()
        await subscriber.wait_frames(45)
        counters = subscriber.counters()
        assert len(counters) >= 45, f"only {len(counters)} frames decoded"
        # Decoded pictures carry the numbers the publisher drew, in order, without repeats.
        assert counters == sorted(counters), str(counters)
        assert len(set(counters)) == len(counters), str(counters)
        assert max(counters) <= publisher.video_track.counter
        assert subscriber.audio_frames > 0
    finally:
        await subscriber.close()
        await publisher.close()
        await plane.request(CloseRoom("room-1"))


async def test_h264_is_forwarded_too(plane: LocalMediaPlane) -> None:
    hub = EventHub(plane)
    await plane.request(OpenRoom("room-h264"))
    publisher = Publisher(plane, "room-h264", "alice", audio=False, video_codec="video/H264")
    subscriber = Subscriber(plane, hub, "room-h264", "bob")
    try:
        await publisher.start()
        await subscriber.start()
        await subscriber.wait_frames(20)
        counters = subscriber.counters()
        assert len(counters) >= 20, f"only {len(counters)} H.264 frames decoded"
        assert counters == sorted(counters) and len(set(counters)) == len(counters)
        (track,) = [t for t in await track_stats(plane, "room-h264")
                    if t["direction"] == "inbound"]
        assert track["codec"] == "video/H264"
    finally:
        await subscriber.close()
        await publisher.close()


async def test_late_joiner_gets_its_first_frame_within_a_second(plane: LocalMediaPlane) -> None:
    hub = EventHub(plane)
    await plane.request(OpenRoom("room-late"))
    publisher = Publisher(plane, "room-late", "alice", audio=False)
    early = Subscriber(plane, hub, "room-late", "bob")
    late = Subscriber(plane, hub, "room-late", "carol")
    try:
        await publisher.start()
        await early.start()
        await early.wait_frames(30)
        # Long after the publisher's first keyframe: only a keyframe requested on join helps.
        await asyncio.sleep(1.5)
        joined = asyncio.get_running_loop().time()
        await late.start()
        await late.wait_frames(1, timeout=5)
        assert late.frames, "the late joiner decoded nothing"
        first = late.frames[0][0] - joined
        assert first < 1.0, f"first frame after {first:.3f} s"
    finally:
        for client in (late, early, publisher):
            await client.close()


async def test_video_survives_five_percent_loss_thanks_to_nack(plane: LocalMediaPlane) -> None:
    hub = EventHub(plane)
    await plane.request(OpenRoom("room-loss"))
    publisher = Publisher(plane, "room-loss", "alice", audio=False)
    subscriber = Subscriber(plane, hub, "room-loss", "bob", loss=0.05)
    try:
        await publisher.start()
        await subscriber.start()
        await subscriber.wait_frames(10)
        start = len(subscriber.frames)
        await asyncio.sleep(2.0)
        window = subscriber.frames[start:]
        fps = len(window) / 2.0
        assert fps >= 25, f"{fps:.1f} fps under 5% loss"
        counters = [c for _, c in window]
        assert counters == sorted(counters), "frames decoded out of order"
        stats = await track_stats(plane, "room-loss")
        outbound = [t for t in stats if t["direction"] == "outbound"]
        assert outbound and outbound[0]["retransmitted"] > 0, "no NACK was answered"
        # Our sender reports came back in the subscriber's receiver reports (RTT), and its
        # bandwidth estimate (REMB, from our abs-send-time) arrives once it has one.
        assert outbound[0]["rtt"] is not None and 0 <= outbound[0]["rtt"] < 0.5
        for _ in range(80):
            stats = await track_stats(plane, "room-loss")
            remb = next(t["remb"] for t in stats if t["direction"] == "outbound")
            if remb:
                break
            await asyncio.sleep(0.1)
        assert remb > 0, "no REMB from the subscriber"
    finally:
        await subscriber.close()
        await publisher.close()
