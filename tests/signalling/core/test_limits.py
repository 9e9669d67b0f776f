"""Every limit of signalling/core/limits.py: its default, and what a client sees when it hits it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS, Identity
from signalling.calls.node import SIGNALLING
from signalling.calls.whip import SESSION_GRANTS
from signalling.core.limits import client_address, parse_networks
from signalling.core.settings import Settings

from ...utils import FakePlane, Peer, eventually, kill
from ..bookings.test_scheduling import auth, book, error_of, local, make_expert, next_weekday

pytestmark = pytest.mark.integration


def settings_with(settings: Settings, **changes: Any) -> Settings:
    values = {f: getattr(settings, f) for f in ("data_dir", "secret", "media_loopback")}
    return Settings(**{**values, **changes})


def test_the_defaults() -> None:
    s = Settings()
    assert (s.ws_max_connections, s.ws_max_connections_per_address, s.ws_max_unauthenticated_per_address) == (10_000, 50, 10)
    assert s.ws_outbox_limit == 256
    assert (s.whip_max_resources_per_participant, s.whip_max_resources_per_session) == (4, 16)
    assert (s.booking_max_open_per_client, s.booking_max_open_per_expert) == (10, 500)
    assert s.max_body_bytes == s.max_sdp_bytes == 64 * 1024


async def refused(client: Any, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws", headers=headers or {})
    return info.value.status, info.value.message, dict(info.value.headers or {})


# --- sockets --------------------------------------------------------------------------------


async def test_sixty_sockets_that_never_say_hello_get_ten(client) -> None:  # type: ignore[no-untyped-def]
    sockets = [await client.ws_connect("/ws") for _ in range(10)]
    status, _, _ = await refused(client)
    assert status == 429
    resp = await client.get("/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status == 429 and (await resp.json())["error"]["code"] == "too_many_unauthenticated"
    # One says hello: it no longer waits, so another may connect.
    token = client.app[TOKENS].mint("alice", "client")
    peer = Peer(sockets[0])
    assert (await peer.request("hello", token=token))["type"] == "welcome"
    await (await client.ws_connect("/ws")).close()  # admitted
    for ws in sockets[1:]:
        await ws.close()


async def test_sockets_per_address_and_in_total(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(settings_with(settings, ws_max_connections_per_address=3, ws_max_connections=5)))
    peers = [await Peer.join(client, f"user{i}", "client") for i in range(3)]
    resp = await client.get("/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status == 429 and (await resp.json())["error"]["code"] == "too_many_connections"
    # Sockets from elsewhere (a trusted proxy's clients would be) count on their own until the total.
    await peers[0].ws.close()
    await eventually(lambda: client.app[SIGNALLING].sockets.total == 2)
    await Peer.join(client, "again", "client")
    node = client.app[SIGNALLING]
    node.sockets.by_address["198.51.100.7"] = 2
    node.sockets.total += 2
    resp = await client.get("/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "server_full"
    assert resp.headers["Retry-After"] == "5"


def test_the_address_a_limit_counts() -> None:
    def request(remote: str, forwarded: str | None = None) -> Any:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        req = make_mocked_request("GET", "/ws", headers=headers)
        req._transport_peername = (remote, 1234)  # type: ignore[attr-defined]
        return req.clone(remote=remote)

    proxies = parse_networks(("10.0.0.0/8",))
    assert client_address(request("203.0.113.9")) == "203.0.113.9"
    # A client cannot pick its own address: X-Forwarded-For counts only from a trusted proxy.
    assert client_address(request("203.0.113.9", "198.51.100.1"), proxies) == "203.0.113.9"
    assert client_address(request("10.1.1.1", "198.51.100.1, 10.2.2.2"), proxies) == "198.51.100.1"
    assert client_address(request("10.1.1.1", "spoofed, 198.51.100.1"), proxies) == "198.51.100.1"
    # One IPv6 machine usually has a whole /64.
    assert client_address(request("2001:db8:1:2:aaaa::1")) == client_address(request("2001:db8:1:2:bbbb::2"))
    assert client_address(request("2001:db8:1:2::1")) != client_address(request("2001:db8:1:3::1"))


async def test_a_client_that_reads_none_of_its_replies_is_closed(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(settings_with(settings, ws_outbox_limit=16)))
    slow = await Peer.join(client, "slow", "client")
    node = client.app[SIGNALLING]
    conn = next(c for c in node.connections.values() if c.identity and c.identity.user_id == "slow")

    async def stuck(data: str) -> None:
        await asyncio.Event().wait()

    conn.ws.send_str = stuck  # type: ignore[method-assign]
    for _ in range(30):  # pings are replies (send), not deliveries: main never limited them
        await slow.send("ping")
    assert await slow.closed() == 4013


# --- WHIP/WHEP ------------------------------------------------------------------------------


class Everyone:
    def may_publish(self, identity: Identity, session_id: str) -> bool:
        return True

    def may_view(self, identity: Identity, session_id: str) -> bool:
        return True


@pytest.fixture
async def whip(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    app = create_app(settings, media=lambda _: FakePlane())
    app[SESSION_GRANTS] = Everyone()
    return await aiohttp_client(app)


async def whep(client: Any, user: str, session: str = "s1", role: str = "client") -> Any:
    headers = {**auth(client, user, role), "Content-Type": "application/sdp"}
    return await client.post(f"/whep/{session}", data="v=0\r\n", headers=headers)


async def test_twelve_whep_resources_at_once_get_four(whip) -> None:  # type: ignore[no-untyped-def]
    replies = await asyncio.gather(*(whep(whip, "alice") for _ in range(12)))
    assert sorted(r.status for r in replies) == [201] * 4 + [429] * 8
    refusal = next(r for r in replies if r.status == 429)
    assert (await refusal.json())["error"]["code"] == "too_many_resources"
    # Deleting one frees its place.
    created = next(r for r in replies if r.status == 201)
    assert (await whip.delete(created.headers["Location"], headers=auth(whip, "alice"))).status == 200
    assert (await whep(whip, "alice")).status == 201


async def test_a_session_holds_sixteen_resources(whip) -> None:  # type: ignore[no-untyped-def]
    for i in range(4):
        for _ in range(4):
            assert (await whep(whip, f"user{i}")).status == 201
    resp = await whep(whip, "user9")
    assert resp.status == 429 and "per session" in (await resp.json())["error"]["message"]
    assert (await whep(whip, "user9", session="s2")).status == 201
    # Admins (broadcasts, load tests) are not counted.
    assert (await whep(whip, "ops", role="admin")).status == 201


# --- bookings -------------------------------------------------------------------------------

HOURS = {"time_zone": "Europe/Berlin", "weekly": {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}}


async def test_forty_bookings_of_one_expert_by_one_client_get_ten(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ..bookings.test_scheduling import serve

    settings = Settings(data_dir=tmp_path / "var", secret="test-secret-0123456789abcdef-0123456789",
                        booking_min_notice_seconds=0, booking_max_days_ahead=90)
    client = await serve(aiohttp_client, settings)
    await make_expert(client, "erin", HOURS)
    day = next_weekday(0, after_days=3)
    starts = [local(day, 0) + i * 3600 for i in range(40)]
    replies = await asyncio.gather(*(book(client, "carl", "erin", s, s + 1800) for s in starts))
    assert sorted(r.status for r in replies) == [201] * 10 + [429] * 30
    assert await error_of(next(r for r in replies if r.status == 429)) == (429, "too_many_bookings")
    # Another client is not held back by carl's.
    assert (await book(client, "dana", "erin", starts[-1] + 7200, starts[-1] + 9000)).status == 201
    # Cancelling one frees its place.
    booking = await next(r for r in replies if r.status == 201).json()
    assert (await client.delete(f"/api/bookings/{booking['id']}", headers=auth(client, "carl"))).status == 200
    assert (await book(client, "carl", "erin", starts[-1] + 3 * 3600, starts[-1] + 4 * 3600)).status == 201


async def test_an_expert_holds_at_most_the_expert_limit(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ..bookings.test_scheduling import serve

    settings = Settings(data_dir=tmp_path / "var", secret="test-secret-0123456789abcdef-0123456789",
                        booking_min_notice_seconds=0, booking_max_open_per_expert=3)
    client = await serve(aiohttp_client, settings)
    await make_expert(client, "erin", HOURS)
    start = local(next_weekday(2, after_days=3), 0)
    for i in range(3):
        assert (await book(client, f"client{i}", "erin", start + i * 3600, start + i * 3600 + 1800)).status == 201
    resp = await book(client, "client9", "erin", start + 9 * 3600, start + 9 * 3600 + 1800)
    body = await resp.json()
    assert resp.status == 429 and body["error"]["code"] == "too_many_bookings" and body["error"]["field"] == "expert_id"


# --- bodies ---------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_refused_before_it_is_read(client) -> None:  # type: ignore[no-untyped-def]
    headers = {**auth(client, "erin", "expert"), "Content-Type": "application/json"}
    big = json.dumps({"display_name": "E", "bio": "x" * 100_000})
    resp = await client.put("/api/experts/erin", data=big, headers=headers)
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "body_too_large"

    async def chunks() -> Any:  # no Content-Length: chunked
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192].encode()

    resp = await client.put("/api/experts/erin", data=chunks(), headers=headers)
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "body_too_large"


async def test_a_900_kib_sdp_is_refused_after_at_most_the_limit(whip) -> None:  # type: ignore[no-untyped-def]
    token = whip.app[TOKENS].mint("alice", "client")
    reader, writer = await asyncio.open_connection("127.0.0.1", whip.server.port)
    writer.write(
        f"POST /whip/s1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/sdp\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"v=0\r\n" + b"a=x\r\n" * 3000  # 18 KB
    sent = 0
    response = b""
    # Send up to 900 KiB, one chunk at a time, but stop as soon as the server has answered.
    while sent < 900 * 1024:
        writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await writer.drain()
        sent += len(chunk)
        try:
            response = await asyncio.wait_for(reader.read(4096), 0.05)
        except asyncio.TimeoutError:
            continue
        break
    writer.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"body_too_large"' in response
    assert sent <= 64 * 1024 + 2 * len(chunk)


async def test_a_resume_replays_a_full_stash_without_counting_as_slow(client) -> None:  # type: ignore[no-untyped-def]
    from signalling.backends.memory import MAX_STASHED

    alice = await Peer.join(client, "alice", "client")
    kill(alice)
    node = client.app[SIGNALLING]
    await eventually(lambda: not node.connections)
    for i in range(MAX_STASHED):
        await node.backend.deliver("alice", {"v": 1, "type": "ack", "ref": i})
    back = Peer(await client.ws_connect("/ws"))
    token = client.app[TOKENS].mint("alice", "client")
    welcome = await back.request("resume", token=token, resume_token=alice.welcome["resume_token"])
    assert welcome["resumed"] is True
    refs = [(await back.expect("ack"))["ref"] for _ in range(MAX_STASHED)]
    assert refs == list(range(MAX_STASHED))
    assert (await back.request("ping"))["type"] == "pong"
