"""Real VP8 and Opus through the SFU over 127.0.0.1: what the subscriber decodes is what was sent."""

from __future__ import annotations

import asyncio

import pytest

from sfu.api import CloseRoom, OpenRoom
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.media_clients import EventHub, Publisher, Subscriber


@pytest.fixture
async def plane():
    plane = LocalMediaPlane(MediaOptions(loopback=True))
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
        assert counters == sorted(counters)
        assert len(set(counters)) == len(counters)
        assert max(counters) <= publisher.video_track.counter
        assert subscriber.audio_frames > 0
    finally:
        await subscriber.close()
        await publisher.close()
        await plane.request(CloseRoom("room-1"))
