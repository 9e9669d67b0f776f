"""Two signalling nodes on one backend pair a client on node A with an expert on node B."""

from __future__ import annotations

import asyncio

from sfu.api import Subscribe
from signalling.calls.node import SIGNALLING

from ...utils import Peer, eventually, shut_down


async def test_client_on_a_pairs_with_expert_on_b(two_nodes) -> None:  # type: ignore[no-untyped-def]
    a, b, plane_a, plane_b = two_nodes
    expert = await Peer.join(b, "erin", "expert")
    alice = await Peer.join(a, "alice", "client")
    reply = await alice.request("help.request", expert_id="erin")
    sid = reply["session"]["id"]
    assert (await alice.expect("queue.position"))["position"] == 1
    ring = await expert.expect("ring")
    assert ring["session"]["id"] == sid

    await expert.request("help.accept", session_id=sid)
    assert (await alice.expect("session.state", state="accepted"))["session"]["id"] == sid
    # The room lives on the accepting node; alice's media is forwarded there from node A.
    assert plane_b.kinds() == ["open_room"] and plane_a.kinds() == []
    answer = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0 alice",
                                 chat=False)
    assert answer["type"] == "media.answer" and answer["sdp"] == "answer-to:alice:publish"
    # The publish offer is followed by a Subscribe, on the room's node too, with its chat choice.
    await eventually(lambda: plane_b.kinds() == ["open_room", "offer", "subscribe"])
    assert plane_b.requests[-1] == Subscribe(sid, "alice", chat=False)
    assert plane_a.kinds() == []

    plane_b.flowing(sid, "alice", True)
    plane_b.flowing(sid, "erin", True)
    assert (await alice.expect("session.state", state="live"))["session"]["id"] == sid
    await expert.expect("session.state", state="live")

    ended = await alice.request("session.end", session_id=sid)
    assert ended["session"]["reason"] == "hangup"
    assert (await expert.expect("session.state", state="ended"))["session"]["ended_by"] == "alice"
    await eventually(lambda: plane_b.kinds()[-1] == "close_room")


async def test_queue_and_replacement_across_nodes(two_nodes) -> None:  # type: ignore[no-untyped-def]
    a, b, _, _ = two_nodes
    expert = await Peer.join(a, "erin", "expert")
    c1 = await Peer.join(a, "c1", "client")
    c2 = await Peer.join(b, "c2", "client")
    first = (await c1.request("help.request", expert_id="erin"))["session"]["id"]
    second = (await c2.request("help.request", expert_id="erin"))["session"]["id"]
    assert (await c2.expect("queue.position"))["position"] == 2
    await expert.expect("ring", id=first)
    await expert.request("help.decline", session_id=first, message="not my field")
    assert (await c1.expect("session.state", state="ended"))["session"]["message"] == "not my field"
    assert (await c2.expect("queue.position", position=1))["length"] == 1
    await expert.expect("ring", id=second)

    # c2 opens the app on node A: its node-B socket is replaced, its request survives.
    again = await Peer.join(a, "c2", "client")
    assert await c2.closed() == 4010
    assert again.welcome["session"]["id"] == second and again.welcome["session"]["state"] == "ringing"
    await expert.request("help.accept", session_id=second)
    assert (await again.expect("session.state", state="accepted"))["session"]["id"] == second


async def test_a_surviving_node_adopts_the_room_of_a_dead_one(two_nodes) -> None:  # type: ignore[no-untyped-def]
    a, b, plane_a, plane_b = two_nodes
    expert = await Peer.join(b, "erin", "expert")
    alice = await Peer.join(a, "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    await alice.expect("session.state", state="accepted")
    assert await shut_down(b, expert) == [4012]

    answer = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0 alice")
    assert answer["type"] == "media.answer"
    await eventually(lambda: plane_a.kinds() == ["open_room", "offer", "subscribe"])
    expert = await Peer.join(a, "erin", "expert")
    assert expert.welcome["session"]["id"] == sid


async def test_a_node_shutting_down_finishes_the_accept_it_is_running(two_nodes) -> None:  # type: ignore[no-untyped-def]
    """The expert heard "accepted" while node B was still recording the session as theirs; B
    shutting down then cancelled the accept half done, and the expert, back on node A, found no
    session to resume."""
    a, b, _, _ = two_nodes
    slow = asyncio.Event()

    async def slow_listener(transition) -> None:  # type: ignore[no-untyped-def]
        if transition.state.value == "accepted":
            slow.set()
            await asyncio.sleep(0.3)

    b.app[SIGNALLING].sessions.add_listener(slow_listener)
    expert = await Peer.join(b, "erin", "expert")
    alice = await Peer.join(a, "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    await expert.send("help.accept", session_id=sid)
    await slow.wait()
    assert await shut_down(b, expert) == [4012]
    await alice.expect("session.state", state="accepted")
    expert = await Peer.join(a, "erin", "expert")
    assert expert.welcome["session"] is not None and expert.welcome["session"]["id"] == sid


async def test_concurrent_requests_on_two_nodes_get_distinct_places(two_nodes) -> None:  # type: ignore[no-untyped-def]
    a, b, _, _ = two_nodes
    expert = await Peer.join(a, "erin", "expert")
    await expert.request("presence.set", status="away")  # nobody is rung: the queue only grows
    clients = [await Peer.join(a if i % 2 else b, f"c{i}", "client") for i in range(10)]
    replies = await asyncio.gather(*(c.request("help.request", expert_id="erin") for c in clients))
    assert all(r["type"] == "session.state" for r in replies)
    positions = [(await c.expect("queue.position"))["position"] for c in clients]
    assert sorted(positions) == list(range(1, 11))
    update = await expert.expect("queue.update")
    while len(update["waiting"]) < 10:
        update = await expert.expect("queue.update")
    by_session = {r["session"]["id"]: p for r, p in zip(replies, positions)}
    assert [by_session[w["session_id"]] for w in update["waiting"]] == list(range(1, 11))
