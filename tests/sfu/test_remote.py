"""RemoteNodes (sfu/remote.py) over real SFU node servers and the registry in a real Redis: rooms
placed on the least loaded node, each room's events only to the signalling node that opened it,
a node lost -> its rooms open again on another with RoomRestarted("node_lost"), and a signalling
node without the key never links."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator, Callable

import pytest

from sfu.api import CloseRoom, GetStats, MediaError, Message, OpenRoom, RoomRestarted, Stats
from sfu.node_link import link_key
from sfu.node_registry import NodeRegistry
from sfu.node_server import NodeServer, load_of
from sfu.options import MediaOptions
from sfu.remote import RemoteNodes
from sfu.worker import LocalMediaPlane

from ..backends import REDIS_URL, delete_prefix, redis_available
from ..externals import require

KEY = link_key("remote-secret-0123456789abcdef-0123456789")


class Node:
    """An SFU node's server and plane, in this process."""

    def __init__(self, node_id: str, prefix: str) -> None:
        self.plane = LocalMediaPlane(MediaOptions(loopback=True))
        self.server = NodeServer(self.plane, load_of(self.plane), KEY, node_id, NodeRegistry(REDIS_URL, prefix))

    async def close(self) -> None:
        await self.server.close()
        await self.plane.close()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    require(redis_available(), "redis-server on 127.0.0.1:6379")
    name = f"test-{uuid.uuid4().hex}"
    yield name
    delete_prefix(name)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(15):
        while not condition():
            await asyncio.sleep(0.02)


async def test_rooms_spread_over_nodes_and_move_when_one_is_lost(prefix: str) -> None:
    nodes = [Node("sfu-a", prefix), Node("sfu-b", prefix)]
    for node in nodes:
        await node.server.start("127.0.0.1", 0)
    signalling = RemoteNodes(NodeRegistry(REDIS_URL, prefix), KEY, "signalling-1")
    other = RemoteNodes(NodeRegistry(REDIS_URL, prefix), KEY, "signalling-2")
    events: list[Message] = []
    others: list[Message] = []
    signalling.on_event(events.append)
    other.on_event(others.append)
    try:
        await signalling.start()
        await other.start()
        await until(lambda: sum(n.up for n in signalling.nodes()) == 2)
        await signalling.request(OpenRoom("room-1"))
        await signalling.request(OpenRoom("room-2"))
        hosts = {room: signalling.placement[room].node_id for room in ("room-1", "room-2")}  # type: ignore[attr-defined]
        assert sorted(hosts.values()) == ["sfu-a", "sfu-b"]
        assert {room for n in nodes for room in n.plane.rooms} == {"room-1", "room-2"}
        stats = await signalling.request(GetStats("room-1"))
        assert isinstance(stats, Stats) and stats.tracks == []

        lost = next(n for n in nodes if n.server.node_id == hosts["room-1"])
        kept = next(n for n in nodes if n is not lost)
        await lost.close()
        await until(lambda: any(isinstance(e, RoomRestarted) for e in events))
        assert [e for e in events if isinstance(e, RoomRestarted)] == [RoomRestarted("room-1", "node_lost")]
        assert signalling.placement["room-1"].node_id == kept.server.node_id  # type: ignore[attr-defined]
        assert set(kept.plane.rooms) == {"room-1", "room-2"}
        await signalling.request(GetStats("room-1"))
        # The other signalling node opened nothing: it hears nothing of these rooms.
        assert others == []
        nodes.remove(lost)
    finally:
        await signalling.close()
        await other.close()
        for node in nodes:
            await node.close()


async def test_a_signalling_node_without_the_key_never_links(prefix: str) -> None:
    node = Node("sfu-a", prefix)
    await node.server.start("127.0.0.1", 0)
    intruder = RemoteNodes(NodeRegistry(REDIS_URL, prefix), link_key("wrong-secret-0123456789abcdef-0123456789"), "x")
    intruder.up_timeout = 1.5
    try:
        await intruder.start()
        assert [n.up for n in intruder.nodes()] == [False]
        with pytest.raises(MediaError) as refused:
            await intruder.request(OpenRoom("room-1"))
        assert refused.value.code == "media_unavailable"
        assert node.plane.rooms == {} and node.server.links == {}
    finally:
        await intruder.close()
        await node.close()


