"""DTLS in both roles with RSA and ECDSA peers: the SFU answers offers as the DTLS client
(a=setup:active) and is the DTLS server for its own offers; GStreamer's webrtcbin, like many
non-browser stacks, has an RSA certificate."""

from __future__ import annotations

from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from cryptography.hazmat.primitives.asymmetric import rsa

from sfu.api import OpenRoom
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests import media_clients
from tests.media_clients import EventHub, Publisher, Subscriber, client_pc

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
