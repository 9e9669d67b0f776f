"""Where media goes on the network: the addresses ICE gathers and announces.

aioice on its own binds every non-loopback interface on a random port and, through aiortc's
defaults, asks stun.l.google.com for a public address. Here the operator chooses instead:
``loopback`` (127.0.0.1 only, no STUN/TURN — for tests, benches and local runs), a list of
interfaces, an announced public IP for a server behind 1:1 NAT, a UDP port range or one port
shared by every connection (``mux``, sfu/udp_mux.py), and the STUN/TURN servers, none unless
configured. The same options serve the SFU and the test clients.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from aioice import Candidate
from aioice.ice import get_host_addresses
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from sfu import aiortc_hooks
from sfu.api import MediaError
from sfu.udp_mux import UdpMux

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class NetworkOptions:
    loopback: bool = False
    interfaces: tuple[str, ...] = ()  # IPs to bind; empty = every non-loopback IPv4 address
    announced_ip: str | None = None
    port_min: int = 0  # 0 = any ephemeral port
    port_max: int = 0
    # RTCIceServer-like dicts: {"urls": "turn:host:3478", "username": ..., "credential": ...}
    ice_servers: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    # the worker's single media port (sfu/udp_mux.py) instead of a socket per connection
    mux: UdpMux | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.port_min == 0) != (self.port_max == 0) or self.port_min > self.port_max:
            raise MediaError("bad_options", "port_min and port_max go together, min <= max")
        if self.port_min and not (1024 <= self.port_min and self.port_max <= 65535):
            raise MediaError("bad_options", "the UDP port range must lie within 1024-65535")

    def configuration(self) -> RTCConfiguration:
        """RTCConfiguration with exactly the configured ICE servers — never aiortc's default
        public STUN server, and none at all in loopback mode."""
        if self.loopback:
            return RTCConfiguration(iceServers=[])
        return RTCConfiguration(iceServers=[RTCIceServer(**server) for server in self.ice_servers])

    def addresses(self) -> list[str]:
        if self.loopback:
            return [LOOPBACK]
        if self.interfaces:
            return list(self.interfaces)
        return get_host_addresses(use_ipv4=True, use_ipv6=False)

    def prepare(self, pc: RTCPeerConnection) -> None:
        """Apply these options to every ICE gatherer of ``pc``; call before setLocalDescription
        (after each renegotiation that may have created a transport)."""
        aiortc_hooks.replace_candidate_gathering(pc, self._gather)

    async def _gather(
        self, connection: Any, component: int, relay: aiortc_hooks.RelayGatherer
    ) -> list[Candidate]:
        candidates = []
        for address in self.addresses():
            candidate = await self._bind(connection, component, address)
            if candidate is not None:
                candidates.append(candidate)
        if not self.loopback:
            candidates += await aiortc_hooks.server_reflexive_candidates(connection)
            candidates += await relay(component)
        return candidates

    async def _bind(self, connection: Any, component: int, address: str) -> Candidate | None:
        announced = None if self.loopback else self.announced_ip
        if self.mux is not None:
            try:
                socket = await self.mux.socket(address)
            except OSError as exc:
                raise MediaError("media_unavailable",
                                 f"cannot bind udp {address}:{self.mux.port}: {exc}") from exc
            return await aiortc_hooks.bind_muxed_candidate(connection, component, socket, announced)
        if self.port_min:
            ports = list(range(self.port_min, self.port_max + 1))
            random.shuffle(ports)
        else:
            ports = [0]
        for port in ports[:64]:
            try:
                return await aiortc_hooks.bind_host_candidate(
                    connection, component, address, port, announced
                )
            except OSError:  # port taken, or the address is not on this host
                continue
        return None
