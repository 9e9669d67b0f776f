"""The media bridge: offers and candidates reach the media plane, its events drive the session."""

from __future__ import annotations

import pytest

from sfu.api import (
    AddIceCandidate,
    AnswerToServerOffer,
    MediaError,
    MediaQuality,
    RoomClosed,
    RoomRestarted,
    ServerOffer,
    Subscribe,
)
from signalling.auth.tokens import TOKENS
from signalling.core.settings import Settings

from ...utils import FakePlane, Peer, build_app, kill


@pytest.fixture
def plane() -> FakePlane:
    return FakePlane()


async def paired(client) -> tuple[Peer, Peer, str]:  # type: ignore[no-untyped-def]
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    session_id = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    await expert.request("help.accept", session_id=session_id)
    return expert, alice, session_id


async def test_media_drives_connecting_live_and_paused(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    assert plane.kinds() == ["open_room"] and plane.requests[0].room_id == sid  # type: ignore[attr-defined]

    answer = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0 offer")
    assert answer["type"] == "media.answer" and answer["sdp"] == "answer-to:alice:publish"
    assert (await alice.expect("session.state", state="connecting"))["session"]["reason"] == "media_started"
    ack = await alice.request("media.ice", session_id=sid, transport="publish", candidate={"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"})
    assert ack["type"] == "ack"
    assert isinstance(plane.requests[-1], AddIceCandidate) and plane.requests[-1].participant_id == "alice"

    # A transport's first offer opens a new connection; a later one renegotiates it.
    plane.emit(ServerOffer(sid, "alice", "subscribe", "v=0 first", offer_id=1))
    offer = await alice.expect("media.offer")
    assert (offer["offer_id"], offer["new_connection"]) == (1, True)
    plane.emit(ServerOffer(sid, "alice", "subscribe", "v=0 server", offer_id=3))
    offer = await alice.expect("media.offer")
    assert (offer["transport"], offer["offer_id"], offer["sdp"]) == ("subscribe", 3, "v=0 server")
    assert offer["new_connection"] is False
    assert (await alice.request("media.answer", session_id=sid, transport="subscribe", sdp="v=0 ans", offer_id=3))["type"] == "ack"
    assert plane.requests[-1] == AnswerToServerOffer(sid, "alice", "subscribe", "v=0 ans", 3)

    plane.flowing(sid, "alice", True)
    plane.flowing(sid, "erin", True)
    assert (await expert.expect("session.state", state="live"))["previous"] == "connecting"
    assert (await alice.expect("session.state", state="live"))["previous"] == "connecting"
    plane.flowing(sid, "erin", False)
    paused = await alice.expect("session.state", state="paused")
    assert paused["session"]["reason"] == "media_stopped:erin"
    plane.flowing(sid, "erin", True)
    assert (await alice.expect("session.state", state="live"))["previous"] == "paused"

    await expert.request("session.end", session_id=sid)
    await alice.expect("session.state", state="ended")
    assert plane.kinds()[-1] == "close_room"
    late = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0")
    assert late["code"] == "invalid_state"


async def test_media_before_accept_and_media_refusals(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings, plane))
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    early = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0")
    assert early["code"] == "invalid_state"
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    plane.refuse = MediaError("transport_failed", "no ICE")
    refused = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0")
    assert (refused["type"], refused["code"]) == ("error", "transport_failed")


async def test_no_show_when_media_never_flows(aiohttp_client, settings: Settings, plane) -> None:  # type: ignore[no-untyped-def]
    settings.connect_timeout = 0.3
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    plane.flowing(sid, "erin", True)
    ended = await alice.expect("session.state", state="ended")
    assert ended["session"]["reason"] == "no_show"
    assert (await expert.request("presence.set", status="online"))["status"] == "online"


