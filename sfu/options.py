"""The media plane's options: plain values, so the control plane can map its own settings in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sfu.api import MediaError
from sfu.network import NetworkOptions
from sfu.udp_mux import UdpMux


@dataclass(frozen=True)
class MediaOptions:
    loopback: bool = False  # 127.0.0.1 host candidates only, no STUN/TURN: tests, benches, dev
    interfaces: tuple[str, ...] = ()  # IPs to gather on; empty = all non-loopback IPv4
    announced_ip: str | None = None  # public IP announced instead of the bound one (1:1 NAT)
    port_min: int = 0  # UDP port range for media; 0/0 = ephemeral
    port_max: int = 0
    # One UDP port per worker (sfu/udp_mux.py): worker i takes media_port + i for every ICE, DTLS
    # and SRTP datagram of its connections. 0: a socket per connection, from port_min-port_max.
    media_port: int = 0
    ice_servers: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    max_publish_bitrate: int = 2_500_000  # bps per published track: REMB cap, policed at 1.5x
    max_audio_bitrate: int = 256_000  # bps per audio track (Opus tops out at 510k), policed at 1.5x
    media_state_debounce: float = 2.0  # seconds without packets before "stopped"
    keyframe_interval: float = 1.0  # at most one keyframe request per publisher per interval
    recordings_dir: str = ""  # where recordings are written; empty: recording is refused

    def __post_init__(self) -> None:
        if self.max_publish_bitrate < 0 or self.max_audio_bitrate < 0 or self.media_state_debounce <= 0 \
                or self.keyframe_interval < 0:
            raise MediaError("bad_options", "bitrate, debounce and interval must be positive")
        if self.media_port and not 1024 <= self.media_port <= 65535:
            raise MediaError("bad_options", "the media port must lie within 1024-65535")
        if self.media_port and self.port_min:
            raise MediaError("bad_options", "a single media port and a port range exclude each other")
        self.network()  # validates the network part

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MediaOptions":
        """The inverse of ``to_dict`` after a trip through msgpack (tuples come back as lists)."""
        values = dict(data)
        for name in ("interfaces", "ice_servers"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)

    def for_worker(self, index: int) -> "MediaOptions":
        """These options as worker ``index`` (from 0) of a pool runs them: its own media port."""
        if not self.media_port:
            return self
        return dataclasses.replace(self, media_port=self.media_port + index)

    def network(self, mux: UdpMux | None = None) -> NetworkOptions:
        """The network part; ``mux`` is the worker's shared socket when ``media_port`` is set."""
        return NetworkOptions(
            loopback=self.loopback, interfaces=tuple(self.interfaces),
            announced_ip=self.announced_ip, port_min=self.port_min, port_max=self.port_max,
            ice_servers=tuple(self.ice_servers), mux=mux,
        )
