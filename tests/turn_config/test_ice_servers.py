"""ICE server lists: URL checks, grouping into servers, the JSON shape, RFC 9725 Link values, aiortc."""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCIceServer

from turn_config.credentials import CredentialError, password_for
from turn_config.ice_servers import IceServer, IceServerProvider, IceUrl, standard_turn_urls

SECRET = "north-sea-shared-secret"


def test_standard_urls_are_udp_tcp_and_tls_on_443() -> None:
    assert standard_turn_urls("turn.example.com") == (
        "turn:turn.example.com:3478?transport=udp",
        "turn:turn.example.com:3478?transport=tcp",
        "turns:turn.example.com:443?transport=tcp",
    )


@pytest.mark.parametrize(
    "url",
    ["http://x", "turn:", "turns:x:443?transport=udp", "stun:x?transport=udp", "turn:x:70000", "turn:x\n:1", "turn:x:3478\n"],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(CredentialError) as info:
        IceUrl.parse(url)
    assert info.value.code == "ice_url_invalid"


def test_ipv6_hosts_parse() -> None:
    assert IceUrl.parse("turn:[2001:db8::1]:3478?transport=udp") == IceUrl("turn", "[2001:db8::1]", 3478, "udp")


def test_several_turn_servers_share_one_credential() -> None:
    provider = IceServerProvider(
        SECRET,
        turn_urls=standard_turn_urls("a.example.com") + standard_turn_urls("b.example.com"),
        stun_urls=("stun:a.example.com:3478",),
        ttl=600,
        max_ttl=3600,
    )
    body = provider.for_user("alice", now=1_000_000).to_json()
    assert body["ttl"] == 600 and body["expiresAt"] == 1_000_600
    stun, a, b = body["iceServers"]
    assert stun == {"urls": ["stun:a.example.com:3478"]}
    assert a["urls"] == list(standard_turn_urls("a.example.com"))
    assert b["urls"] == list(standard_turn_urls("b.example.com"))
    assert a["username"] == b["username"] == "1000600:alice"
    assert a["credential"] == b["credential"] == password_for(SECRET, "1000600:alice")


def test_requested_ttl_is_clamped() -> None:
    provider = IceServerProvider(SECRET, turn_urls=standard_turn_urls("t.example"), ttl=600, max_ttl=3600)
    assert provider.for_user("alice", ttl=10**6).ttl == 3600
    assert provider.for_user("alice").ttl == 600


def test_without_turn_the_list_does_not_expire() -> None:
    ice = IceServerProvider("", turn_urls=(), stun_urls=("stun:s.example:3478",)).for_user("alice")
    assert ice.expires_at is None and ice.refresh_at() is None
    assert ice.to_json()["iceServers"] == [{"urls": ["stun:s.example:3478"]}]


def test_refresh_comes_before_expiry() -> None:
    provider = IceServerProvider(SECRET, turn_urls=standard_turn_urls("t.example"), ttl=1000, max_ttl=3600)
    ice = provider.for_user("alice", now=0)
    assert ice.refresh_at() == 800


def test_misplaced_urls_and_missing_secret_are_refused() -> None:
    with pytest.raises(CredentialError):
        IceServerProvider(SECRET, turn_urls=("stun:x:3478",))
    with pytest.raises(CredentialError):
        IceServerProvider(SECRET, turn_urls=(), stun_urls=("turn:x:3478",))
    with pytest.raises(CredentialError) as info:
        IceServerProvider("", turn_urls=("turn:x:3478",))
    assert info.value.code == "turn_secret_too_short"


def test_link_header_values_follow_rfc_9725() -> None:
    server = IceServer(urls=("turn:t.example:3478?transport=udp",), username='1:a"b\\c', credential="p+/=")
    assert server.link_header_values() == [
        '<turn:t.example:3478?transport=udp>; rel="ice-server"; username="1:a\\"b\\\\c"; '
        'credential="p+/="; credential-type="password"'
    ]
    assert IceServer(urls=("stun:s.example",)).link_header_values() == ['<stun:s.example>; rel="ice-server"']


def test_list_link_values_cover_every_url() -> None:
    provider = IceServerProvider(
        SECRET, turn_urls=standard_turn_urls("t.example"), stun_urls=("stun:t.example:3478",), ttl=600
    )
    values = provider.for_user("alice").link_header_values()
    assert len(values) == 4
    assert values[0] == '<stun:t.example:3478>; rel="ice-server"'
    assert all('credential-type="password"' in v for v in values[1:])


def test_to_aiortc_builds_rtc_ice_servers() -> None:
    provider = IceServerProvider(SECRET, turn_urls=standard_turn_urls("t.example"), ttl=600)
    servers = provider.for_user("sfu").to_aiortc()
    assert all(isinstance(s, RTCIceServer) for s in servers)
    assert servers[0].urls[0] == "turn:t.example:3478?transport=udp"
    assert servers[0].username.endswith(":sfu")
    RTCConfiguration(iceServers=servers)
