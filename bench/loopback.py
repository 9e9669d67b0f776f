"""Loopback ICE for the bench's own processes (clients and the reference relay).

aioice leaves 127.0.0.1 out of host candidates, and bench traffic must stay on loopback, so the
bench processes gather 127.0.0.1 only. This patches aioice process-wide, which is right for a
process that exists to run the bench and wrong anywhere else (the SFU uses sfu/network.py).
"""

from __future__ import annotations

from aioice import ice
from aiortc import RTCConfiguration

LOOPBACK = "127.0.0.1"


def use_loopback_ice() -> None:
    ice.get_host_addresses = _loopback_addresses  # type: ignore[assignment]


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return [LOOPBACK]


def no_ice_servers() -> RTCConfiguration:
    """No STUN/TURN at all: aiortc would otherwise ask stun.l.google.com."""
    return RTCConfiguration(iceServers=[])
