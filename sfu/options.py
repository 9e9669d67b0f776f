"""The media plane's options: plain values, so the control plane can map its own settings in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sfu.api import MediaError
from sfu.network import NetworkOptions
from sfu.udp_mux import UdpMux


@dataclass(frozen=True)
class CongestionOptions:
    """When a subscriber's video is paused for congestion, and what a publisher is asked for
    (the policy is sfu/congestion.py's; docs/media-api.md "Congestion")."""

    min_video_bitrate: int = 250_000  # bps: a subscriber below this cannot take useful video
    follow_fraction: float = 0.5  # of the median estimate: the publisher's REMB follows those above
    pause_below: float = 0.8  # an estimate under this share of the stream's bitrate is short
    pause_loss: int = 26  # fraction lost (of 256) in receiver reports above which video pauses: 10%
    pause_after: float = 3.0  # seconds of shortfall or loss before the video pauses
    resume_after: float = 2.0  # seconds of a sufficient estimate before it resumes
    probe_after: float = 8.0  # seconds paused before a probe resumes it anyway
    max_probe_after: float = 64.0  # the probe wait doubles after each failed probe, up to this
    probe_reset_after: float = 30.0  # seconds without congestion after a probe: backoff starts over

    def __post_init__(self) -> None:
        if self.min_video_bitrate < 0:
            raise MediaError("bad_options", "congestion.min_video_bitrate must not be negative")
        if not (0 < self.follow_fraction <= 1 and 0 < self.pause_below <= 1):
            raise MediaError("bad_options", "congestion.follow_fraction and pause_below must be in (0, 1]")
        if not 0 <= self.pause_loss <= 255:
            raise MediaError("bad_options", "congestion.pause_loss is a fraction of 256: 0 to 255")
        if min(self.pause_after, self.resume_after, self.probe_after) <= 0 or self.probe_reset_after < 0:
            raise MediaError("bad_options", "congestion delays must be positive")
        if self.max_probe_after < self.probe_after:
            raise MediaError("bad_options", "congestion.max_probe_after must be at least probe_after")


@dataclass(frozen=True)
class MediaOptions:
    loopback: bool = False  # 127.0.0.1 host candidates only, no STUN/TURN: tests, benches, dev
    interfaces: tuple[str, ...] = ()  # IPs to gather on; empty = all non-loopback IPv4
    announced_ip: str | None = None  # public IP announced instead of the bound one (1:1 NAT)
    # One UDP socket per worker and address (sfu/udp_mux.py) carries every ICE, DTLS and SRTP
    # datagram of its connections: worker i binds media_port + i, or with 0 a port the kernel
    # picks (so that servers side by side never collide).
    media_port: int = 0
    # Instead, the old path: one aioice socket per connection, from port_min-port_max (0/0:
    # ephemeral). It costs 17-39% more per forwarded packet (no batched fan-out).
    per_connection_sockets: bool = False
    port_min: int = 0
    port_max: int = 0
    ice_servers: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    max_publish_bitrate: int = 2_500_000  # bps per published track: REMB cap, policed at 1.5x
    max_audio_bitrate: int = 256_000  # bps per audio track (Opus tops out at 510k), policed at 1.5x
    media_state_debounce: float = 2.0  # seconds without packets before "stopped"
    keyframe_interval: float = 1.0  # at most one keyframe request per publisher per interval
    recordings_dir: str = ""  # where recordings are written; empty: recording is refused
    congestion: CongestionOptions = field(default_factory=CongestionOptions)

    def __post_init__(self) -> None:
        if self.max_publish_bitrate < 0 or self.max_audio_bitrate < 0 or self.media_state_debounce <= 0 \
                or self.keyframe_interval < 0:
            raise MediaError("bad_options", "bitrate, debounce and interval must be positive")
        if not isinstance(self.congestion, CongestionOptions):
            raise MediaError("bad_options", "congestion must be CongestionOptions")
        if self.media_port and not 1024 <= self.media_port <= 65535:
            raise MediaError("bad_options", "the media port must lie within 1024-65535")
        if self.per_connection_sockets and self.media_port:
            raise MediaError("bad_options", "per-connection sockets and a media port exclude each other")
        if self.port_min and not self.per_connection_sockets:
            raise MediaError("bad_options", "a UDP port range is for per-connection sockets only")
        self.network()  # validates the network part

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MediaOptions":
        """The inverse of ``to_dict`` after a trip through msgpack (tuples come back as lists)."""
        values = dict(data)
        for name in ("interfaces", "ice_servers"):
            values[name] = tuple(values.get(name, ()))
        values["congestion"] = CongestionOptions(**values.get("congestion", {}))
        return cls(**values)

    def for_worker(self, index: int) -> "MediaOptions":
        """These options as worker ``index`` (from 0) of a pool runs them: its own media port
        (with ``media_port`` 0 every worker has the kernel pick its own)."""
        if not self.media_port:
            return self
        return dataclasses.replace(self, media_port=self.media_port + index)

    def network(self, mux: UdpMux | None = None) -> NetworkOptions:
        """The network part; ``mux`` is the worker's shared sockets (None: per-connection sockets)."""
        return NetworkOptions(
            loopback=self.loopback, interfaces=tuple(self.interfaces),
            announced_ip=self.announced_ip, port_min=self.port_min, port_max=self.port_max,
            ice_servers=tuple(self.ice_servers), mux=mux,
        )
