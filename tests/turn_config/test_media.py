"""Two aiortc peers that may only use relay candidates exchange media through a real coturn."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from turn_config.ice_servers import IceServerProvider

from ..coturn_server import SECRET, Coturn, running_coturn

pytestmark = pytest.mark.integration


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    # Both peers' relay addresses are on 127.0.0.1, so this needs the loopback opt-in.
    with running_coturn(tmp_path / "coturn", allow_loopback_peers=True) as server:
        yield server


def relay_only(coturn: Coturn, user: str) -> RTCConfiguration:
    provider = IceServerProvider(SECRET, turn_urls=(f"turn:127.0.0.1:{coturn.port}?transport=udp",), ttl=600)
    return RTCConfiguration(iceServers=provider.for_user(user).to_aiortc(), iceTransportPolicy=RTCIceTransportPolicy.RELAY)


def candidate_types(sdp: str) -> set[str]:
    return set(re.findall(r"^a=candidate:.* typ (\w+)", sdp, re.MULTILINE))


async def test_media_flows_through_the_relay(coturn: Coturn) -> None:
    sender = RTCPeerConnection(relay_only(coturn, "expert-1"))
    receiver = RTCPeerConnection(relay_only(coturn, "client-1"))
    received: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @receiver.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if not received.done():
            received.set_result(track)

    try:
        sender.addTrack(VideoStreamTrack())
        await sender.setLocalDescription(await sender.createOffer())
        assert candidate_types(sender.localDescription.sdp) == {"relay"}
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        assert candidate_types(receiver.localDescription.sdp) == {"relay"}
        await sender.setRemoteDescription(receiver.localDescription)

        track = await asyncio.wait_for(received, 30)
        for _ in range(10):
            frame = await asyncio.wait_for(track.recv(), 30)
            assert isinstance(frame, av.VideoFrame) and frame.width == 640
        assert sender.iceConnectionState == receiver.iceConnectionState == "completed"
        stats = await receiver.getStats()
        rtp_packets = sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")
        assert rtp_packets >= 10
    finally:
        await sender.close()
        await receiver.close()

    # coturn reports what each allocation carried when it is deleted: every RTP packet the receiver
    # got came in from the sender's relay address to the receiver's allocation, and went out of
    # the sender's allocation to the receiver's relay address.
    received_from_peer = await wait_for_log(coturn, r"peer usage: realm=<[^>]*>, username=<\d+:client-1>, rp=(\d+)")
    sent_to_peer = await wait_for_log(coturn, r"peer usage: realm=<[^>]*>, username=<\d+:expert-1>, rp=\d+, rb=\d+, sp=(\d+)")
    assert int(received_from_peer[1]) >= rtp_packets
    assert int(sent_to_peer[1]) >= rtp_packets


async def wait_for_log(coturn: Coturn, pattern: str) -> re.Match[str]:
    for _ in range(200):
        match = re.search(pattern, coturn.log())
        if match:
            return match
        await asyncio.sleep(0.1)
    raise AssertionError(f"coturn never logged {pattern!r}:\n{coturn.log()[-3000:]}")
