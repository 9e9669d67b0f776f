"""A ``turnserver.conf`` for coturn that is safe by default.

A TURN server relays UDP to any address a client names, from inside the operator's network. Left
open it is a proxy into that network (the cloud metadata service on 169.254.169.254, Redis on
127.0.0.1, the office LAN), so every loopback, private, link-local, multicast and reserved range
is denied unless explicitly allowed; IPv4-mapped, NAT64 and 6to4 IPv6 ranges are denied too, since
they carry an IPv4 address that could be one of those.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from .credentials import CredentialError, check_secret

# (range, why). Rendered as coturn's ``first-last`` ranges. ``::/128`` is not listed: coturn 4.6
# matches every IPv4 peer against an IPv6 range that starts at ``::`` (denying it denies the whole
# internet), and since CVE-2020-26262 it refuses ``::`` and 0.0.0.0 as loopback addresses itself.
DENIED_PEER_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this' network"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, cloud metadata services"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, broadcast"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique local (ULA)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)

# The allow-loopback opt-in: coturn refuses loopback peers unless allow-loopback-peers is set, and
# the addresses must also be allowed over the denied 127.0.0.0/8 and ::1.
LOOPBACK_PEERS = ("127.0.0.1", "::1")

_REALM = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?$")


class ConfigError(ValueError):
    """A value that cannot go into turnserver.conf. ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError("turn_config_invalid", f"{what} must be an IP address, got {value!r}") from None


def _path(value: Path | None, what: str) -> Path | None:
    if value is not None and ("\n" in str(value) or "\r" in str(value)):
        raise ConfigError("turn_config_invalid", f"{what} must not contain a line break")
    return value


def _range(cidr: str) -> str:
    network = ipaddress.ip_network(cidr)
    first, last = network[0], network[-1]
    return str(first) if first == last else f"{first}-{last}"