async def test_shutting_down_no_room_waits_for_a_node_and_none_is_closed(prefix: str) -> None:
    """The only node is lost: its room waits (up to UP_TIMEOUT) for a node to come up, and a
    request for it waits on that. Once the signalling node is shutting down, both end at once,
    and the room goes quietly (no RoomClosed: its session lives on for another node to adopt)."""
    node = Node("sfu-a", prefix)
    await node.server.start("127.0.0.1", 0)
    signalling = RemoteNodes(NodeRegistry(REDIS_URL, prefix), KEY, "signalling-1")
    events: list[Message] = []
    signalling.on_event(events.append)
    try:
        await signalling.start()
        await until(lambda: any(n.up for n in signalling.nodes()))
        await signalling.request(OpenRoom("room-1"))
        await node.close()
        await until(lambda: not any(n.up for n in signalling.nodes()))
        waiting = asyncio.ensure_future(signalling.request(GetStats("room-1")))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # the room is waiting for a node
        signalling.shutting_down()
        async with asyncio.timeout(1):
            with pytest.raises(MediaError):
                await waiting
        with pytest.raises(MediaError) as refused:  # and no new room waits either
            await asyncio.wait_for(signalling.request(OpenRoom("room-2")), 1)
        assert refused.value.code == "closed"
        await asyncio.sleep(0.1)
        assert events == []
    finally:
        await signalling.close()


async def test_a_draining_node_takes_no_new_room_and_keeps_its_own_until_they_close(prefix: str) -> None:
    nodes = [Node("sfu-a", prefix), Node("sfu-b", prefix)]
    for node in nodes:
        await node.server.start("127.0.0.1", 0)
    signalling = RemoteNodes(NodeRegistry(REDIS_URL, prefix), KEY, "signalling-1")
    events: list[Message] = []
    signalling.on_event(events.append)
    registry = NodeRegistry(REDIS_URL, prefix)
    try:
        await signalling.start()
        await until(lambda: sum(n.up for n in signalling.nodes()) == 2)
        await signalling.request(OpenRoom("room-1"))
        host = signalling.placement["room-1"]
        draining = next(n for n in nodes if n.server.node_id == host.node_id)  # type: ignore[attr-defined]
        other = next(n for n in nodes if n is not draining)
        drained = asyncio.ensure_future(draining.server.drain(30))
        await until(lambda: host.draining)
        assert [e.node_id for e in await registry.nodes()] == [other.server.node_id]  # withdrawn
        for i in range(2, 5):  # the other node takes every new room, however loaded
            await signalling.request(OpenRoom(f"room-{i}"))
        assert set(other.plane.rooms) == {"room-2", "room-3", "room-4"} and set(draining.plane.rooms) == {"room-1"}
        assert isinstance(await signalling.request(GetStats("room-1")), Stats)  # its own room is served
        await asyncio.sleep(0.5)
        assert not drained.done()
        await signalling.request(CloseRoom("room-1", "ended"))  # its last call ends: drained
        async with asyncio.timeout(2):
            await drained
        assert not any(isinstance(e, RoomRestarted) for e in events)  # no room moved
    finally:
        await registry.close()
        await signalling.close()
        for node in nodes:
            await node.close()


async def test_a_drain_is_bounded_then_the_rooms_left_move(prefix: str) -> None:
    nodes = [Node("sfu-a", prefix), Node("sfu-b", prefix)]
    for node in nodes:
        await node.server.start("127.0.0.1", 0)
    signalling = RemoteNodes(NodeRegistry(REDIS_URL, prefix), KEY, "signalling-1")
    events: list[Message] = []
    signalling.on_event(events.append)
    try:
        await signalling.start()
        await until(lambda: sum(n.up for n in signalling.nodes()) == 2)
        await signalling.request(OpenRoom("room-1"))
        draining = next(n for n in nodes if n.server.node_id == signalling.placement["room-1"].node_id)  # type: ignore[attr-defined]
        other = next(n for n in nodes if n is not draining)
        started = time.monotonic()
        await draining.server.drain(1.0)
        assert 1.0 <= time.monotonic() - started < 2.0
        await draining.close()  # it hangs up: the room left moves
        nodes.remove(draining)
        await until(lambda: events == [RoomRestarted("room-1", "node_lost")])
        assert set(other.plane.rooms) == {"room-1"}
    finally:
        await signalling.close()
        for node in nodes:
            await node.close()
