"""WHIP/WHEP over a real app on 127.0.0.1: an aiortc publisher and viewer, and every refusal."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from bench.loopback import no_ice_servers, use_loopback_ice
from bench.mediarelay import MediaRelayPlane
from sfu.node_link import link_key
from sfu.node_registry import NodeRegistry
from sfu.node_server import NodeServer, load_of
from sfu.worker import LocalMediaPlane
from signalling.app.factory import create_app, media_options, no_media_plane
from signalling.auth.tokens import Role, TokenIssuer
from signalling.calls.whip import WHIP_RESOURCES, WhipResources
from signalling.core.settings import Settings

from ...backends import REDIS_URL, delete_prefix, redis_available
from ...externals import require

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    from aioice import ice

    monkeypatch.setattr(ice, "get_host_addresses", ice.get_host_addresses)
    use_loopback_ice()


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        secret="test-secret-0123456789abcdef-0123456789",
        media_loopback=True,
        stun_urls=("stun:127.0.0.1:3478",),
        turn_secret="turn-secret-0123456789abcdef",
        turn_urls=("turn:127.0.0.1:3478?transport=udp",),
    )


@pytest.fixture
async def app_client(aiohttp_client: Any, settings: Settings) -> AsyncIterator[TestClient]:
    """The real app, with the SFU (LocalMediaPlane) as its media plane."""
    yield await aiohttp_client(create_app(settings))


@pytest.fixture(params=["sfu", "mediarelay", "sfu-node"])
async def any_client(request: pytest.FixtureRequest, aiohttp_client: Any, settings: Settings) -> AsyncIterator[TestClient]:
    """The app on the SFU, on the MediaRelay reference plane the media bench compares with, and as
    a signalling node (``--role signalling``) whose rooms are on an SFU node (docs/deployment.md)."""
    if request.param == "mediarelay":
        yield await aiohttp_client(create_app(settings, media=lambda _: MediaRelayPlane()))
    elif request.param == "sfu-node":
        require(redis_available(), "redis-server on 127.0.0.1:6379")
        prefix = f"test-{uuid.uuid4().hex}"
        plane = LocalMediaPlane(media_options(settings))
        node = NodeServer(plane, load_of(plane), link_key(settings.secret), "sfu-1", NodeRegistry(REDIS_URL, prefix))
        await node.start("127.0.0.1", 0)
        try:
            signalling = dataclasses.replace(settings, role="signalling", redis_url=REDIS_URL, redis_prefix=prefix)
            yield await aiohttp_client(create_app(signalling))
        finally:
            await node.close()
            await plane.close()
            delete_prefix(prefix)
    else:
        yield await aiohttp_client(create_app(settings))


def bearer(settings: Settings, role: Role = Role.ADMIN, user: str = "admin-1") -> dict[str, str]:
    token = TokenIssuer(settings.secret).mint(user, role)
    return {"Authorization": f"Bearer {token}"}


async def offer_sdp(*kinds: str, send: bool) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(no_ice_servers())
    for kind in kinds:
        if send:
            pc.addTrack(VideoStreamTrack())
        else:
            pc.addTransceiver(kind, direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def post_sdp(client: TestClient, path: str, sdp: str, headers: dict[str, str]) -> Any:
    return await client.post(path, data=sdp, headers={**headers, "Content-Type": "application/sdp"})


async def test_publisher_reaches_viewer_and_delete_stops_it(any_client: TestClient, settings: Settings) -> None:
    app_client = any_client
    admin = bearer(settings)
    created = await app_client.post("/api/broadcasts", headers=admin)
    assert created.status == 201
    session = (await created.json())["session_id"]

    publisher, offer = await offer_sdp("video", send=True)
    response = await post_sdp(app_client, f"/whip/{session}", offer, admin)
    assert response.status == 201, await response.text()
    assert response.content_type == "application/sdp"
    whip_location = response.headers["Location"]
    assert whip_location.startswith(f"/whip/{session}/")
    links = response.headers.getall("Link")
    assert '<stun:127.0.0.1:3478>; rel="ice-server"' in links
    # RFC 9725: the TURN server with a credential minted for this caller.
    (turn,) = [link for link in links if link.startswith("<turn:127.0.0.1:3478?transport=udp>")]
    assert 'username="' in turn and ':admin-1"' in turn and 'credential="' in turn
    await publisher.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))

    viewer, offer = await offer_sdp("video", send=False)
    frames: asyncio.Queue[Any] = asyncio.Queue()

    @viewer.on("track")
    def on_track(track: Any) -> None:
        async def pull() -> None:
            while True:
                frames.put_nowait(await track.recv())

        asyncio.ensure_future(pull())

    response = await post_sdp(app_client, f"/whep/{session}", offer, admin)
    assert response.status == 201, await response.text()
    whep_location = response.headers["Location"]
    assert whep_location.startswith(f"/whep/{session}/")
    await viewer.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
    try:
        frame = await asyncio.wait_for(frames.get(), timeout=15)
        assert (frame.width, frame.height) == (640, 480)

        resources: WhipResources = app_client.app[WHIP_RESOURCES]
        assert len(resources) == 2
        assert (await app_client.delete(whep_location, headers=admin)).status == 200
        assert (await app_client.delete(whep_location, headers=admin)).status == 404
        assert (await app_client.delete(whip_location, headers=admin)).status == 200
        assert len(resources) == 0
    finally:
        await publisher.close()
        await viewer.close()


async def test_missing_or_wrong_token_is_401(app_client: TestClient, settings: Settings) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"},
                    {"Authorization": f"Bearer {TokenIssuer('another-secret-0123456789-0123456789abcdef').mint('x', Role.ADMIN)}"}):
        response = await post_sdp(app_client, "/whip/s1", "v=0\r\n", headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"]["code"] in ("auth_required", "token_invalid")


async def test_session_not_granted_is_403(app_client: TestClient, settings: Settings) -> None:
    client = bearer(settings, Role.CLIENT, "client-1")
    for path in ("/whip/s1", "/whep/s1"):
        response = await post_sdp(app_client, path, "v=0\r\n", client)
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    assert (await app_client.post("/api/broadcasts", headers=client)).status == 403


async def test_wrong_content_type_is_415(app_client: TestClient, settings: Settings) -> None:
    response = await app_client.post(
        "/whip/s1", data="v=0\r\n", headers={**bearer(settings), "Content-Type": "text/plain"}
    )
    assert response.status == 415
    assert (await response.json())["error"]["code"] == "bad_content_type"


@pytest.mark.parametrize("body", ["", "hello", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"])
async def test_malformed_sdp_is_400(app_client: TestClient, settings: Settings, body: str) -> None:
    response = await post_sdp(app_client, "/whip/s1", body, bearer(settings))
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_sdp"


async def test_offer_without_a_supported_codec_is_400(any_client: TestClient, settings: Settings) -> None:
    app_client = any_client
    _, offer = await offer_sdp("video", send=True)
    # Rename every codec the offer carries to one nobody supports.
    unsupported = offer.replace("VP8/90000", "AV2/90000").replace("H264/90000", "AV2/90000")
    unsupported = unsupported.replace("rtx/90000", "AV2/90000")
    response = await post_sdp(app_client, "/whip/s1", unsupported, bearer(settings))
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "unsupported_codec"


async def test_unknown_resource_delete_is_404_and_patch_is_405(app_client: TestClient, settings: Settings) -> None:
    admin = bearer(settings)
    unknown = "/whip/s1/" + "0" * 32
    assert (await app_client.delete(unknown, headers=admin)).status == 404
    assert (await app_client.delete(unknown)).status == 401

    publisher, offer = await offer_sdp("video", send=True)
    try:
        response = await post_sdp(app_client, "/whip/s2", offer, admin)
        location = response.headers["Location"]
        patch = await app_client.patch(
            location, data="a=end-of-candidates\r\n",
            headers={**admin, "Content-Type": "application/trickle-ice-sdpfrag"},
        )
        assert patch.status == 405
        assert patch.headers["Allow"] == "DELETE"
        # Someone else's resource is as unknown as a missing one.
        other = bearer(settings, Role.CLIENT, "client-2")
        assert (await app_client.delete(location, headers=other)).status == 404
        assert (await app_client.delete(location, headers=admin)).status == 200
    finally:
        await publisher.close()


async def test_options_lists_ice_servers_to_token_holders_only(app_client: TestClient, settings: Settings) -> None:
    response = await app_client.options("/whep/s1")
    assert response.status == 204 and "Link" not in response.headers
    response = await app_client.options("/whep/s1", headers=bearer(settings, Role.CLIENT, "viewer"))
    assert response.status == 204
    links = response.headers.getall("Link")
    assert '<stun:127.0.0.1:3478>; rel="ice-server"' in links
    assert any(link.startswith("<turn:127.0.0.1:3478") and ':viewer"' in link for link in links)


async def test_without_a_media_plane_whip_is_503(aiohttp_client: Any, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, media=no_media_plane))
    _, offer = await offer_sdp("video", send=True)
    response = await post_sdp(client, "/whip/s1", offer, bearer(settings))
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "media_unavailable"


async def test_resources_go_with_their_transport_or_room() -> None:
    from sfu.api import RoomClosed, TransportClosed
    from signalling.calls.whip import WhipResource

    resources = WhipResources()
    a = WhipResource("whip", "s1", "a" * 32, "whip-" + "a" * 32, "u1")
    b = WhipResource("whep", "s1", "b" * 32, "whep-" + "b" * 32, "u1")
    c = WhipResource("whep", "s2", "c" * 32, "whep-" + "c" * 32, "u1")
    for resource in (a, b, c):
        resources.add(resource)
    assert resources.get("whip", "s1", "a" * 32) == a
    assert resources.get("whep", "s1", "a" * 32) is None  # the endpoint is part of the name
    await resources.on_media_event(TransportClosed("s1", a.participant_id, "publish", "ice_failed"))
    assert resources.get("whip", "s1", "a" * 32) is None and len(resources) == 2
    await resources.on_media_event(RoomClosed("s1", "ended"))
    assert len(resources) == 1 and resources.get("whep", "s2", "c" * 32) == c


class _SizedTrack(VideoStreamTrack):
    """Green frames of a chosen size: which publisher a viewer's frame came from."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.size = (width, height)

    async def recv(self) -> Any:
        from av import VideoFrame

        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=self.size[0], height=self.size[1])
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts, frame.time_base = pts, time_base
        return frame