@dataclass(frozen=True)
class CoturnConfig:
    realm: str
    # One public IP, or "public/private" pairs when coturn sits behind 1:1 NAT (coturn's syntax).
    external_ips: tuple[str, ...]
    secrets: tuple[str, ...]  # the current secret first; older ones only while rotating
    listening_ips: tuple[str, ...] = ()  # empty: every interface
    relay_ips: tuple[str, ...] = ()  # empty: the address the client reached
    listening_port: int = 3478
    tls_listening_port: int = 443
    min_port: int = 49152
    max_port: int = 65535
    user_quota: int = 24  # concurrent allocations per credential (a few peer connections' worth)
    total_quota: int = 2000
    max_bps: int = 1_250_000  # bytes/s per session each way: 10 Mbit/s, several video streams
    bps_capacity: int = 0  # the whole server; 0 is unlimited
    cert: Path | None = None
    pkey: Path | None = None
    allow_loopback_peers: bool = False
    allowed_peer_ips: tuple[str, ...] = ()
    log_file: Path | None = None  # None: syslog
    # A line per allocation, refresh, refusal and closing, with its byte counters: what an
    # operator verifies the relay with. Without it coturn logs refused credentials and nothing else.
    verbose: bool = True
    # coturn opens this SQLite database even with use-auth-secret (it holds nothing of ours), and
    # without the setting falls back to a system-wide default that another coturn may share.
    userdb: Path = Path("/var/lib/turn/turndb")
    pidfile: Path | None = None
    extra_denied_peer_ranges: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _REALM.match(self.realm):
            raise ConfigError("turn_config_invalid", f"realm must be a domain name, got {self.realm!r}")
        if not self.secrets:
            raise ConfigError("turn_secret_missing", "a TURN secret is required")
        try:
            for secret in self.secrets:
                check_secret(secret)
        except CredentialError as exc:
            raise ConfigError(exc.code, exc.message) from None
        if not self.external_ips:
            raise ConfigError("turn_config_invalid", "an external IP is required: clients must reach the relay")
        for mapping in self.external_ips:
            for part in mapping.split("/"):
                _ip(part, "external IP")
            if mapping.count("/") > 1:
                raise ConfigError("turn_config_invalid", f"external IP is 'public' or 'public/private', got {mapping!r}")
        for ip in self.listening_ips:
            _ip(ip, "listening IP")
        for ip in self.relay_ips:
            _ip(ip, "relay IP")
        for ip in self.allowed_peer_ips:
            _ip(ip, "allowed peer IP")
        for cidr in self.extra_denied_peer_ranges:
            try:
                network = ipaddress.ip_network(cidr)
            except ValueError:
                raise ConfigError("turn_config_invalid", f"denied peer range must be a CIDR, got {cidr!r}") from None
            if network.version == 6 and int(network.network_address) == 0:
                raise ConfigError(
                    "turn_config_invalid", f"{cidr}: coturn would match every IPv4 peer against a range starting at ::"
                )
        for port, what in ((self.listening_port, "listening port"), (self.tls_listening_port, "TLS listening port")):
            if not (0 < port < 65536):
                raise ConfigError("turn_config_invalid", f"{what} must be 1-65535, got {port}")
        if not (1024 <= self.min_port <= self.max_port <= 65535):
            raise ConfigError("turn_config_invalid", "relay port range must satisfy 1024 <= min <= max <= 65535")
        for value, what in (
            (self.user_quota, "user quota"),
            (self.total_quota, "total quota"),
            (self.max_bps, "max bps"),
            (self.bps_capacity, "bps capacity"),
        ):
            if value < 0:
                raise ConfigError("turn_config_invalid", f"{what} must not be negative")
        if (self.cert is None) != (self.pkey is None):
            raise ConfigError("turn_config_invalid", "TLS needs both a certificate and its private key")
        for path, name in ((self.cert, "cert"), (self.pkey, "pkey"), (self.log_file, "log file"), (self.pidfile, "pidfile"),
                           (self.userdb, "userdb")):
            _path(path, name)

    @property
    def tls(self) -> bool:
        return self.cert is not None

    def render(self) -> str:
        """The text of turnserver.conf. It holds the shared secret: write it readable by coturn only."""
        lines = [
            "# turnserver.conf generated by `expertcall turn-config`. It contains the TURN secret:",
            "# keep it readable by coturn only (chmod 600).",
            "",
            "# Credentials: the TURN REST API scheme expertcall hands out (time-limited HMAC).",
            "use-auth-secret",
            *(f"static-auth-secret={secret}" for secret in self.secrets),
            f"realm={self.realm}",
            "fingerprint",
            "stale-nonce=600",
            "",
            "# Where coturn listens and relays from.",
            f"listening-port={self.listening_port}",
            *(f"listening-ip={ip}" for ip in self.listening_ips),
            *(f"relay-ip={ip}" for ip in self.relay_ips),
            *(f"external-ip={ip}" for ip in self.external_ips),
            f"min-port={self.min_port}",
            f"max-port={self.max_port}",
            "",
            "# Quotas, so that one user or one credential cannot exhaust the server.",
            f"user-quota={self.user_quota}",
            f"total-quota={self.total_quota}",
            f"max-bps={self.max_bps}",
            *([f"bps-capacity={self.bps_capacity}"] if self.bps_capacity else []),
            "",
        ]
        if self.tls:
            lines += [
                "# TLS (turns:): modern protocol versions only. DTLS is not used by WebRTC clients.",
                f"tls-listening-port={self.tls_listening_port}",
                f"cert={self.cert}",
                f"pkey={self.pkey}",
                "no-tlsv1",
                "no-tlsv1_1",
                "no-dtls",
            ]
        else:
            lines += ["# No certificate given: no TLS or DTLS listeners (turns: is unavailable).", "no-tls", "no-dtls"]
        lines += [
            "",
            "# Hardening: no admin CLI, no TCP relays (WebRTC relays UDP), no version banner, no",
            "# NAT-discovery or legacy STUN answers that could serve reflection attacks.",
            "no-cli",
            "no-tcp-relay",
            "no-software-attribute",
            "no-rfc5780",
            "no-stun-backward-compatibility",
            "response-origin-only-with-rfc5780",
            "no-multicast-peers",
            "",
            "# Peers the relay refuses to reach: the operator's own networks and reserved ranges.",
        ]
        for cidr, why in DENIED_PEER_RANGES:
            lines.append(f"# {cidr}: {why}")
            lines.append(f"denied-peer-ip={_range(cidr)}")
        for cidr in self.extra_denied_peer_ranges:
            lines.append(f"# {cidr}: given by the operator")
            lines.append(f"denied-peer-ip={_range(cidr)}")
        allowed = list(self.allowed_peer_ips)
        if self.allow_loopback_peers:
            lines += ["", "# Loopback peers allowed, for local testing only."]
            lines.append("allow-loopback-peers")
            allowed += [ip for ip in LOOPBACK_PEERS if ip not in allowed]
        if allowed:
            lines += ["", "# Explicitly allowed peers (these override the denied ranges)."]
            lines += [f"allowed-peer-ip={ip}" for ip in allowed]
        lines += ["", "# coturn's own SQLite database (unused by use-auth-secret, but always opened)."]
        lines.append(f"userdb={self.userdb}")
        lines += ["", "# Logging."]
        if self.log_file is None:
            lines.append("syslog")
        else:
            lines += [f"log-file={self.log_file}", "simple-log"]
        if self.verbose:
            lines.append("verbose")
        if self.pidfile is not None:
            lines.append(f"pidfile={self.pidfile}")
        return "\n".join(lines) + "\n"