async def test_a_closed_room_ends_the_session_with_error(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    plane.emit(RoomClosed(sid, "worker died"))
    assert (await alice.expect("session.state", state="ended"))["session"]["reason"] == "error"


async def test_a_restarted_room_starts_the_sessions_media_over(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    """An SFU worker died and its room opened again elsewhere: as after a node's death, a live
    session pauses (unbilled) and both participants are told to start media again; a connecting
    one stays connecting, re-announced with the reason."""
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0 offer")
    plane.flowing(sid, "alice", True)
    plane.emit(RoomRestarted(sid, "worker_lost"))
    for peer in (alice, expert):
        again = await peer.expect("session.state", state="connecting", reason="media_restarted")
        assert again["previous"] == "connecting"

    plane.flowing(sid, "alice", True)
    plane.flowing(sid, "erin", True)
    await alice.expect("session.state", state="live")
    plane.emit(RoomRestarted(sid, "worker_lost"))
    for peer in (alice, expert):
        paused = await peer.expect("session.state", state="paused", reason="media_restarted")
        assert paused["previous"] == "live"
    plane.flowing(sid, "alice", True)
    plane.flowing(sid, "erin", True)
    assert (await alice.expect("session.state", state="live"))["previous"] == "paused"
    assert "close_room" not in plane.kinds()


async def test_without_a_media_plane_media_is_refused(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings))
    expert, alice, sid = await paired(client)
    reply = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0")
    assert reply["code"] == "media_unavailable"


async def test_a_publish_offer_opens_the_subscribe_transport(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    """The SFU offers the other side's tracks only once asked (Subscribe): after each publish offer,
    which is also how a resumed client, offering from a new connection, gets a fresh subscribe."""
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    for _ in range(2):
        answer = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0 offer")
        assert answer["type"] == "media.answer"
        assert plane.requests[-1] == Subscribe(sid, "alice")
    await alice.request("media.offer", session_id=sid, transport="subscribe", sdp="v=0 whep")
    assert plane.kinds()[-1] == "offer"


async def test_a_publish_offer_says_whether_the_subscribe_transport_opens_chat(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    """``chat: false`` reaches the SFU on the Subscribe that follows, and again from a resumed
    socket's offer (which replaces the subscribe transport); left out, chat is on."""
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    answer = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0 a", chat=False)
    assert answer["type"] == "media.answer"
    assert plane.requests[-1] == Subscribe(sid, "alice", chat=False)

    kill(alice)
    back = Peer(await client.ws_connect("/ws"))
    token = client.app[TOKENS].mint("alice", "client")
    assert (await back.request("resume", token=token, resume_token=alice.welcome["resume_token"]))["resumed"]
    answer = await back.request("media.offer", session_id=sid, transport="publish", sdp="v=0 b", chat=False)
    assert answer["type"] == "media.answer"
    assert plane.requests[-1] == Subscribe(sid, "alice", chat=False)
    await back.request("media.offer", session_id=sid, transport="publish", sdp="v=0 c")
    assert plane.requests[-1] == Subscribe(sid, "alice", chat=True)


async def test_a_bad_chat_flag_is_refused(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    sent = len(plane.requests)
    bad = await alice.request("media.offer", session_id=sid, transport="publish", sdp="v=0", chat="no")
    assert (bad["code"], bad["message"]) == ("invalid_message", "chat: 'no' is not of type 'boolean'")
    whep = await alice.request("media.offer", session_id=sid, transport="subscribe", sdp="v=0", chat=False)
    assert whep["code"] == "invalid_message" and whep["message"].startswith("chat: only a publish offer")
    assert len(plane.requests) == sent


async def test_a_paused_video_is_told_to_the_subscriber_and_the_publisher(aiohttp_client, settings, plane) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings, plane))
    expert, alice, sid = await paired(client)
    plane.emit(MediaQuality(sid, "alice", "erin", "erin:0", True, "congestion", 180_000, 1_200_000, 3))
    for peer in (alice, expert):
        quality = await peer.expect("media.quality")
        assert (quality["subscriber"], quality["publisher"], quality["video_paused"]) == ("alice", "erin", True)
        assert (quality["estimate"], quality["bitrate"], quality["reason"]) == (180_000, 1_200_000, "congestion")