async def _publish(client: TestClient, session: str, size: tuple[int, int],
                   headers: dict[str, str]) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(no_ice_servers())
    pc.addTrack(_SizedTrack(*size))
    await pc.setLocalDescription(await pc.createOffer())
    response = await post_sdp(client, f"/whip/{session}", pc.localDescription.sdp, headers)
    assert response.status == 201, await response.text()
    await pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
    return pc, response.headers["Location"]


async def test_a_publisher_that_posts_again_without_delete_replaces_its_old_resource(
        app_client: TestClient, settings: Settings) -> None:
    """A WHIP encoder that reconnects (its network changed, it restarted) posts a new offer and
    never deletes the old resource: the viewers move to the new stream, and the old resource's
    late DELETE cannot take the new one down."""
    admin = bearer(settings)
    session = (await (await app_client.post("/api/broadcasts", headers=admin)).json())["session_id"]
    old, old_location = await _publish(app_client, session, (640, 480), admin)
    viewer, offer = await offer_sdp("video", send=False)
    sizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    @viewer.on("track")
    def on_track(track: Any) -> None:
        async def pull() -> None:
            from aiortc.mediastreams import MediaStreamError

            try:
                while True:
                    frame = await track.recv()
                    sizes.put_nowait((frame.width, frame.height))
            except MediaStreamError:
                pass  # the viewer closed

        asyncio.ensure_future(pull())

    response = await post_sdp(app_client, f"/whep/{session}", offer, admin)
    assert response.status == 201, await response.text()
    await viewer.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
    new = None

    async def frame_of(size: tuple[int, int]) -> None:
        while await sizes.get() != size:
            pass

    try:
        await asyncio.wait_for(frame_of((640, 480)), timeout=15)
        new, new_location = await _publish(app_client, session, (320, 240), admin)
        assert new_location != old_location
        await asyncio.wait_for(frame_of((320, 240)), timeout=15)

        assert (await app_client.delete(old_location, headers=admin)).status == 404
        while not sizes.empty():
            sizes.get_nowait()
        await asyncio.wait_for(frame_of((320, 240)), timeout=15)  # still flowing
        assert len(app_client.app[WHIP_RESOURCES]) == 2  # the new publish and the viewer
        assert (await app_client.delete(new_location, headers=admin)).status == 200
    finally:
        for pc in (old, new, viewer):
            if pc is not None:
                await pc.close()
