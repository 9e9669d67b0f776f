"""WorkerPool (sfu/pool.py) with real worker processes and real aiortc peers over 127.0.0.1: rooms
spread over the workers, media through one, and a worker SIGKILLed mid-call."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest

from sfu.api import (
    GetStats,
    MediaError,
    MediaState,
    Message,
    Offer,
    OpenRoom,
    RoomClosed,
    RoomRestarted,
    Stats,
    Subscribe,
)
from sfu.options import MediaOptions
from sfu.pool import WorkerPool, WorkerState
from tests.media_clients import EventHub, Publisher, Subscriber

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    plane = WorkerPool(MediaOptions(loopback=True), 2)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.close()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.05)


async def call(pool: WorkerPool, hub: EventHub, room: str) -> tuple[Publisher, Subscriber]:
    publisher = Publisher(pool, room, "alice")
    subscriber = Subscriber(pool, hub, room, "bob")
    await publisher.start()
    await subscriber.start()
    return publisher, subscriber


async def test_rooms_spread_over_the_workers_and_media_flows_through_one(pool: WorkerPool) -> None:
    events: list[Message] = []
    pool.on_event(events.append)
    hub = EventHub(pool)
    for i in range(4):
        await pool.request(OpenRoom(f"room-{i}", {"session": i}))
    hosts = {room: worker.index for room, worker in pool.placement.items()}
    assert set(hosts.values()) == {0, 1}, hosts
    pids = [worker.pid for worker in pool.health()]
    assert len(set(pids)) == 2 and os.getpid() not in pids

    publisher, subscriber = await call(pool, hub, "room-0")
    try:
        await subscriber.wait_frames(20)
        counters = subscriber.counters()
        assert len(counters) >= 20 and counters == sorted(counters)
        stats = await pool.request(GetStats("room-0"))
        assert isinstance(stats, Stats)
        assert any(t["direction"] == "inbound" and t["kind"] == "video" and t["packets"] > 0 for t in stats.tracks)
        assert "alice" in {e.participant_id for e in hub.of(MediaState) if e.flowing}
        # the hosting worker reports the call's load: alice's audio and video in, and out to bob
        host = pool.placement["room-0"]
        await until(lambda: host.streams == 4 and host.packets_per_second > 50 and host.cpu > 0)
        with pytest.raises(MediaError) as info:
            await pool.request(Subscribe("nowhere", "bob"))
        assert info.value.code == "unknown_room"
        with pytest.raises(MediaError) as info:
            await pool.request(RoomClosed("room-0", "x"))
        assert info.value.code == "bad_message"
        with pytest.raises(MediaError) as info:  # more than a frame carries: refused before it leaves
            await pool.request(Offer("room-0", "carol", "publish", "v=0\r\n" + "a=x\r\n" * (1 << 20)))
        assert info.value.code == "bad_message" and "exceeds" in info.value.message
    finally:
        await subscriber.close()
        await publisher.close()
    processes = [worker.process for worker in pool.workers]
    await pool.close()
    assert all(p is not None and p.poll() == 0 for p in processes)
    assert sorted(e.room_id for e in events if isinstance(e, RoomClosed) and e.reason == "shutdown") == [
        f"room-{i}" for i in range(4)]


async def test_a_worker_killed_mid_call_is_restarted_and_its_room_placed_again(pool: WorkerPool) -> None:
    events: list[Message] = []
    pool.on_event(events.append)
    hub = EventHub(pool)
    await pool.request(OpenRoom("call", {"expert_id": "erin"}))
    await pool.request(OpenRoom("other"))
    victim = pool.placement["call"]
    survivor = pool.placement["other"]
    assert victim is not survivor
    publisher, subscriber = await call(pool, hub, "call")
    try:
        await subscriber.wait_frames(10)
        assert len(subscriber.frames) >= 10
        dead_pid = victim.pid
        os.kill(dead_pid, signal.SIGKILL)
        await until(lambda: RoomRestarted("call", "worker_lost") in events)
        assert pool.placement["call"] is survivor  # the one that was up took the room at once
        assert pool.placement["other"] is survivor  # and kept its own
    finally:
        await subscriber.close()
        await publisher.close()
    # Media starts over from new connections, as after a resume.
    publisher, subscriber = await call(pool, hub, "call")
    try:
        await subscriber.wait_frames(10)
        assert len(subscriber.frames) >= 10
    finally:
        await subscriber.close()
        await publisher.close()
    await until(lambda: victim.up)
    assert victim.pid != dead_pid and victim.restarts == 1
    assert not [e for e in events if isinstance(e, RoomClosed)]


async def test_a_worker_that_breaks_the_channel_is_killed_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = WorkerPool(MediaOptions(loopback=True), 1)
    await pool.start()
    try:
        worker = pool.workers[0]
        first_pid = worker.pid
        await pool.request(OpenRoom("r"))
        assert worker.channel is not None
        with caplog.at_level(logging.ERROR, logger="sfu.pool"):
            worker.channel.reader.feed_data((3).to_bytes(4, "big") + b"\xc1\xc1\xc1")  # as if the worker wrote it
            await until(lambda: worker.up and worker.pid != first_pid, timeout=60)
        assert "sfu worker 0 broke the channel: not msgpack" in caplog.text
        # alone in its pool, the room waited for the worker to come back, then opened there again
        assert pool.placement["r"] is worker and worker.restarts == 1
        assert isinstance(await pool.request(GetStats("r")), Stats)
    finally:
        await pool.close()


async def test_closing_while_a_dead_workers_room_waits_for_a_worker_closes_the_room() -> None:
    pool = WorkerPool(MediaOptions(loopback=True), 1)
    events: list[Message] = []
    pool.on_event(events.append)
    await pool.start()
    worker = pool.workers[0]
    await pool.request(OpenRoom("r"))
    os.kill(worker.pid, signal.SIGKILL)
    await until(lambda: "r" in pool._moving)  # its only worker is gone: the room waits for it
    await pool.close()
    assert RoomClosed("r", "worker_lost") in events
    assert worker.reader is not None and worker.reader.done()


async def test_a_reply_too_large_to_carry_still_answers_the_request() -> None:
    import socket

    from sfu.channel import MAX_FRAME, Channel
    from sfu.worker import LocalMediaPlane
    from sfu.worker_process import WorkerServer

    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    server = WorkerServer(Channel(reader, writer), plane)
    peer_reader, peer_writer = await asyncio.open_unix_connection(sock=theirs)
    try:
        server._send({"t": "reply", "id": 5, "message": Stats("r", [{"blob": "x" * MAX_FRAME}]).to_dict()})
        frame = await Channel(peer_reader, peer_writer).receive()
        assert frame["t"] == "error" and frame["id"] == 5 and frame["code"] == "media_failed"
    finally:
        await plane.close()
        writer.close()
        peer_writer.close()


def test_placement_prefers_spare_cpu_then_fewer_streams_counting_rooms_not_yet_reported() -> None:
    def least(*workers: WorkerState) -> int:
        return min(workers, key=WorkerState.placement_key).index

    busy, idle = WorkerState(0, cpu=0.6, streams=8), WorkerState(1, cpu=0.1, streams=40)
    assert least(busy, idle) == 1  # CPU first: streams differ in cost
    a, b = WorkerState(0, cpu=0.31, streams=16), WorkerState(1, cpu=0.29, streams=8)
    assert least(a, b) == 1  # CPU within a step: the fewer streams
    b.placed = 2  # two rooms placed since b last reported: 16 streams expected on top of its 8
    assert least(a, b) == 0
    c, d = WorkerState(0, packets_per_second=9000.0), WorkerState(1, packets_per_second=100.0)
    assert least(c, d) == 1


async def test_a_hung_worker_is_killed_and_its_requests_in_flight_fail_coded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = WorkerPool(MediaOptions(loopback=True), 2, stall_seconds=2.0)
    events: list[Message] = []
    pool.on_event(events.append)
    await pool.start()
    try:
        await pool.request(OpenRoom("r"))
        hung = pool.placement["r"]
        hung_pid = hung.pid
        os.kill(hung_pid, signal.SIGSTOP)  # alive, silent: no reply, no load report
        with caplog.at_level(logging.ERROR, logger="sfu.pool"):
            with pytest.raises(MediaError) as info:
                await pool.request(GetStats("r"))
        assert info.value.code == "media_restarted"
        assert f"sfu worker {hung.index} sent nothing for 2 s; killing it" in caplog.text
        await until(lambda: RoomRestarted("r", "worker_lost") in events)
        assert isinstance(await pool.request(GetStats("r")), Stats)  # on the other worker now
        await until(lambda: hung.up, timeout=60)
        assert hung.pid != hung_pid
    finally:
        await pool.close()


async def test_a_pool_whose_workers_cannot_start_says_so_and_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sfu.pool.sys.executable", "/bin/false")  # exits at once: the channel ends
    pool = WorkerPool(MediaOptions(loopback=True), 2)
    with pytest.raises(MediaError) as info:
        await pool.start()
    assert info.value.code == "media_unavailable" and "did not start" in info.value.message
    assert all(w.process is not None and w.process.poll() is not None for w in pool.workers)
    with pytest.raises(MediaError) as info:
        await pool.request(OpenRoom("r"))
    assert info.value.code == "closed"


async def test_the_load_report_is_a_heartbeat_even_when_reading_the_load_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    from sfu import worker_process
    from sfu.channel import Channel, ChannelClosed
    from sfu.worker import LocalMediaPlane
    from sfu.worker_process import WorkerServer

    def broken(self: object) -> dict[str, object]:
        raise AttributeError("a router changed shape")

    monkeypatch.setattr(worker_process.Load, "report", broken)
    monkeypatch.setattr(worker_process, "LOAD_INTERVAL", 0.05)
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    server = WorkerServer(Channel(reader, writer), plane)
    task = asyncio.create_task(server.serve())
    peer_reader, peer_writer = await asyncio.open_unix_connection(sock=theirs)
    try:
        with caplog.at_level(logging.ERROR):
            frame = await asyncio.wait_for(Channel(peer_reader, peer_writer).receive(), 10)
        assert frame == {"t": "load", "rooms": 0, "streams": 0, "packets_per_second": 0.0, "cpu": 0.0, "dropped": 0,
                         "draining": False}
        assert "could not read this worker's load" in caplog.text
    finally:
        peer_writer.close()  # the pool is gone: the worker stops serving
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(task, 10)
        writer.close()
