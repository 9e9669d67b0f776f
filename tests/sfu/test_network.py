"""Where media goes: loopback-only candidates, port range, announced IP, no default STUN."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection

from sfu.api import MediaError
from sfu.network import NetworkOptions
from sfu.options import MediaOptions

pytestmark = pytest.mark.integration


async def _candidates(options: NetworkOptions) -> list[tuple[str, int, str]]:
    pc = RTCPeerConnection(options.configuration())
    pc.addTransceiver("audio", direction="sendonly")
    options.prepare(pc)
    await pc.setLocalDescription(await pc.createOffer())
    lines = [l for l in pc.localDescription.sdp.splitlines() if l.startswith("a=candidate:")]
    await pc.close()
    return [(l.split()[4], int(l.split()[5]), l.split()[7]) for l in lines]


async def test_loopback_mode_gathers_only_127_0_0_1() -> None:
    candidates = await _candidates(NetworkOptions(loopback=True))
    assert candidates and {host for host, _, _ in candidates} == {"127.0.0.1"}
    assert {kind for _, _, kind in candidates} == {"host"}


async def test_port_range_and_announced_ip() -> None:
    options = NetworkOptions(interfaces=("127.0.0.1",), port_min=40100, port_max=40110,
                             announced_ip="203.0.113.7")
    candidates = await _candidates(options)
    assert candidates
    for host, port, _ in candidates:
        assert host == "203.0.113.7" and 40100 <= port <= 40110


def test_no_public_stun_server_unless_configured() -> None:
    assert NetworkOptions(loopback=True).configuration().iceServers == []
    assert NetworkOptions().configuration().iceServers == []
    turn = {"urls": "turn:127.0.0.1:3478", "username": "u", "credential": "p"}
    loopback_ignores = NetworkOptions(loopback=True, ice_servers=(turn,))
    assert loopback_ignores.configuration().iceServers == []
    servers = NetworkOptions(ice_servers=(turn,)).configuration().iceServers
    assert servers is not None and [s.urls for s in servers] == ["turn:127.0.0.1:3478"]


@pytest.mark.parametrize("kwargs", [
    {"port_min": 5000}, {"port_min": 6000, "port_max": 5000}, {"port_min": 80, "port_max": 90},
    {"max_publish_bitrate": -1}, {"media_state_debounce": 0},
])
def test_bad_options_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(MediaError) as info:
        MediaOptions(**kwargs)  # type: ignore[arg-type]
    assert info.value.code == "bad_options"
