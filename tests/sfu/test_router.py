"""Rooms: ten participants, chat relay, active speaker, media state, stats, close cascade."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from sfu.api import (
    ActiveSpeaker,
    CloseRoom,
    Leave,
    MediaState,
    OpenRoom,
    RoomClosed,
    TransportClosed,
)
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.media_clients import EventHub, Publisher, Subscriber, track_stats

pytestmark = pytest.mark.integration


@pytest.fixture
async def plane() -> AsyncIterator[LocalMediaPlane]:
    plane = LocalMediaPlane(MediaOptions(loopback=True, media_state_debounce=1.0))
    plane.start()
    yield plane
    await plane.close()


async def _until(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def test_ten_participants_each_receive_all_others(plane: LocalMediaPlane) -> None:
    """Every participant publishes audio (two also video) and receives everyone else's tracks,
    counted as raw packets so that ten clients fit on a small machine."""
    hub = EventHub(plane)
    await plane.request(OpenRoom("big"))
    names = [f"p{i}" for i in range(10)]
    publishers = [
        Publisher(plane, "big", name, video=i < 2, amplitude=0.05) for i, name in enumerate(names)
    ]
    subscribers = [Subscriber(plane, hub, "big", name, decode=False) for name in names]
    try:
        for publisher in publishers:
            await publisher.start()
        for subscriber in subscribers:
            await subscriber.start()
        expected = {name: 9 + (2 if i >= 2 else 1) for i, name in enumerate(names)}

        def everyone_receives() -> bool:
            return all(
                len([n for n in s.packets.values() if n >= 10]) >= expected[s.participant_id]
                for s in subscribers
            )

        assert await _until(everyone_receives, 20), {
            s.participant_id: len(s.packets) for s in subscribers
        }
        stats = await track_stats(plane, "big")
        assert len([t for t in stats if t["direction"] == "inbound"]) == 12
        assert len([t for t in stats if t["direction"] == "outbound"]) == 12 * 9
        flowing = {e.participant_id for e in hub.of(MediaState) if e.flowing}
        assert flowing == set(names)
    finally:
        for client in subscribers + publishers:
            await client.close()


async def test_chat_is_relayed_to_the_others_with_the_sender(plane: LocalMediaPlane) -> None:
    hub = EventHub(plane)
    await plane.request(OpenRoom("chat"))
    alice = Publisher(plane, "chat", "alice", video=False)
    bob_pub = Publisher(plane, "chat", "bob", video=False)
    bob = Subscriber(plane, hub, "chat", "bob", decode=False)
    try:
        await alice.start()
        await bob_pub.start()
        await bob.start()
        assert await _until(lambda: alice.chat.readyState == "open")
        assert await _until(lambda: getattr(bob, "chat", None) is not None
                            and bob.chat.readyState == "open")
        alice.chat.send("hello bob")
        assert await _until(lambda: bool(bob.chat_received))
        assert bob.chat_received == [{"from": "alice", "message": "hello bob"}]
        # The sender does not get its own message back; oversized messages are dropped.
        alice.chat.send("x" * 5000)
        await asyncio.sleep(0.3)
        assert alice.chat_received == [] and len(bob.chat_received) == 1
        # After alice resumes on a fresh connection, her new chat channel is relayed too.
        await alice.close()
        alice = Publisher(plane, "chat", "alice", video=False)
        await alice.start()
        assert await _until(lambda: alice.chat.readyState == "open")
        alice.chat.send("back again")
        assert await _until(lambda: len(bob.chat_received) == 2)
        assert bob.chat_received[-1] == {"from": "alice", "message": "back again"}
    finally:
        for client in (bob, bob_pub, alice):
            await client.close()


async def test_loudest_participant_becomes_active_speaker(plane: LocalMediaPlane) -> None:
    hub = EventHub(plane)
    await plane.request(OpenRoom("talk"))
    quiet = Publisher(plane, "talk", "quiet", video=False, amplitude=0.001)
    loud = Publisher(plane, "talk", "loud", video=False, amplitude=0.8)
    try:
        await quiet.start()
        await loud.start()
        assert await _until(lambda: bool(hub.of(ActiveSpeaker)))
        await asyncio.sleep(1.0)
        speakers = hub.of(ActiveSpeaker)
        assert [s.participant_id for s in speakers] == ["loud"]
        assert speakers[0].level < 70
    finally:
        await quiet.close()
        await loud.close()


async def test_media_state_follows_rtp_and_close_cascades(plane: LocalMediaPlane) -> None:
    hub = EventHub(plane)
    await plane.request(OpenRoom("state"))
    alice = Publisher(plane, "state", "alice", video=False)
    bob = Subscriber(plane, hub, "state", "bob", decode=False)
    try:
        await alice.start()
        await bob.start()
        assert await _until(lambda: any(e.flowing for e in hub.of(MediaState)
                                        if e.participant_id == "alice"))
        await alice.close()  # media stops without a goodbye: debounce, then "stopped"
        assert await _until(lambda: any(not e.flowing for e in hub.of(MediaState)
                                        if e.participant_id == "alice"), 6)
        router = plane.rooms["state"]
        await plane.request(Leave("state", "alice"))
        assert "alice" not in router.participants
        assert not router.producers, "closing the transport left its producers behind"
        assert [e.participant_id for e in hub.of(TransportClosed)] == ["alice"]
        await plane.request(CloseRoom("state"))
        assert hub.of(RoomClosed) and "state" not in plane.rooms
        assert {(e.participant_id, e.transport) for e in hub.of(TransportClosed)} == {
            ("alice", "publish"), ("bob", "subscribe")
        }
    finally:
        await bob.close()


async def test_sender_reports_are_spread_over_the_second_not_sent_in_one_burst() -> None:
    from sfu.consumer import Consumer
    from sfu.producer import Codec, Producer
    from sfu.router import RTCP_EVERY, Router

    router = Router("room", MediaOptions(loopback=True), lambda message: None)
    producer: Producer[Consumer] = Producer("p", "alice", "video", Codec("video/VP8", 90000, 96), max_bitrate=0,
                        keyframe_interval=1.0)
    router.producers[producer.id] = producer
    reports: dict[int, int] = {}
    def counter(ssrc: int) -> Callable[[bytes], bool]:
        def count(data: bytes) -> bool:
            reports[ssrc] = reports.get(ssrc, 0) + 1
            return True
        return count

    for ssrc in range(1000, 1064):
        consumer = Consumer(f"c{ssrc}", producer, f"bob{ssrc}", ssrc=ssrc, rtx_ssrc=ssrc + 5000,
                            send_rtp=lambda d: True, send_rtcp=counter(ssrc))
        consumer.packets, consumer.bytes = 1, 1000  # it has sent something, so it reports
        producer.add_consumer(consumer)
    per_tick = []
    for slot in range(RTCP_EVERY):
        before = sum(reports.values())
        router._report(slot)
        per_tick.append(sum(reports.values()) - before)
    assert sorted(reports) == list(range(1000, 1064)) and set(reports.values()) == {1}
    # each tick carries its slice of the subscribers only (by a hash of their ids: about a
    # quarter each, never all at once but with odds below 1e-10)
    assert max(per_tick) <= 40
    for consumer in producer.consumers:
        consumer.bytes += 12_500
    for slot in range(RTCP_EVERY):
        router._report(slot)
    assert {c.bitrate for c in producer.consumers} == {100_000}  # 12.5 kB over the 1 s period
    await router.close()


async def test_each_connections_reports_of_a_second_leave_in_one_compound_packet() -> None:
    """A subscriber's sender reports for its two streams, and a publisher's receiver reports
    for its two, each in one RTCP compound (one SRTCP datagram per connection, not
    one per stream)."""
    from aiortc.rtp import RtcpPacket, RtcpRrPacket, RtcpSrPacket

    from sfu.consumer import Consumer
    from sfu.producer import Codec, Producer
    from sfu.router import RTCP_EVERY, Router

    class Connection:  # its bound send method, one per stream: as a transport's RawSender
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send(self, data: bytes) -> bool:
            self.sent.append(data)
            return True

    router = Router("room", MediaOptions(loopback=True), lambda message: None)
    alice, bob = Connection(), Connection()  # alice's publish connection, bob's subscribe one
    for kind, codec in (("audio", Codec("audio/opus", 48000, 111, None, 2)),
                        ("video", Codec("video/VP8", 90000, 96, 97))):
        producer: Producer[Consumer] = Producer(kind, "alice", kind, codec, max_bitrate=0,
                                                keyframe_interval=1.0)
        ssrc = 1 if kind == "audio" else 2
        producer.attach_source(ssrc, None, 0, alice.send)
        data = bytes([0x80, codec.payload_type, 0, 1]) + bytes(4) + ssrc.to_bytes(4, "big") \
            + b"\x10\x00" + bytes(100)
        producer.receive(data, 0x80, codec.payload_type, 1, 0, 12, 1000)
        router.producers[producer.id] = producer
        consumer = Consumer(f"{kind}>bob", producer, "bob", ssrc=10 + ssrc,
                            rtx_ssrc=20 + ssrc, send_rtp=lambda d: True,
                            send_rtcp=bob.send)
        consumer.packets, consumer.bytes = 1, 1000
        producer.add_consumer(consumer)
    alice.sent.clear()  # (a keyframe request at the start)
    for slot in range(RTCP_EVERY):
        router._report(slot)
    (sent_up,), (sent_down,) = alice.sent, bob.sent
    up = RtcpPacket.parse(sent_up)
    assert isinstance(up[0], RtcpRrPacket)  # a compound starts with a report
    assert sorted(p.reports[0].ssrc for p in up if isinstance(p, RtcpRrPacket)) == [1, 2]
    down = RtcpPacket.parse(sent_down)
    assert all(isinstance(p, RtcpSrPacket) for p in down)
    assert sorted(p.ssrc for p in down if isinstance(p, RtcpSrPacket)) == [11, 12]
    await router.close()


async def test_the_rooms_of_a_loop_tick_on_one_timer_until_they_close() -> None:
    from sfu.router import TICK, Router

    loop = asyncio.get_running_loop()

    def timers() -> int:
        return sum(not timer.cancelled() for timer in loop._scheduled)  # type: ignore[attr-defined]

    timers_before = timers()
    rooms = [Router(f"room{i}", MediaOptions(loopback=True), lambda message: None) for i in range(5)]
    ticks: dict[str, int] = {}
    for room in rooms:
        real = room._report

        def report(slot: int, room: Router = room, real: Callable[[int], None] = real) -> None:
            ticks[room.id] = ticks.get(room.id, 0) + 1
            real(slot)

        room._report = report  # type: ignore[method-assign]
    assert timers() == timers_before + 1
    await asyncio.sleep(TICK * 2.5)
    assert ticks == {room.id: 2 for room in rooms}  # every room, every tick
    await rooms[0].close()
    await asyncio.sleep(TICK)
    assert ticks["room0"] == 2 and ticks["room1"] == 3  # a closed room no longer ticks
    for room in rooms[1:]:
        await room.close()
    assert timers() == timers_before
