"""The /ws handler over real sockets: handshake, keepalive, resume, restart, limits and bad input."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import jwt
import pytest

from signalling.auth.tokens import TOKENS, TokenIssuer
from signalling.calls.node import SIGNALLING
from signalling.core import keys, protocol
from signalling.core.settings import Settings

from ...utils import FakePlane, Peer, build_app, kill, shut_down


def test_every_client_message_type_has_a_route_and_a_schema() -> None:
    from signalling.calls.websocket import ROUTES

    assert set(ROUTES) == protocol.client_types()


@pytest.fixture
def plane() -> FakePlane:
    return FakePlane()


@pytest.fixture
async def client(aiohttp_client, settings, plane):  # type: ignore[no-untyped-def]
    return await aiohttp_client(build_app(settings, plane))


async def accepted_session(client, alice_name: str = "alice") -> tuple[Peer, Peer, str]:  # type: ignore[no-untyped-def]
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, alice_name, "client")
    session_id = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    await expert.request("help.accept", session_id=session_id)
    await alice.expect("session.state", state="accepted")
    return expert, alice, session_id


async def test_welcome_announces_what_a_client_needs(client) -> None:  # type: ignore[no-untyped-def]
    alice = await Peer.join(client, "alice", "client", name="Alice", client={"name": "ios", "version": "1.0"})
    w = alice.welcome
    assert w["protocol"] == 1 and w["resumed"] is False and isinstance(w["ref"], int)
    assert w["user"] == {"id": "alice", "role": "client", "name": "Alice"}
    assert w["ping_interval"] == 20.0 and w["ping_timeout"] == 10.0 and w["resume_grace"] == 30.0
    assert w["max_message_bytes"] == 64 * 1024 and w["ice_servers"] == [] and w["session"] is None
    assert w["presence"] is None and w["resume_token"]
    pong = await alice.request("ping")
    assert pong["type"] == "pong" and abs(pong["time"] - time.time()) < 60


async def test_token_in_the_query_string(client) -> None:  # type: ignore[no-untyped-def]
    token = client.app[TOKENS].mint("alice", "client")
    peer = Peer(await client.ws_connect(f"/ws?token={token}"))
    assert (await peer.request("hello"))["type"] == "welcome"


@pytest.mark.parametrize(
    "token, code",
    [
        (None, "auth_required"),
        ("garbage", "token_invalid"),
        (TokenIssuer("another-secret-0123456789-0123456789abcdef").mint("alice", "client"), "token_invalid"),
        ("expired", "token_expired"),
    ],
)
async def test_bad_tokens_get_an_error_and_close_4001(client, token, code) -> None:  # type: ignore[no-untyped-def]
    if token == "expired":
        secret = client.app[keys.SETTINGS].secret
        now = int(time.time())
        claims = {"sub": "alice", "role": "client", "iat": now - 3600, "exp": now - 120, "jti": "j-expired"}
        token = jwt.encode(claims, secret, "HS256")
    peer = Peer(await client.ws_connect("/ws"))
    fields = {} if token is None else {"token": token}
    reply = await peer.request("hello", **fields)
    assert reply["type"] == "error" and reply["code"] == code and reply["ref"] is not None
    assert await peer.closed() == 4001


async def test_a_token_expiring_mid_connection_closes_it(client) -> None:  # type: ignore[no-untyped-def]
    token = client.app[TOKENS].mint("alice", "client", ttl=1)
    peer = Peer(await client.ws_connect("/ws"))
    await peer.request("hello", token=token)
    assert await peer.closed(timeout=5) == 4001
    assert peer.backlog[-1]["code"] == "token_expired"


async def test_handshake_order(client) -> None:  # type: ignore[no-untyped-def]
    peer = Peer(await client.ws_connect("/ws"))
    assert (await peer.request("ping"))["code"] == "hello_required"
    token = client.app[TOKENS].mint("alice", "client")
    assert (await peer.request("hello", token=token))["type"] == "welcome"
    assert (await peer.request("hello", token=token))["code"] == "already_authenticated"


@pytest.mark.parametrize(
    "raw, code, ref",
    [
        ("this is not json", "invalid_json", None),
        ('{"v": 1, "type": "ping", "id": NaN}', "invalid_json", None),
        ("[1, 2, 3]", "invalid_message", None),
        ('{"v": 1, "type": "teleport", "id": "t1"}', "unknown_type", "t1"),
        ('{"v": 1, "id": "t2"}', "unknown_type", "t2"),
        ('{"v": 2, "type": "ping", "id": "t3"}', "unsupported_version", "t3"),
        ('{"type": "ping", "id": "t4"}', "unsupported_version", "t4"),
        ('{"v": 1, "type": "ping", "id": "t5", "extra": true}', "invalid_message", "t5"),
        ('{"v": 1, "type": "help.request", "id": "t6", "expert_id": 42}', "invalid_message", "t6"),
        ('{"v": 1, "type": "help.request", "id": "t7"}', "invalid_message", "t7"),
        ('{"v": 1, "type": "presence.set", "id": "t8", "status": "busy"}', "invalid_message", "t8"),
        ('{"v": 1, "type": "presence.set", "id": "t8", "status": "online"}', "forbidden", "t8"),
        ('{"v": 1, "type": "media.ice", "id": "t9", "session_id": "../x", "transport": "publish", "candidate": null}', "invalid_message", "t9"),
        ('{"v": 1, "type": "ping", "id": {"nested": 1}}', "invalid_message", None),
    ],
)
async def test_bad_input_gets_a_coded_error_and_the_connection_lives(client, raw, code, ref) -> None:  # type: ignore[no-untyped-def]
    alice = await Peer.join(client, "alice", "client")
    await alice.ws.send_str(raw)
    reply = await alice.expect("error")
    assert (reply["code"], reply["ref"]) == (code, ref)
    assert (await alice.request("ping"))["type"] == "pong"


async def test_binary_frames_are_refused(client) -> None:  # type: ignore[no-untyped-def]
    alice = await Peer.join(client, "alice", "client")
    await alice.ws.send_bytes(b"\x00\x01")
    assert (await alice.expect("error"))["code"] == "invalid_message"
    assert (await alice.request("ping"))["type"] == "pong"


async def test_role_violations(client) -> None:  # type: ignore[no-untyped-def]
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    assert (await expert.request("help.request", expert_id="ezra"))["code"] == "forbidden"
    session_id = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    assert (await alice.request("help.accept", session_id=session_id))["code"] == "forbidden"
    assert (await alice.request("help.decline", session_id=session_id))["code"] == "forbidden"
    assert (await alice.request("presence.set", status="online"))["code"] == "forbidden"
    await expert.expect("ring")


async def test_foreign_sessions_are_off_limits(client, plane) -> None:  # type: ignore[no-untyped-def]
    expert, alice, session_id = await accepted_session(client)
    mallory = await Peer.join(client, "mallory", "client")
    ezra = await Peer.join(client, "ezra", "expert")
    attempts: list[tuple[Peer, str, dict[str, Any]]] = [
        (mallory, "help.cancel", {}),
        (mallory, "session.end", {}),
        (mallory, "media.offer", {"transport": "publish", "sdp": "v=0"}),
        (mallory, "media.ice", {"transport": "publish", "candidate": None}),
        (ezra, "help.accept", {}),
        (ezra, "session.end", {}),
    ]
    for peer, type_, fields in attempts:
        reply = await peer.request(type_, session_id=session_id, **fields)
        assert reply["code"] == "not_participant", (type_, reply)
    assert (await mallory.request("session.end", session_id="no-such-session"))["code"] == "session_not_found"
    assert not [m for m in plane.requests if getattr(m, "participant_id", "") in ("mallory", "ezra")]
    # Nothing changed for the real participants.
    assert (await alice.request("session.end", session_id=session_id))["session"]["reason"] == "hangup"


async def test_too_big_closes_4009_and_others_carry_on(client) -> None:  # type: ignore[no-untyped-def]
    expert, alice, session_id = await accepted_session(client)
    big = json.dumps({"v": 1, "type": "help.decline", "id": 1, "session_id": session_id, "message": "x" * 70_000})
    await alice.ws.send_str(big)
    assert await alice.closed() == 4009
    assert alice.backlog[-1]["code"] == "message_too_big"
    assert (await expert.request("ping"))["type"] == "pong"
    again = await Peer.join(client, "alice", "client")
    assert again.welcome["session"]["id"] == session_id and again.welcome["session"]["state"] == "accepted"


async def test_a_burst_within_the_bucket_is_served(aiohttp_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    # A browser trickles its ICE candidates in a burst above the per-second rate.
    settings.max_messages_per_second, settings.max_message_burst = 5, 30
    client = await aiohttp_client(build_app(settings, FakePlane()))
    alice = await Peer.join(client, "alice", "client")  # hello took one token
    for n in range(29):
        await alice.ws.send_str(json.dumps({"v": 1, "type": "ping", "id": n}))
    assert [(await alice.expect("pong"))["ref"] for _ in range(29)] == list(range(29))
    assert not [m for m in alice.backlog if m["type"] == "error"]


async def test_rate_limit_errors_then_closes_4008(aiohttp_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    settings.max_messages_per_second, settings.max_message_burst = 5, 5
    client = await aiohttp_client(build_app(settings, FakePlane()))
    alice = await Peer.join(client, "alice", "client")
    bob = await Peer.join(client, "bob", "client")
    for _ in range(15):
        await alice.ws.send_str(json.dumps({"v": 1, "type": "ping", "id": "p"}))
    assert await alice.closed() == 4008
    errors = [m for m in alice.backlog if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["rate_limited"]
    assert 1 <= len([m for m in alice.backlog if m["type"] == "pong"]) <= 5
    assert (await bob.request("ping"))["type"] == "pong"


async def test_hello_timeout_and_ping_timeout(aiohttp_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    settings.ping_interval, settings.ping_timeout = 0.5, 0.5
    client = await aiohttp_client(build_app(settings, FakePlane()))
    silent = Peer(await client.ws_connect("/ws"))
    assert await silent.closed() == 4002
    quiet = await Peer.join(client, "alice", "client")
    assert await quiet.closed() == 4011


async def test_a_second_connection_replaces_the_first(client) -> None:  # type: ignore[no-untyped-def]
    first = await Peer.join(client, "alice", "client")
    second = await Peer.join(client, "alice", "client")
    assert await first.closed() == 4010
    assert (await second.request("ping"))["type"] == "pong"


async def test_resume_after_a_killed_socket_keeps_the_same_participant(client, plane) -> None:  # type: ignore[no-untyped-def]
    expert, alice, session_id = await accepted_session(client)
    resume_token = alice.welcome["resume_token"]
    kill(alice)
    await asyncio.sleep(0.1)
    # While alice is away the expert starts media: her copy of the news is stashed for her.
    assert (await expert.request("media.offer", session_id=session_id, transport="publish", sdp="v=0 e"))["sdp"]
    await expert.expect("session.state", state="connecting")

    token = client.app[TOKENS].mint("alice", "client")
    back = Peer(await client.ws_connect("/ws"))
    welcome = await back.request("resume", token=token, resume_token=resume_token)
    assert welcome["type"] == "welcome" and welcome["resumed"] is True
    assert welcome["session"]["id"] == session_id and welcome["session"]["state"] == "connecting"
    replayed = await back.expect("session.state", state="connecting")
    assert replayed["session"]["id"] == session_id
    # An offer on the same transport is an ICE restart of the same participant.
    assert (await back.request("media.offer", session_id=session_id, transport="publish", sdp="v=0 b"))["type"] == "media.answer"
    assert (await back.request("media.offer", session_id=session_id, transport="publish", sdp="v=0 c"))["type"] == "media.answer"
    offers = [m for m in plane.requests if m.kind == "offer"]
    assert [(o.room_id, o.participant_id) for o in offers] == [(session_id, "erin")] + [(session_id, "alice")] * 2
    plane.flowing(session_id, "erin", True)
    plane.flowing(session_id, "alice", True)
    assert (await back.expect("session.state", state="live"))["session"]["id"] == session_id


async def test_resume_tokens_are_checked(client) -> None:  # type: ignore[no-untyped-def]
    alice = await Peer.join(client, "alice", "client")
    bob = await Peer.join(client, "bob", "client")
    token = client.app[TOKENS].mint("bob", "client")
    thief = Peer(await client.ws_connect("/ws"))
    stolen = await thief.request("resume", token=token, resume_token=alice.welcome["resume_token"])
    assert stolen["code"] == "resume_invalid"
    forged = await thief.request("resume", token=token, resume_token=bob.welcome["resume_token"][:-4] + "AAAA")
    assert forged["code"] == "resume_invalid"
    # A well-formed resume after a clean hello elsewhere is not "resumed": nothing to replay.
    fresh = await thief.request("resume", token=token, resume_token=bob.welcome["resume_token"])
    assert fresh["type"] == "welcome" and fresh["resumed"] is True  # bob's old socket was still open
    assert await bob.closed() == 4010


async def test_grace_expiry_ends_the_session_of_whoever_left(aiohttp_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    settings.resume_grace = 0.3
    client = await aiohttp_client(build_app(settings, FakePlane()))
    expert, alice, session_id = await accepted_session(client)
    kill(alice)
    ended = await expert.expect("session.state", state="ended")
    assert ended["session"]["reason"] == "disconnected" and ended["session"]["ended_by"] == "alice"
    token = client.app[TOKENS].mint("alice", "client")
    late = Peer(await client.ws_connect("/ws"))
    welcome = await late.request("resume", token=token, resume_token=alice.welcome["resume_token"])
    assert welcome["resumed"] is False and welcome["session"] is None


async def test_restart_remembers_the_session(aiohttp_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    first_plane = FakePlane()
    first = await aiohttp_client(build_app(settings, first_plane))
    expert, alice, session_id = await accepted_session(first)
    first_plane.flowing(session_id, "erin", True)
    first_plane.flowing(session_id, "alice", True)
    await alice.expect("session.state", state="live")
    waiting = await Peer.join(first, "bob", "client")
    queued = (await waiting.request("help.request", expert_id="erin"))["session"]["id"]
    assert await shut_down(first, expert, alice, waiting) == [4012, 4012, 4012]

    second_plane = FakePlane()
    second = await aiohttp_client(build_app(settings, second_plane))
    expert = await Peer.join(second, "erin", "expert")
    assert expert.welcome["session"]["id"] == session_id
    # The media plane restarted with the server: media starts over, so the session is paused.
    assert expert.welcome["session"]["state"] == "paused" and expert.welcome["session"]["reason"] == "media_restarted"
    assert [m.kind for m in second_plane.requests] == ["open_room"]
    alice = await Peer.join(second, "alice", "client")
    assert alice.welcome["session"]["id"] == session_id
    bob = await Peer.join(second, "bob", "client")
    assert bob.welcome["session"]["id"] == queued and bob.welcome["session"]["state"] == "requested"
    second_plane.flowing(session_id, "erin", True)
    second_plane.flowing(session_id, "alice", True)
    assert (await alice.expect("session.state", state="live"))["previous"] == "paused"


async def test_shutdown_closes_sockets_going_away(client) -> None:  # type: ignore[no-untyped-def]
    alice = await Peer.join(client, "alice", "client")
    assert await shut_down(client, alice) == [4012]


async def test_no_errors_are_logged_for_bad_input(client, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    alice = await Peer.join(client, "alice", "client")
    for raw in ("{", "null", '{"v":1,"type":"help.cancel","id":1,"session_id":"x"}', '{"v":1,"type":"session.end"}'):
        await alice.ws.send_str(raw)
        await alice.expect("error")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_after_a_restart_an_expert_who_does_not_return_releases_the_queue(aiohttp_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    settings.resume_grace = 0.3
    first = await aiohttp_client(build_app(settings, FakePlane()))
    expert = await Peer.join(first, "erin", "expert")
    alice = await Peer.join(first, "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    assert await shut_down(first, expert, alice) == [4012, 4012]

    second = await aiohttp_client(build_app(settings, FakePlane()))
    alice = await Peer.join(second, "alice", "client")
    assert alice.welcome["session"]["id"] == sid and alice.welcome["session"]["state"] == "ringing"
    ended = await alice.expect("session.state", state="ended")
    assert ended["session"]["reason"] == "expert_unavailable"


async def test_a_client_that_stops_reading_is_closed_and_stalls_nobody(client) -> None:  # type: ignore[no-untyped-def]
    client.app[keys.SETTINGS].ws_outbox_limit = 16
    node = client.app[SIGNALLING]
    slow = await Peer.join(client, "slow", "client")
    other = await Peer.join(client, "other", "client")
    conn = next(c for c in node.connections.values() if c.identity and c.identity.user_id == "slow")

    async def stuck(data: str) -> None:
        await asyncio.Event().wait()

    conn.ws.send_str = stuck  # type: ignore[method-assign]
    async with asyncio.timeout(5):  # delivering never waits on the stuck socket
        for i in range(26):
            await node.backend.deliver("slow", {"v": 1, "type": "ack", "ref": i})
    assert await slow.closed() == 4013
    assert (await other.request("ping"))["type"] == "pong"
    # What it never read is kept, in order, for its resume (ack 0 may have been on the wire).
    back = Peer(await client.ws_connect("/ws"))
    token = client.app[TOKENS].mint("slow", "client")
    welcome = await back.request("resume", token=token, resume_token=slow.welcome["resume_token"])
    assert welcome["resumed"] is True
    refs = [(await back.expect("ack"))["ref"]]
    while refs[-1] != 25:
        refs.append((await back.expect("ack"))["ref"])
    assert refs[0] in (0, 1) and refs == list(range(refs[0], 26))


async def test_help_request_is_answered_in_the_documented_order(client) -> None:  # type: ignore[no-untyped-def]
    """docs/protocol.md: requested, then queue.position, then ringing (main sent ringing second)."""
    await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    msg_id = await alice.send("help.request", expert_id="erin")
    received = [await alice.recv() for _ in range(3)]
    assert [(m["type"], m.get("session", {}).get("state")) for m in received] == [
        ("session.state", "requested"), ("queue.position", None), ("session.state", "ringing"),
    ]
    assert received[0]["ref"] == msg_id and received[1]["position"] == 1 and "ref" not in received[2]


async def test_welcome_announces_the_billing_unit_and_the_burst(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.billing_unit_seconds, settings.max_message_burst = 30, 45
    client = await aiohttp_client(build_app(settings, FakePlane()))
    welcome = (await Peer.join(client, "alice", "client")).welcome
    assert welcome["billing_unit_seconds"] == 30 and welcome["max_message_burst"] == 45
