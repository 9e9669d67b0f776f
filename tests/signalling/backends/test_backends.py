"""One contract suite, run against the memory and the Redis backend alike."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable

import pytest

from signalling.backends.base import Backend, Location

from ...backends import node_factory

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "redis"])
async def make_node(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[str], Backend]]:
    started: list[Backend] = []
    async for make in node_factory(request.param):

        def make_started(node_id: str) -> Backend:
            backend = make(node_id)
            started.append(backend)
            return backend

        yield make_started
        for backend in started:
            await backend.close()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.open = True
        self.arrived = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> bool:
        if not self.open:
            return False
        self.messages.append(message)
        self.arrived.set()
        return True

    async def wait(self, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(5):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


async def ignore(envelope: dict[str, Any]) -> None:
    return None


async def test_delivery_reaches_the_node_holding_the_socket(make_node) -> None:  # type: ignore[no-untyped-def]
    a, b = make_node("a"), make_node("b")
    await a.start(ignore)
    await b.start(ignore)
    inbox = Inbox()
    assert await b.claim("alice", "c1", inbox.send) is None
    assert await a.locate("alice") == Location("b", "c1")
    await a.deliver("alice", {"n": 1})
    await a.deliver("alice", {"n": 2})
    await b.deliver("alice", {"n": 3})
    got = await inbox.wait(3)
    # Order holds per sending node; two senders' messages may interleave.
    assert [m for m in got if m["n"] < 3] == [{"n": 1}, {"n": 2}] and {"n": 3} in got


async def test_claim_returns_the_replaced_socket_and_release_is_owner_only(make_node) -> None:  # type: ignore[no-untyped-def]
    a, b = make_node("a"), make_node("b")
    await a.start(ignore)
    await b.start(ignore)
    first, second = Inbox(), Inbox()
    await a.claim("bob", "c1", first.send)
    assert await b.claim("bob", "c2", second.send) == Location("a", "c1")
    assert await a.release("bob", "c1") is False
    assert await a.locate("bob") == Location("b", "c2")
    await a.deliver("bob", {"to": "second"})
    assert await second.wait(1) == [{"to": "second"}] and first.messages == []
    assert await b.release("bob", "c2") is True
    assert await a.locate("bob") is None


async def test_messages_for_a_dropped_user_are_stashed_until_drained(make_node) -> None:  # type: ignore[no-untyped-def]
    a = make_node("a")
    await a.start(ignore)
    inbox = Inbox()
    await a.claim("carol", "c1", inbox.send)
    inbox.open = False
    await a.deliver("carol", {"n": 1})
    await a.release("carol", "c1")
    await a.deliver("carol", {"n": 2})
    assert await a.drain("carol") == [{"n": 1}, {"n": 2}]
    assert await a.drain("carol") == []


async def test_envelopes_reach_the_named_node_only(make_node) -> None:  # type: ignore[no-untyped-def]
    a, b = make_node("a"), make_node("b")
    seen_a: list[dict[str, Any]] = []
    seen_b: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def on_b(envelope: dict[str, Any]) -> None:
        seen_b.append(envelope)
        got.set()

    async def on_a(envelope: dict[str, Any]) -> None:
        seen_a.append(envelope)

    await a.start(on_a)
    await b.start(on_b)
    await a.send_to_node("b", {"op": "media", "x": [1, "2"]})
    async with asyncio.timeout(5):
        await got.wait()
    assert seen_b == [{"op": "media", "x": [1, "2"]}] and seen_a == []


async def test_presence_sessions_and_queues_are_shared(make_node) -> None:  # type: ignore[no-untyped-def]
    a, b = make_node("a"), make_node("b")
    assert await a.get_status("e") is None
    await a.set_status("e", "away")
    assert await b.get_status("e") == "away"
    await b.set_status("e", None)
    assert await a.get_status("e") is None

    record = {"id": "s1", "state": "live", "flowing": ["x"]}
    await a.save_session(record, active=True)
    assert await b.load_session("s1") == record
    assert await b.active_session_ids() == ["s1"]
    await b.save_session({**record, "state": "ended"}, active=False)
    assert await a.active_session_ids() == []
    assert (await a.load_session("s1"))["state"] == "ended"  # type: ignore[index]
    assert await a.load_session("nope") is None

    await a.set_user_session("u", "s1")
    assert await b.user_session("u") == "s1"
    await b.set_user_session("u", None)
    assert await a.user_session("u") is None

    for sid in ("q1", "q2", "q3", "q1"):
        await a.queue_push("e", sid)
    assert await b.queue("e") == ["q1", "q2", "q3"]
    assert await b.queue_remove("e", "q2") is True
    assert await a.queue_remove("e", "q2") is False
    assert await a.queue("e") == ["q1", "q3"]


async def test_lock_excludes_across_nodes(make_node) -> None:  # type: ignore[no-untyped-def]
    a, b = make_node("a"), make_node("b")
    inside = 0
    most = 0

    async def worker(backend: Backend) -> None:
        nonlocal inside, most
        for _ in range(5):
            async with backend.lock("expert:e"):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.001)
                inside -= 1

    await asyncio.gather(worker(a), worker(b), worker(a), worker(b))
    assert most == 1
    async with a.lock("expert:e"):
        async with b.lock("expert:other"):
            pass


async def test_node_liveness_and_dropped_connections(make_node) -> None:  # type: ignore[no-untyped-def]
    a, b = make_node("a"), make_node("b")
    await a.start(ignore)
    assert await b.node_alive("a") is True
    assert await a.node_alive("b") is False
    await a.note_dropped("dora", "c7")
    assert await b.take_dropped("dora") == "c7"
    assert await a.take_dropped("dora") is None


async def test_memory_stashes_of_users_who_never_return_are_purged() -> None:
    from signalling.backends import memory

    backend = memory.MemoryBackend("a", stash_ttl=0.0)
    for i in range(memory.PURGE_ABOVE + 1):
        await backend.stash(f"u{i}", {"n": i})
    await backend.stash("last", {"n": -1})
    assert len(backend.hub.stashes) == 1


async def test_one_metering_lease_per_session_with_growing_fencing_tokens(make_node) -> None:  # type: ignore[no-untyped-def]
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    for node in (a, b, c):
        await node.start(ignore)
    first = await a.meter_lease("s")
    assert first is not None and await a.meter_lease("s") == first  # holding it: the same token
    assert await b.meter_lease("s") is None  # a is alive
    assert await b.meter_lease_holder("s") == "a"
    await a.close()  # a dies: its lease may be taken over, once
    taken = await asyncio.gather(b.meter_lease("s"), c.meter_lease("s"))
    winners = [t for t in taken if t is not None]
    assert len(winners) == 1 and winners[0] > first
    holder = b if taken[0] is not None else c
    await (c if holder is b else b).release_meter_lease("s")  # not theirs: stays
    assert await a.meter_lease_holder("s") == holder.node_id
    await holder.release_meter_lease("s")
    assert await holder.meter_lease_holder("s") is None
    # A new lease never goes back below what the store has seen (a backend that lost its count).
    assert await holder.meter_lease("s", floor=100) == 101
    assert await holder.meter_lease("other", floor=7) == 8


async def test_a_revoked_token_reaches_every_node_and_is_kept_until_it_expires(make_node) -> None:  # type: ignore[no-untyped-def]
    heard: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    def listener(name: str) -> Callable[[dict[str, Any]], Any]:
        async def on_envelope(envelope: dict[str, Any]) -> None:
            heard[name].append(envelope)

        return on_envelope

    a, b = make_node("a"), make_node("b")
    await a.start(listener("a"))
    await b.start(listener("b"))
    now = int(time.time())
    await a.revoke_token("j1", now + 3600)
    await a.revoke_token("gone", now - 1)  # its token has expired: nothing to keep
    async with asyncio.timeout(5):
        while not all(any(e.get("jti") == "j1" for e in heard[n]) for n in heard):
            await asyncio.sleep(0.01)
    assert {"op": "revoked", "jti": "j1", "expires_at": now + 3600} in heard["b"]
    assert await b.revoked_tokens() == {"j1": now + 3600}
    # A later, shorter revocation of the same token never shortens the first.
    await b.revoke_token("j1", now + 60)
    assert await a.revoked_tokens() == {"j1": now + 3600}
