"""The glue of signalling/app/wiring.py over real sockets: profiles behind /ws, presence in the expert
listings, ratings of real sessions, ICE servers in welcome, WHIP grants, bookings over /ws, and
media stats in /metrics."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from sfu.api import GetStats, MediaError, Message, RoomClosed, Stats
from signalling.app.media_metrics import MediaMetrics
from signalling.app.factory import create_app
from signalling.app.wiring import MediaStatsPoller
from signalling.auth.tokens import TOKENS
from signalling.core.settings import Settings
from signalling.experts.rest import EXPERTS

from ...utils import FakePlane, Peer

ALL_DAY = {"time_zone": "UTC", "weekly": {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}}
PER_MINUTE = {"mode": "per_minute", "amount": 100, "currency": "USD"}


def wired_app(settings: Settings, plane: FakePlane) -> web.Application:
    """The real app, every module connected; only the media plane is a fake."""
    return create_app(settings, media=lambda _: plane)


def auth(client: Any, user: str, role: str = "client") -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[TOKENS].mint(user, role)}"}


async def make_expert(client: Any, expert_id: str, **profile: Any) -> None:
    body = {"display_name": f"{expert_id.title()} Expert", **profile}
    resp = await client.put(f"/api/experts/{expert_id}", json=body, headers=auth(client, expert_id, "expert"))
    assert resp.status == 201, await resp.text()


async def listed(client: Any, query: str) -> list[tuple[str, str]]:
    resp = await client.get(f"/api/experts?{query}", headers=auth(client, "zoe"))
    assert resp.status == 200, await resp.text()
    return [(e["id"], e["availability"]) for e in (await resp.json())["experts"]]


async def test_profiles_presence_and_ratings_end_to_end(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    await make_expert(client, "erin", skills=["Plumbing", "python"], price=PER_MINUTE)
    await make_expert(client, "ezra", skills=["gardening"])
    assert await listed(client, "available=online") == []

    expert = await Peer.join(client, "erin", "expert")
    assert await listed(client, "available=online") == [("erin", "online")]
    alice = await Peer.join(client, "alice", "client")
    missing = await alice.request("help.request", expert_id="nobody")
    assert missing["code"] == "expert_not_found"
    offline = await alice.request("help.request", expert_id="ezra")
    assert offline["code"] == "expert_unavailable"
    unknown = await alice.request("help.request", skill="knitting")
    assert unknown["code"] == "no_expert_available"
    unwritable = await alice.request("help.request", skill="!!")
    assert unwritable["code"] == "no_expert_available"

    # By skill (written differently from the profile), then by id for a second client.
    requested = await alice.request("help.request", skill="PLUMBING")
    sid = requested["session"]["id"]
    assert (requested["session"]["expert_id"], requested["session"]["expert_name"]) == ("erin", "Erin Expert")
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    assert await listed(client, "available=busy") == [("erin", "busy")]
    bob = await Peer.join(client, "bob", "client")
    queued = await bob.request("help.request", expert_id="erin")
    assert queued["session"]["state"] == "requested"
    assert (await bob.expect("queue.position"))["position"] == 1
    assert await client.app[EXPERTS].waiting("erin") == 1  # ranks experts with a skill

    # A rating needs the session to have ended, and only its client may give it.
    rate = f"/api/sessions/{sid}/rating"
    early = await client.post(rate, json={"stars": 5}, headers=auth(client, "alice"))
    assert early.status == 409 and (await early.json())["error"]["code"] == "session_not_ended"
    await alice.request("session.end", session_id=sid)
    await expert.expect("session.state", state="ended")
    stranger = await client.post(rate, json={"stars": 1}, headers=auth(client, "bob"))
    assert stranger.status == 403
    resp = await client.post(rate, json={"stars": 4, "review": "fixed it"}, headers=auth(client, "alice"))
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["expert_rating"] == {"average": 4.0, "count": 1}
    gone = await client.post("/api/sessions/nope/rating", json={"stars": 4}, headers=auth(client, "alice"))
    assert gone.status == 404


async def test_welcome_lists_the_turn_modules_ice_servers(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        data_dir=tmp_path / "var",
        secret="test-secret-0123456789abcdef-0123456789",
        stun_urls=("stun:127.0.0.1:3478",),
        turn_urls=("turn:127.0.0.1:3478?transport=udp",),
        turn_secret="turn-secret-0123456789abcdef-0123456789",
    )
    client = await aiohttp_client(wired_app(settings, FakePlane()))
    alice = await Peer.join(client, "alice", "client")
    servers = alice.welcome["ice_servers"]
    assert servers[0] == {"urls": ["stun:127.0.0.1:3478"]}
    assert servers[1]["urls"] == ["turn:127.0.0.1:3478?transport=udp"]
    assert servers[1]["username"].endswith(":alice") and servers[1]["credential"]


async def test_participants_may_not_open_a_whip_whep_side_door_into_their_session(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    """A paid session's media is metered on /ws: a participant's WHIP publisher or WHEP viewer
    would go on while their /ws media stops and the session counts as paused. Only admins
    (broadcasts, the operator) may open WHIP/WHEP resources."""
    plane = FakePlane()
    client = await aiohttp_client(wired_app(settings, plane))
    await make_expert(client, "erin", skills=["python"], price=PER_MINUTE)
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]

    async def whip(user: str, endpoint: str = "whip", role: str = "client") -> tuple[int, str]:
        headers = {**auth(client, user, role), "Content-Type": "application/sdp"}
        resp = await client.post(f"/{endpoint}/{sid}", data="v=0\r\n", headers=headers)
        return resp.status, (await resp.json())["error"]["message"] if resp.status != 201 else ""

    assert (await whip("alice"))[0] == 403  # not accepted yet
    await expert.expect("ring")
    await expert.request("help.accept", session_id=sid)
    for user, endpoint, role in (("alice", "whip", "client"), ("alice", "whep", "client"),
                                 ("erin", "whip", "expert"), ("erin", "whep", "expert"), ("mallory", "whip", "client")):
        status, text = await whip(user, endpoint, role)
        assert status == 403 and "/ws" in text, (user, endpoint, status)
    assert not [m for m in plane.requests if m.kind == "offer"]
    assert (await whip("root", "whep", "admin"))[0] == 201
    await alice.request("session.end", session_id=sid)
    assert (await whip("alice"))[0] == 403


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


async def test_bookings_reach_both_parties_and_open_on_time(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        data_dir=tmp_path / "var",
        secret="test-secret-0123456789abcdef-0123456789",
        reminder_lead_seconds=(2,),
        booking_min_notice_seconds=0,
        booking_min_seconds=60,
    )
    client = await aiohttp_client(wired_app(settings, FakePlane()))
    await make_expert(client, "ada", working_hours=ALL_DAY)
    expert = await Peer.join(client, "ada", "expert")
    carl = await Peer.join(client, "carl", "client")

    start = math.ceil(time.time()) + 4
    body = {"expert_id": "ada", "start": iso(start), "end": iso(start + 60), "topic": "taxes"}
    resp = await client.post("/api/bookings", json=body, headers=auth(client, "carl"))
    assert resp.status == 201, await resp.text()
    booking_id = (await resp.json())["id"]
    created = await expert.expect("booking.update", event="booked")
    assert (created["booking"]["id"], created["booking"]["topic"]) == (booking_id, "taxes")
    # A second booking, cancelled by the expert: the client hears of it.
    later = {"expert_id": "ada", "start": iso(start + 3600), "end": iso(start + 3660)}
    other = (await (await client.post("/api/bookings", json=later, headers=auth(client, "carl"))).json())["id"]
    deleted = await client.delete(f"/api/bookings/{other}", headers=auth(client, "ada", "expert"))
    assert deleted.status == 200, await deleted.text()
    cancelled = await carl.expect("booking.update", event="cancelled")
    assert (cancelled["booking"]["id"], cancelled["by"]) == (other, "ada")

    for peer in (expert, carl):
        reminder = await peer.expect("booking.reminder", timeout=10)
        assert (reminder["booking"]["id"], reminder["seconds_before"]) == (booking_id, 2)
    for peer in (expert, carl):
        opened = await peer.expect("session.state", timeout=10, state="accepted")
        assert opened["session"]["booking_id"] == booking_id and opened["session"]["reason"] == "scheduled"
        assert opened["session"]["updated_at"] >= start
    assert opened["session"]["expert_name"] == "Ada Expert"
    assert (await carl.request("billing.cost.get", session_id=opened["session"]["id"]))["units"] == 0


class StatsPlane(FakePlane):
    """Answers GetStats with one track per open room."""

    def __init__(self) -> None:
        super().__init__()
        self.open_rooms: set[str] = set()

    async def request(self, message: Message) -> Message:
        if not isinstance(message, GetStats):
            return await super().request(message)
        self.requests.append(message)
        if message.room_id not in self.open_rooms:
            raise MediaError("unknown_room", "closed")
        track = {"track_id": "t", "participant_id": "alice", "kind": "audio", "direction": "inbound", "bitrate": 32000}
        return Stats(message.room_id, [track])


async def test_media_stats_reach_metrics_while_rooms_are_open(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    plane = StatsPlane()
    registry = CollectorRegistry()
    poller = MediaStatsPoller(plane, MediaMetrics(registry), "node", interval=0.05)
    poller.start()
    try:
        await asyncio.sleep(0.2)
        assert plane.requests == []  # idle without rooms
        plane.open_rooms.add("r1")
        poller.watch("r1")
        open_track = 'expertcall_media_tracks{direction="inbound",kind="audio"} 1.0'
        async with asyncio.timeout(5):
            while open_track not in generate_latest(registry).decode():
                await asyncio.sleep(0.05)
        poller.on_event(RoomClosed("r1", "ended"))
        assert "expertcall_media_tracks{" not in generate_latest(registry).decode()
        # A room that closed unnoticed is forgotten at the next read.
        poller.watch("gone")
        async with asyncio.timeout(5):
            while "gone" in poller.rooms:
                await asyncio.sleep(0.05)
        polled = len(plane.requests)
        await asyncio.sleep(0.3)
        assert len(plane.requests) == polled  # idle again
    finally:
        await poller.close()


async def test_the_app_exports_media_stats_for_a_session_room(aiohttp_client, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("signalling.app.factory.wiring.MEDIA_STATS_INTERVAL", 0.05)
    plane = StatsPlane()
    client = await aiohttp_client(wired_app(settings, plane))
    await make_expert(client, "erin", skills=["python"])
    expert = await Peer.join(client, "erin", "expert")
    alice = await Peer.join(client, "alice", "client")
    sid = (await alice.request("help.request", expert_id="erin"))["session"]["id"]
    await expert.expect("ring")
    plane.open_rooms.add(sid)
    await expert.request("help.accept", session_id=sid)
    open_track = 'expertcall_media_tracks{direction="inbound",kind="audio"} 1.0'
    async with asyncio.timeout(5):
        while open_track not in (text := await scrape(client)):
            await asyncio.sleep(0.05)
    # Who talks to whom is nobody's business: no session id, no user id.
    assert sid not in text and "alice" not in text and "erin" not in text
    ended = await alice.request("session.end", session_id=sid)
    assert ended["session"]["state"] == "ended"
    assert "expertcall_media_tracks{" not in await scrape(client)


async def scrape(client) -> str:  # type: ignore[no-untyped-def]
    admin = client.app[TOKENS].mint("ops", "admin")
    return await (await client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})).text()
