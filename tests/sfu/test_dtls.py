"""DTLS in both roles with RSA and ECDSA peers: the SFU answers offers as the DTLS client
(a=setup:active) and is the DTLS server for its own offers; GStreamer's webrtcbin, like many
non-browser stacks, has an RSA certificate."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from OpenSSL import SSL
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from cryptography.hazmat.primitives.asymmetric import rsa

from sfu.aiortc_hooks import ReleasedDtls, dtls_transports
from sfu.api import Leave, MediaError, OpenRoom, ServerOffer, Subscribe
from sfu.options import MediaOptions
from sfu.router import TICK
from sfu.transport import Transport
from sfu.worker import LocalMediaPlane
from tests import media_clients
from tests.media_clients import (EventHub, Publisher, Subscriber, client_pc, publish_offer,
                                 subscribe_offer, video_frames)
from tests.utils import eventually

pytestmark = pytest.mark.integration


def rsa_pc() -> RTCPeerConnection:
    """An aiortc peer with an RSA certificate, offering what OpenSSL's defaults (webrtcbin's)
    would: RSA and ECDSA suites."""
    pc = client_pc()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = RTCCertificate(key=key, cert=generate_certificate(key))  # type: ignore[arg-type]
    original = certificate._create_ssl_context

    def create(srtp_profiles: Any) -> Any:
        context = original(srtp_profiles)
        context.set_cipher_list(b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
        return context

    certificate._create_ssl_context = create  # type: ignore[method-assign]
    pc._RTCPeerConnection__certificates = [certificate]  # type: ignore[attr-defined]
    return pc


@pytest.mark.parametrize("key", ["rsa", "ecdsa"])
async def test_media_flows_with_peers_of_either_key_in_either_dtls_role(
        key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if key == "rsa":
        monkeypatch.setattr(media_clients, "client_pc", rsa_pc)
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    await plane.request(OpenRoom("room"))
    hub = EventHub(plane)
    # the publisher offers: the SFU is its DTLS client; the SFU offers to the viewer: the SFU
    # is the viewer's DTLS server
    publisher = Publisher(plane, "room", "alice", audio=False, pc=media_clients.client_pc())
    viewer = Subscriber(plane, hub, "room", "bob")
    try:
        await publisher.start()
        await viewer.start()
        await viewer.wait_frames(5, timeout=20)
        assert len(viewer.frames) >= 5
    finally:
        await viewer.close()
        await publisher.close()
        await plane.close()


def live_ssl_connections() -> int:
    gc.collect()
    return sum(type(o) is SSL.Connection for o in gc.get_objects())


def held_ssl_connections(pcs: list[RTCPeerConnection]) -> int:
    return sum(type(dtls._ssl) is SSL.Connection for pc in pcs for dtls in dtls_transports(pc))


async def test_a_publish_connection_without_data_channel_frees_its_dtls_state_and_carries_on() -> None:
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    await plane.request(OpenRoom("room"))
    hub = EventHub(plane)
    publisher = Publisher(plane, "room", "alice", data_channel=False)
    chatter = Publisher(plane, "room", "carol", video=False)  # offers its chat data channel
    viewer = Subscriber(plane, hub, "room", "bob")
    try:
        await publisher.start()
        await chatter.start()
        await viewer.start()
        await viewer.wait_frames(5, timeout=20)
        router = plane.rooms["room"]
        alice, carol = router.participants["alice"].publish, router.participants["carol"].publish
        bob = router.participants["bob"].subscribe
        assert alice is not None and carol is not None and bob is not None
        assert viewer.pc is not None
        released = dtls_transports(alice.pc)[0]
        await eventually(lambda: isinstance(released._ssl, ReleasedDtls), timeout=10)

        # gone for good, not merely unreferenced by aiortc: the SFU's other connections (carol's
        # with its data channel, bob's subscribe one) and the clients' keep theirs
        pcs = [alice.pc, carol.pc, bob.pc, publisher.pc, chatter.pc, viewer.pc]
        assert held_ssl_connections([carol.pc, bob.pc]) == 2
        assert live_ssl_connections() == held_ssl_connections(pcs) == 5

        # media both ways on the released connection: alice's video reaches bob, and the SFU's
        # RTCP (SRTP-protected without OpenSSL) reaches alice; chat on the data channels
        client_dtls = dtls_transports(publisher.pc)[0]
        rtcp_before = client_dtls._RTCDtlsTransport__rx_packets  # type: ignore[attr-defined]
        frames = len(viewer.frames)
        await viewer.wait_frames(frames + 10, timeout=20)
        await eventually(lambda: client_dtls._RTCDtlsTransport__rx_packets > rtcp_before,  # type: ignore[attr-defined]
                         timeout=10)
        chatter.chat.send("hello")
        await eventually(lambda: viewer.chat_received == [{"from": "carol", "message": "hello"}])

        # a data channel offered later has no DTLS to run on: refused, not silently dead
        publisher.pc.createDataChannel("late")
        with pytest.raises(MediaError) as refused:
            await publish_offer(plane, publisher.pc, "room", "alice")
        assert refused.value.code == "bad_state"

        # closing still tells the client: the close_notify made before the release is valid
        await plane.request(Leave("room", "alice", "publish"))
        await eventually(lambda: client_dtls.state == "closed", timeout=4)
    finally:
        await viewer.close()
        await chatter.close()
        await publisher.close()
        await plane.close()


async def test_a_client_closing_its_released_publish_connection_is_seen_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its close_notify cannot be authenticated any more, but it prompts a consent check that
    the closed client leaves unanswered: the connection closes in seconds, not after RFC 7675's
    30. Meanwhile, from a connection's connected state on, each router tick tries to release
    its DTLS state until that is done (alice's publish connection, after her first packet) or
    cannot be (bob's subscribe connection, with its chat channel), and then leaves it alone."""
    calls: list[Transport] = []
    release = Transport.release_dtls

    def counting(self: Transport) -> bool:
        calls.append(self)
        return release(self)

    monkeypatch.setattr(Transport, "release_dtls", counting)
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    await plane.request(OpenRoom("room"))
    hub = EventHub(plane)
    publisher = Publisher(plane, "room", "alice", audio=False, data_channel=False)
    viewer = Subscriber(plane, hub, "room", "bob")
    try:
        await publisher.start()
        await viewer.start()
        await viewer.wait_frames(5, timeout=20)
        router = plane.rooms["room"]
        alice = router.participants["alice"].publish
        bob = router.participants["bob"].subscribe
        assert alice is not None and bob is not None and bob.pc.sctp is not None
        await eventually(lambda: isinstance(dtls_transports(alice.pc)[0]._ssl, ReleasedDtls),
                         timeout=10)
        await eventually(lambda: bob in calls, timeout=10)
        calls.clear()
        await asyncio.sleep(4 * TICK)
        assert calls == []
        assert isinstance(dtls_transports(bob.pc)[0]._ssl, SSL.Connection)
        await publisher.close()
        await eventually(lambda: alice.state == "closed", timeout=10)
    finally:
        await viewer.close()
        await publisher.close()
        await plane.close()


