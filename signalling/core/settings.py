"""Server settings: one dataclass, filled from defaults, ``EXPERTCALL_*`` variables and the command line.

Every option of ``expertcall serve`` has an environment equivalent: ``--billing-unit-seconds`` is
``EXPERTCALL_BILLING_UNIT_SECONDS``. Values given on the command line win over the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import origins as origins_module
from .files import UnsafeFile, private_dir, read_secret_file
from .limits import parse_networks

ENV_PREFIX = "EXPERTCALL_"
LIMITS = (
    "ws_max_connections", "ws_max_connections_per_address", "ws_max_unauthenticated_per_address",
    "ws_outbox_limit", "whip_max_resources_per_participant", "whip_max_resources_per_session",
    "booking_max_open_per_client", "booking_max_open_per_expert",
)


ROLES = ("all", "signalling", "sfu")


class SettingsError(ValueError):
    """A setting is missing, malformed or unsafe; the message says which and why."""


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./var")
    # HS256 secret for tokens: EXPERTCALL_SECRET, or a file only its owner may read
    # (--secret-file). Left empty, a loopback server makes a random one per data dir (kept in
    # data_dir/secret); any other bind refuses to start without one.
    secret: str = field(default="", repr=False)
    secret_file: Path | None = None
    # No bearer token may live longer than this (seconds), whoever minted it.
    token_max_ttl: int = 24 * 3600
    redis_url: str = ""
    # The shared database of every node (postgresql://...): the ledger and every billing record.
    # Empty: the embedded SQLite file in data_dir, for one node.
    database_url: str = ""
    # Every Redis key and channel starts with this, so that deployments (and tests) can share a server.
    redis_prefix: str = "expertcall"
    node_id: str = ""

    # /metrics takes an admin token or this static one (at least 32 characters, for scrapers)...
    metrics_token: str = field(default="", repr=False)
    # ... and, with a port, is also served without a token on a second listener, loopback only.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    # Web pages on other origins that may use /ws and the REST API (http(s)://host[:port]);
    # the server's own origin always may. Requests without Origin (apps, encoders) are not affected.
    allowed_origins: tuple[str, ...] = ()

    # WebSocket protocol
    ping_interval: float = 20.0
    ping_timeout: float = 10.0
    resume_grace: float = 30.0
    max_message_bytes: int = 64 * 1024
    max_messages_per_second: int = 20
    # A socket may send this many at once (a browser trickling its ICE candidates) before the
    # per-second rate applies: a token bucket, not a fixed window.
    max_message_burst: int = 60
    ring_timeout: float = 30.0
    # An accepted session whose media does not flow on both sides within this ends as a no-show.
    connect_timeout: float = 60.0
    # A session paused (either side's media stopped) this long ends with the reason
    # ``paused_timeout``: nobody is charged while paused, and nobody may hold an expert forever.
    paused_timeout: float = 300.0
    reminder_lead_seconds: tuple[int, ...] = (600, 60)

    # Limits: signalling/core/limits.py lists each with the error a client sees when it hits it.
    ws_max_connections: int = 10_000
    ws_max_connections_per_address: int = 50
    ws_max_unauthenticated_per_address: int = 10
    ws_outbox_limit: int = 256
    whip_max_resources_per_participant: int = 4
    whip_max_resources_per_session: int = 16
    booking_max_open_per_client: int = 10
    booking_max_open_per_expert: int = 500
    max_body_bytes: int = 64 * 1024
    max_sdp_bytes: int = 64 * 1024
    # Reverse proxies (IPs or CIDRs) whose X-Forwarded-For names the client the limits count.
    trusted_proxies: tuple[str, ...] = ()

    # Scheduled sessions (bookings)
    booking_max_days_ahead: int = 90
    booking_min_notice_seconds: int = 300
    booking_min_seconds: int = 300
    booking_max_seconds: int = 4 * 3600

    # Billing
    billing_unit_seconds: int = 60
    platform_fee_bps: int = 2000
    per_session_minimum_seconds: int = 60
    refund_window_seconds: int = 72 * 3600
    media_debounce_seconds: float = 2.0
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str = field(default="", repr=False)
    billing_grace_seconds: int = 0
    metering_stream: str = "expertcall:metering"

    # Media plane. loopback=True gathers and announces 127.0.0.1 only and contacts no STUN server:
    # the mode for tests, benches and a laptop.
    media_loopback: bool = False
    media_interfaces: tuple[str, ...] = ()
    media_announced_ip: str = ""
    # One UDP socket per SFU worker (and address) for every connection's ICE, DTLS and SRTP:
    # worker i on media_port + i, or with 0 on a port the kernel picks (sfu/udp_mux.py)...
    media_port: int = 0
    # ... or, opted out, a socket per connection (the old path), from the range below or ephemeral.
    media_per_connection: bool = False
    media_port_min: int = 0
    media_port_max: int = 0
    stun_urls: tuple[str, ...] = ()
    max_publish_bitrate: int = 2_500_000
    # At most one keyframe request per publisher per interval (seconds): a joiner waits up to this
    # long for its first frame, and a publisher sends at most 1/interval keyframes per second.
    media_keyframe_interval: float = 1.0
    # SFU worker processes (sfu/pool.py); 1 keeps the SFU in this process. `expertcall serve`
    # defaults to the CPUs it may run on.
    sfu_workers: int = 1
    # What this process runs (docs/deployment.md): "all" (signalling and the SFU), "signalling"
    # (rooms on the SFU nodes found in Redis) or "sfu" (an SFU node serving signalling nodes).
    role: str = "all"
    # The key SFU nodes and signalling nodes prove to each other (at least 32 characters); empty:
    # derived from the token secret, so SFU nodes would hold that secret too.
    sfu_secret: str = field(default="", repr=False)
    # An SFU node's internal endpoint: where it listens for signalling nodes (port 0: any free
    # port, announced in Redis), and the address it announces (default: the one it listens on).
    sfu_node_host: str = "127.0.0.1"
    sfu_node_port: int = 0
    sfu_node_advertise: str = ""
    # An SFU node's SIGTERM drains it: no new rooms, its rooms given this long to end before it
    # hangs up (the rooms left are re-placed on other nodes). 0: hang up at once.
    sfu_drain_seconds: float = 60.0
    # A shutdown still running this long after SIGTERM (an SFU node: after its drain) writes every
    # thread's and every asyncio task's stack to stderr, once (app/shutdown_watchdog.py): below a
    # process manager's usual 30 s, so a hang names its cause before SIGKILL. 0: never.
    shutdown_dump_seconds: float = 20.0
    # Session recording (docs/recording.md): files under data_dir/recordings, deleted this many
    # days after they were made (0: kept until an admin deletes them).
    recording_enabled: bool = True
    recording_retention_days: float = 30.0

    # TURN (the TURN REST API scheme shared with coturn's use-auth-secret)
    turn_secret: str = field(default="", repr=False)
    turn_urls: tuple[str, ...] = ()
    turn_ttl: int = 6 * 3600
    turn_max_ttl: int = 24 * 3600

    # Serve the web demo at / and hand out dev tokens (only ever on a loopback bind).
    demo: bool = True
    dev_tokens: bool = field(default=False, init=False)
    _resolved_secret: str = field(default="", init=False, repr=False)

    def recordings_dir(self) -> Path:
        """Where this node's media plane writes recordings: nothing a request says can change it."""
        return self.data_dir / "recordings"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.secret_file is not None:
            self.secret_file = Path(self.secret_file)
        if not (0 < int(self.port) < 65536) and int(self.port) != 0:
            raise SettingsError(f"port must be 1-65535 (or 0 for any), got {self.port}")
        if self.billing_unit_seconds < 1:
            raise SettingsError("billing_unit_seconds must be at least 1")
        if not (0 <= self.platform_fee_bps <= 10_000):
            raise SettingsError("platform_fee_bps must be between 0 and 10000")
        if self.max_messages_per_second < 1 or self.max_message_burst < 1:
            raise SettingsError("max_messages_per_second and max_message_burst must be at least 1")
        if self.max_message_bytes < 1024:
            raise SettingsError("max_message_bytes must be at least 1024")
        if self.media_port_min or self.media_port_max:
            if not (1024 <= self.media_port_min <= self.media_port_max <= 65535):
                raise SettingsError("media port range must satisfy 1024 <= min <= max <= 65535")
        if self.media_port and not (1024 <= self.media_port <= 65535 - max(self.sfu_workers, 1) + 1):
            raise SettingsError("media_port + sfu_workers - 1 must lie within 1024-65535")
        if self.media_port and self.media_per_connection:
            raise SettingsError("media_port and media_per_connection exclude each other")
        if self.media_port_min and not self.media_per_connection:
            raise SettingsError("the media port range is for a socket per connection: set media_per_connection "
                                "too, or media_port for one port per SFU worker")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError("database_url must be a postgresql:// URL (or empty for the embedded SQLite)")
        if self.paused_timeout <= 0:
            raise SettingsError("paused_timeout must be above 0 seconds")
        if not (60 <= self.token_max_ttl <= 30 * 86400):
            raise SettingsError("token_max_ttl must be between 60 seconds and 30 days")
        origins = []
        for origin in self.allowed_origins:
            normalised = origins_module.normalise(origin)
            if normalised is None:
                raise SettingsError(f"allowed_origins: {origin!r} is not an origin like https://app.example.com[:port]")
            origins.append(normalised)
        self.allowed_origins = tuple(origins)
        for name in LIMITS:
            if int(getattr(self, name)) < 1:
                raise SettingsError(f"{name} must be at least 1")
        if self.max_body_bytes < 4096 or self.max_sdp_bytes < 4096:
            raise SettingsError("max_body_bytes and max_sdp_bytes must be at least 4096")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise SettingsError(f"trusted_proxies: {exc}") from None
        if self.metrics_token and len(self.metrics_token) < 32:
            raise SettingsError("metrics_token must be at least 32 characters long")
        if self.metrics_port:
            if not (0 < int(self.metrics_port) < 65536):
                raise SettingsError(f"metrics_port must be 1-65535, got {self.metrics_port}")
            if not is_loopback_host(self.metrics_host):
                raise SettingsError(
                    f"the metrics listener takes no token, so it binds to loopback only, not {self.metrics_host}: "
                    "scrape the main port's /metrics with EXPERTCALL_METRICS_TOKEN from elsewhere"
                )
        if self.media_keyframe_interval < 0:
            raise SettingsError("media_keyframe_interval must be 0 or more seconds")
        if not (1 <= self.sfu_workers <= 1024):
            raise SettingsError(f"sfu_workers must be between 1 and 1024, got {self.sfu_workers}")
        if self.role not in ROLES:
            raise SettingsError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.role != "all" and not self.redis_url:
            raise SettingsError(f"role {self.role} needs --redis: SFU nodes and signalling nodes find each other there")
        if self.sfu_secret and len(self.sfu_secret) < 32:
            raise SettingsError("sfu_secret must be at least 32 characters long")
        if self.sfu_drain_seconds < 0:
            raise SettingsError(f"sfu_drain_seconds must be 0 or more, got {self.sfu_drain_seconds}")
        if self.shutdown_dump_seconds < 0:
            raise SettingsError(f"shutdown_dump_seconds must be 0 (never) or more, got {self.shutdown_dump_seconds}")
        if not (0 <= int(self.sfu_node_port) < 65536):
            raise SettingsError(f"sfu_node_port must be 0-65535, got {self.sfu_node_port}")
        if self.sfu_node_host in ("0.0.0.0", "::", "") and not self.sfu_node_advertise and self.role == "sfu":
            raise SettingsError("an SFU node listening on every address needs sfu_node_advertise: the address signalling nodes dial")
        if self.recording_retention_days < 0:
            raise SettingsError("recording_retention_days must be 0 (keep) or more days")
        if not self.node_id:
            self.node_id = f"{os.uname().nodename}-{os.getpid()}"
        self.dev_tokens = self.demo and self.is_loopback

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def resolve_secret(self) -> str:
        """The token secret: given, read from a private file, or (loopback only) generated."""
        if self._resolved_secret:
            return self._resolved_secret
        if self.secret and self.secret_file is not None:
            raise SettingsError("give the secret once: EXPERTCALL_SECRET or a secret file, not both")
        secret = self.secret
        if self.secret_file is not None:
            try:
                secret = read_secret_file(self.secret_file)
            except UnsafeFile as exc:
                raise SettingsError(str(exc)) from None
        if secret:
            if len(secret) < 32:
                raise SettingsError("the secret must be at least 32 characters long (RFC 7518 asks HS256 keys to be 256 bits)")
        elif not self.is_loopback:
            raise SettingsError(
                f"refusing to listen on {self.host} without an explicit secret: "
                "pass --secret-file FILE (mode 600) or set EXPERTCALL_SECRET (at least 32 characters). "
                "Only a loopback bind (127.0.0.1) may run with a generated development secret."
            )
        else:
            private_dir(self.data_dir)
            path = self.data_dir / "secret"
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(os.urandom(32).hex())
            try:
                secret = read_secret_file(path)
            except UnsafeFile as exc:
                raise SettingsError(str(exc)) from None
        self.secret = self._resolved_secret = secret
        return secret

    def sfu_link_secret(self) -> str:
        """The secret the SFU node links are keyed on: ``sfu_secret``, else the token secret."""
        return self.sfu_secret or self.resolve_secret()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then ``EXPERTCALL_*`` variables, then explicit overrides (None means unset)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse(name: str, type_: Any, raw: str) -> Any:
    kind = str(type_)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind in ("Path", "Path | None"):
            return Path(raw)
        if kind.startswith("tuple[int"):
            return tuple(int(x) for x in raw.split(",") if x.strip())
        if kind.startswith("tuple[str"):
            return tuple(x.strip() for x in raw.split(",") if x.strip())
        return raw
    except ValueError:
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
