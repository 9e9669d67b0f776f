"""The SFU runs on uvloop (its worker processes will): the same decode check on uvloop's loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from sfu.api import OpenRoom
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.media_clients import EventHub, Publisher, Subscriber

pytestmark = pytest.mark.integration


async def _forward() -> list[int]:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    hub = EventHub(plane)
    await plane.request(OpenRoom("uv"))
    publisher = Publisher(plane, "uv", "alice")
    subscriber = Subscriber(plane, hub, "uv", "bob")
    try:
        await publisher.start()
        await subscriber.start()
        await subscriber.wait_frames(20)
        return subscriber.counters()
    finally:
        await subscriber.close()
        await publisher.close()
        await plane.close()


def test_forwarding_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        counters = runner.run(_forward())
    assert len(counters) >= 20 and counters == sorted(counters)