async def test_a_whep_viewer_without_data_channel_frees_its_dtls_state_and_still_leaves_on_close() -> None:
    """A client-offered subscribe connection (WHEP) with no data channel: released once the
    viewer's RTCP arrives, media goes on, and closing the client's connection (no Leave) takes
    the viewer out of the room, by the consent check its close_notify prompts."""
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    await plane.request(OpenRoom("room"))
    publisher = Publisher(plane, "room", "alice", audio=False)
    pc = client_pc()
    frames = video_frames(pc)
    try:
        await publisher.start()
        pc.addTransceiver("video", direction="recvonly")
        await subscribe_offer(plane, pc, "room", "viewer")
        router = plane.rooms["room"]
        viewer = router.participants["viewer"].subscribe
        assert viewer is not None and viewer.pc.sctp is None
        await eventually(lambda: isinstance(dtls_transports(viewer.pc)[0]._ssl, ReleasedDtls),
                         timeout=10)
        count = len(frames)
        await eventually(lambda: len(frames) >= count + 10, timeout=10)
        await pc.close()
        await eventually(lambda: "viewer" not in router.participants, timeout=10)
    finally:
        await pc.close()
        await publisher.close()
        await plane.close()


async def test_a_subscribe_connection_offered_without_chat_frees_its_dtls_state_after_a_resume_too() -> None:
    """Subscribe(chat=False): the SFU offers no data channel (and, with no track yet, nothing:
    the first track's offer opens the connection), so the connection needs no SCTP and is
    released once the viewer's RTCP arrives; media goes on. A resume (Subscribe again, from a
    new client connection) states the choice again, and its connection is released too."""
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    await plane.request(OpenRoom("room"))
    hub = EventHub(plane)
    viewer = Subscriber(plane, hub, "room", "bob", with_chat=False)
    publisher = Publisher(plane, "room", "alice", audio=False)
    try:
        await viewer.start()
        await publisher.start()
        router = plane.rooms["room"]
        for resumed in (False, True):
            if resumed:  # a new client connection, and the control plane's Subscribe again
                old = viewer.pc
                assert old is not None
                viewer._new_pc()
                await plane.request(Subscribe("room", "bob", chat=False))
                await old.close()
            await viewer.wait_frames(len(viewer.frames) + 5, timeout=20)
            bob = router.participants["bob"].subscribe
            assert bob is not None and bob.pc.sctp is None and bob.chat is None
            await eventually(lambda: isinstance(dtls_transports(bob.pc)[0]._ssl, ReleasedDtls),
                             timeout=10)
            await viewer.wait_frames(len(viewer.frames) + 10, timeout=20)
        offers = [o for o in hub.of(ServerOffer) if o.participant_id == "bob"]
        assert [o.offer_id for o in offers] == [1, 1]  # the first waited for the track
        assert all("m=video" in o.sdp and "m=application" not in o.sdp for o in offers)
    finally:
        await viewer.close()
        await publisher.close()
        await plane.close()


async def test_a_closed_room_leaves_none_of_its_connections_alive() -> None:
    """The hooks keep nothing of a connection beyond its life: its peer connection, DTLS
    transports (with their OpenSSL state) and receivers are freed once the room closes. A hook
    map keyed weakly by a DTLS transport, whose value (the Transport's bound handlers) led back
    to the key, once kept every connection alive for the life of the process."""
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    await plane.request(OpenRoom("room"))
    hub = EventHub(plane)
    publisher = Publisher(plane, "room", "alice")
    viewer = Subscriber(plane, hub, "room", "bob")
    try:
        await publisher.start()
        await viewer.start()
        await viewer.wait_frames(5, timeout=20)
        router = plane.rooms["room"]
        pcs = [transport.pc for participant in router.participants.values()
               for transport in participant.transports()]
        assert len(pcs) == 2
        objects: list[Any] = [*pcs, *(dtls for pc in pcs for dtls in dtls_transports(pc)),
                              *(t.receiver for pc in pcs for t in pc.getTransceivers())]
        alive = [weakref.ref(o) for o in objects]
        del router, pcs, objects
    finally:
        await viewer.close()
        await publisher.close()
        await plane.close()
    gc.collect()
    assert [ref() for ref in alive if ref() is not None] == []
