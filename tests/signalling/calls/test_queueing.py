"""Instant help over real sockets: pairing, declines, ring timeouts, the FIFO queue, cancels, skills."""

from __future__ import annotations

import asyncio

import pytest

from signalling.core.settings import Settings

from ...utils import FakePlane, Peer, build_app


@pytest.fixture
async def client(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    return await aiohttp_client(build_app(settings, FakePlane()))


async def test_pairing(client) -> None:  # type: ignore[no-untyped-def]
    expert = await Peer.join(client, "erin", "expert")
    assert expert.welcome["presence"] == "online" and expert.welcome["session"] is None
    alice = await Peer.join(client, "alice", "client", name="Alice")
    reply = await alice.request("help.request", expert_id="erin", note="my sink leaks")
    assert reply["type"] == "session.state" and reply["session"]["state"] == "requested"
    session_id = reply["session"]["id"]
    assert (await alice.expect("queue.position"))["position"] == 1
    await alice.expect("session.state", state="ringing")

    ring = await expert.expect("ring")
    assert ring["session"]["id"] == session_id and ring["session"]["client_name"] == "Alice"
    assert ring["session"]["note"] == "my sink leaks" and ring["timeout"] > 0
    accepted = await expert.request("help.accept", session_id=session_id)
    assert accepted["type"] == "session.state" and accepted["session"]["state"] == "accepted"
    assert (await alice.expect("session.state", state="accepted"))["previous"] == "ringing"

    busy = await Peer.join(client, "bob", "client")
    assert (await busy.request("help.request", expert_id="erin"))["session"]["state"] == "requested"
    assert (await busy.expect("queue.position"))["position"] == 1  # queued while erin is busy, not rung

    ended = await alice.request("session.end", session_id=session_id)
    assert ended["session"]["state"] == "ended" and ended["session"]["reason"] == "hangup"
    assert ended["session"]["ended_by"] == "alice"
    theirs = await expert.expect("session.state", state="ended")
    assert theirs["session"]["reason"] == "hangup"
    await expert.expect("ring")  # the expert is free again: bob is rung


async def test_decline_tells_the_client_why(client) -> None:  # type: ignore[no-untyped-def]
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    session_id = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    reply = await expert.request("help.decline", session_id=session_id, message="on another call")
    assert reply["session"]["reason"] == "declined"
    told = await alice.expect("session.state", state="ended")
    assert told["session"]["reason"] == "declined" and told["session"]["message"] == "on another call"
    again = await expert.request("help.accept", session_id=session_id)
    assert again["type"] == "error" and again["code"] == "invalid_state"


async def test_ring_timeout_ends_the_request_and_rings_the_next(aiohttp_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    settings.ring_timeout = 0.3
    client = await aiohttp_client(build_app(settings, FakePlane()))
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    bob = await Peer.join(client, "bob", "client")
    first = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    second = (await bob.request("help.request", expert_id="erin"))["session"]["id"]
    assert (await expert.expect("ring"))["session"]["id"] == first
    timed_out = await alice.expect("session.state", state="ended")
    assert timed_out["session"]["reason"] == "ring_timeout" and timed_out["session"]["ended_by"] == ""
    assert (await expert.expect("session.state", state="ended"))["session"]["reason"] == "ring_timeout"
    assert (await expert.expect("ring"))["session"]["id"] == second
    assert (await bob.expect("queue.position", position=1))["length"] == 1


async def test_three_clients_queue_and_positions_follow(client) -> None:  # type: ignore[no-untyped-def]
    expert = await Peer.join(client, "erin", "expert")
    await expert.request("presence.set", status="away")
    peers = [await Peer.join(client, name, "client") for name in ("c1", "c2", "c3")]
    ids = []
    for i, peer in enumerate(peers, 1):
        ids.append((await peer.request("help.request", expert_id="erin"))["session"]["id"])
        position = await peer.expect("queue.position")
        assert (position["position"], position["length"]) == (1 if i == 1 else i, i)
    update = await expert.expect("queue.update", timeout=5)
    while len(update["waiting"]) < 3:
        update = await expert.expect("queue.update")
    assert [w["client_id"] for w in update["waiting"]] == ["c1", "c2", "c3"]

    # c2 leaves: only c3 moves up.
    await peers[1].request("help.cancel", session_id=ids[1])
    assert (await peers[2].expect("queue.position"))["position"] == 2
    assert not [m for m in peers[0].backlog if m["type"] == "queue.position"]

    # The expert comes back: c1 is rung, then accepted; c3 becomes first.
    presence = await expert.request("presence.set", status="online")
    assert presence["type"] == "presence" and presence["status"] == "online"
    ring = await expert.expect("ring")
    assert ring["session"]["id"] == ids[0]
    await expert.request("help.accept", session_id=ids[0])
    assert (await peers[2].expect("queue.position"))["position"] == 1
    assert (await peers[0].expect("session.state", state="accepted"))["session"]["id"] == ids[0]
    status = await expert.request("presence.set", status="online")
    assert status["status"] == "busy"


async def test_cancel_by_either_side(client) -> None:  # type: ignore[no-untyped-def]
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    bob = await Peer.join(client, "bob", "client")
    ringing = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    waiting = (await bob.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")

    cancelled = await alice.request("help.cancel", session_id=ringing)
    assert cancelled["session"]["reason"] == "cancelled" and cancelled["session"]["ended_by"] == "alice"
    told = await expert.expect("session.state", state="ended")
    assert told["session"]["id"] == ringing and told["session"]["reason"] == "cancelled"

    ring = await expert.expect("ring")
    assert ring["session"]["id"] == waiting
    by_expert = await expert.request("help.cancel", session_id=waiting)
    assert by_expert["session"]["ended_by"] == "erin"
    assert (await bob.expect("session.state", state="ended"))["session"]["reason"] == "cancelled"
    again = await bob.request("help.cancel", session_id=waiting)
    assert again["type"] == "error" and again["code"] == "invalid_state"


async def test_any_expert_with_a_skill(client) -> None:  # type: ignore[no-untyped-def]
    erin = await Peer.join(client, "erin", "expert")
    ezra = await Peer.join(client, "ezra", "expert")
    await Peer.join(client, "emma", "expert")
    alice = await Peer.join(client, "alice", "client")
    first = await alice.request("help.request", skill="Python")
    assert first["session"]["expert_id"] == "erin" and first["session"]["skill"] == "Python"
    await erin.expect("ring")
    # erin now has a queue of one; ezra's is empty, so the next python request goes to ezra.
    bob = await Peer.join(client, "bob", "client")
    second = await bob.request("help.request", skill="python")
    assert second["session"]["expert_id"] == "ezra"
    await ezra.expect("ring")

    carol = await Peer.join(client, "carol", "client")
    none = await carol.request("help.request", skill="knitting")
    assert none["type"] == "error" and none["code"] == "no_expert_available"
    await ezra.request("presence.set", status="away")
    await erin.request("presence.set", status="offline")
    # erin going offline releases her queue with a reason.
    assert (await alice.expect("session.state", state="ended"))["session"]["reason"] == "expert_unavailable"
    none = await carol.request("help.request", skill="python")
    assert none["code"] == "no_expert_available"


async def test_requests_for_unknown_or_unavailable_experts(client) -> None:  # type: ignore[no-untyped-def]
    alice = await Peer.join(client, "alice", "client")
    reply = await alice.request("help.request", expert_id="nobody")
    assert reply["code"] == "expert_not_found"
    reply = await alice.request("help.request", expert_id="emma")  # never connected
    assert reply["code"] == "expert_unavailable"
    await Peer.join(client, "emma", "expert")
    session = (await alice.request("help.request", expert_id="emma"))["session"]
    again = await alice.request("help.request", expert_id="emma")
    assert again["code"] == "already_in_session"
    assert (await alice.request("help.cancel", session_id=session["id"]))["session"]["state"] == "ended"
    # A user who is an expert elsewhere but signed in as a client cannot ring themselves.
    erin = await Peer.join(client, "erin", "client")
    assert (await erin.request("help.request", expert_id="erin"))["code"] == "forbidden"
    await Peer.join(client, "ezra", "expert")
    await asyncio.sleep(0)


async def test_a_fresh_hello_tells_users_where_they_stand(client) -> None:  # type: ignore[no-untyped-def]
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    bob = await Peer.join(client, "bob", "client")
    first = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    second = (await bob.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    # Both reopen the app (a new socket and hello, no resume): nothing to replay, yet they learn
    # of the ring in progress, the queue, and the place in it.
    expert = await Peer.join(client, "erin", "expert")
    assert (await expert.expect("ring"))["session"]["id"] == first
    assert [w["session_id"] for w in (await expert.expect("queue.update"))["waiting"]] == [first, second]
    bob = await Peer.join(client, "bob", "client")
    assert bob.welcome["session"]["id"] == second
    assert (await bob.expect("queue.position"))["position"] == 2
