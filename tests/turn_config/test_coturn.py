"""turnserver.conf rendering: safe defaults, the loopback opt-in, and refusal of unsafe values."""

from __future__ import annotations

from pathlib import Path

import pytest

from turn_config.coturn import DENIED_PEER_RANGES, ConfigError, CoturnConfig

pytestmark = pytest.mark.integration

SECRET = "north-sea-shared-secret"


def config(**overrides: object) -> CoturnConfig:
    values: dict[str, object] = {"realm": "example.com", "external_ips": ("203.0.113.5",), "secrets": (SECRET,)}
    values.update(overrides)
    return CoturnConfig(**values)  # type: ignore[arg-type]


def settings_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_defaults_are_the_secure_ones() -> None:
    lines = settings_of(config().render())
    for expected in (
        "use-auth-secret",
        f"static-auth-secret={SECRET}",
        "realm=example.com",
        "fingerprint",
        "external-ip=203.0.113.5",
        "listening-port=3478",
        "min-port=49152",
        "max-port=65535",
        "user-quota=24",
        "total-quota=2000",
        "max-bps=1250000",
        "no-cli",
        "no-multicast-peers",
        "no-tcp-relay",
        "no-tls",
        "no-dtls",
        "syslog",
    ):
        assert expected in lines, expected
    assert not any(line.startswith(("allowed-peer-ip", "allow-loopback-peers", "cert=")) for line in lines)


@pytest.mark.parametrize(
    "denied",
    [
        "denied-peer-ip=127.0.0.0-127.255.255.255",
        "denied-peer-ip=10.0.0.0-10.255.255.255",
        "denied-peer-ip=172.16.0.0-172.31.255.255",
        "denied-peer-ip=192.168.0.0-192.168.255.255",
        "denied-peer-ip=100.64.0.0-100.127.255.255",
        "denied-peer-ip=169.254.0.0-169.254.255.255",
        "denied-peer-ip=0.0.0.0-0.255.255.255",
        "denied-peer-ip=224.0.0.0-239.255.255.255",
        "denied-peer-ip=::1",
        "denied-peer-ip=fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "denied-peer-ip=fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "denied-peer-ip=::ffff:0:0-::ffff:ffff:ffff",
        "denied-peer-ip=ff00::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ],
)
def test_internal_ranges_are_denied(denied: str) -> None:
    assert denied in settings_of(config().render())


def test_every_listed_range_is_rendered() -> None:
    lines = settings_of(config(extra_denied_peer_ranges=("198.51.100.7/32",)).render())
    assert sum(line.startswith("denied-peer-ip=") for line in lines) == len(DENIED_PEER_RANGES) + 1
    assert "denied-peer-ip=198.51.100.7" in lines


def test_no_ipv6_range_starts_at_the_unspecified_address() -> None:
    # coturn 4.6 would match every IPv4 peer against it and relay to nobody.
    lines = settings_of(config(extra_denied_peer_ranges=("2001:db8:1::/48",)).render())
    assert not [line for line in lines if line == "denied-peer-ip=::" or line.startswith("denied-peer-ip=::-")]
    with pytest.raises(ConfigError):
        config(extra_denied_peer_ranges=("::/1",))


def test_loopback_opt_in_allows_loopback_only() -> None:
    lines = settings_of(config(allow_loopback_peers=True).render())
    assert "allow-loopback-peers" in lines
    assert "allowed-peer-ip=127.0.0.1" in lines and "allowed-peer-ip=::1" in lines
    # Everything else stays denied, the rest of loopback included.
    assert "denied-peer-ip=127.0.0.0-127.255.255.255" in lines
    assert "denied-peer-ip=10.0.0.0-10.255.255.255" in lines


def test_tls_settings_refuse_old_versions() -> None:
    lines = settings_of(config(cert=Path("/etc/ssl/turn.pem"), pkey=Path("/etc/ssl/turn.key")).render())
    for expected in ("tls-listening-port=443", "cert=/etc/ssl/turn.pem", "pkey=/etc/ssl/turn.key", "no-tlsv1", "no-tlsv1_1", "no-dtls"):
        assert expected in lines
    assert "no-tls" not in lines


def test_addresses_rotation_logging_and_nat_mapping() -> None:
    lines = settings_of(
        config(
            external_ips=("203.0.113.5/10.0.0.5",),
            listening_ips=("10.0.0.5",),
            relay_ips=("10.0.0.5",),
            secrets=(SECRET, "the-previous-secret-xyz"),
            log_file=Path("/var/log/turn.log"),
            pidfile=Path("/run/turn.pid"),
            bps_capacity=10**8,
        ).render()
    )
    for expected in (
        "external-ip=203.0.113.5/10.0.0.5",
        "listening-ip=10.0.0.5",
        "relay-ip=10.0.0.5",
        "static-auth-secret=the-previous-secret-xyz",
        "log-file=/var/log/turn.log",
        "pidfile=/run/turn.pid",
        "bps-capacity=100000000",
    ):
        assert expected in lines
    assert lines.index(f"static-auth-secret={SECRET}") < lines.index("static-auth-secret=the-previous-secret-xyz")


@pytest.mark.parametrize(
    "overrides, code",
    [
        ({"realm": "bad realm\nno-auth"}, "turn_config_invalid"),
        ({"secrets": ()}, "turn_secret_missing"),
        ({"secrets": ("short",)}, "turn_secret_too_short"),
        ({"secrets": (SECRET + "\nno-auth",)}, "turn_secret_invalid"),
        ({"external_ips": ()}, "turn_config_invalid"),
        ({"external_ips": ("turn.example.com",)}, "turn_config_invalid"),
        ({"listening_ips": ("0.0.0.0\nallow-loopback-peers",)}, "turn_config_invalid"),
        ({"min_port": 60000, "max_port": 50000}, "turn_config_invalid"),
        ({"min_port": 80}, "turn_config_invalid"),
        ({"user_quota": -1}, "turn_config_invalid"),
        ({"cert": Path("/etc/c.pem")}, "turn_config_invalid"),
        ({"log_file": Path("/tmp/x\nno-auth")}, "turn_config_invalid"),
        ({"extra_denied_peer_ranges": ("10.0.0/8",)}, "turn_config_invalid"),
        ({"allowed_peer_ips": ("10.0.0.0/8",)}, "turn_config_invalid"),
    ],
)
def test_unsafe_or_malformed_values_are_refused(overrides: dict[str, object], code: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(**overrides)
    assert info.value.code == code
