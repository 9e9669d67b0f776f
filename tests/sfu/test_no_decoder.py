"""Proof that the SFU forwards without decoding: aiortc's jitter buffer and decoder are never
entered, and no decoder thread exists, while media flows publisher -> SFU -> subscriber."""

from __future__ import annotations

import asyncio
import threading

import pytest
from aiortc import rtcrtpreceiver

from sfu.api import OpenRoom
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.media_clients import EventHub, Publisher, Subscriber

pytestmark = pytest.mark.integration


async def test_no_jitter_buffer_no_decoder_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    entered: list[str] = []
    original_add = rtcrtpreceiver.JitterBuffer.add

    def spy_add(self, packet):  # type: ignore[no-untyped-def]
        entered.append("JitterBuffer.add")
        return original_add(self, packet)

    def spy_worker(*args):  # type: ignore[no-untyped-def]
        entered.append("decoder_worker")

    monkeypatch.setattr(rtcrtpreceiver.JitterBuffer, "add", spy_add)
    monkeypatch.setattr(rtcrtpreceiver, "decoder_worker", spy_worker)
    monkeypatch.setattr(rtcrtpreceiver, "get_decoder", lambda codec: entered.append("decoder"))

    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()

    hub = EventHub(plane)
    await plane.request(OpenRoom("room"))
    # The clients do not decode either (raw packet counters): anything entered is the SFU's.
    publisher = Publisher(plane, "room", "alice")
    subscriber = Subscriber(plane, hub, "room", "bob", decode=False)
    try:
        await publisher.start()
        await subscriber.start()
        for _ in range(100):
            if sum(subscriber.packets.values()) > 100:
                break
            await asyncio.sleep(0.05)
        assert sum(subscriber.packets.values()) > 100, "media did not flow"
        assert entered == [], f"the SFU entered {sorted(set(entered))}"
        decoders = [t.name for t in threading.enumerate() if t.name.endswith("-decoder")]
        assert decoders == []
        # And in the SFU's own receivers, aiortc's decoder thread slot stayed empty.
        router = plane.rooms["room"]
        transport = router.participants["alice"].publish
        assert transport is not None
        receivers = [t.receiver for t in transport.pc.getTransceivers()]
        assert receivers and all(
            r._RTCRtpReceiver__decoder_thread is None for r in receivers  # type: ignore[attr-defined]
        )
    finally:
        await subscriber.close()
        await publisher.close()
        await plane.close()
