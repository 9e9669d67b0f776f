"""ICE server lists: the ``iceServers`` JSON of ``RTCConfiguration``, RFC 9725 ``Link`` headers, aiortc.

An ``IceServerProvider`` is built once from configuration (checked then) and hands each user a
fresh ``IceServerList``: STUN entries without credentials, then one entry per TURN server, all
sharing one credential that coturn can verify on its own (see ``credentials``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterable

from .credentials import CredentialError, TurnCredential, check_secret, clamp_ttl, make_credential

DEFAULT_TURN_PORT = 3478
DEFAULT_TURNS_PORT = 443

# RFC 7064 (stun:, stuns:) and RFC 7065 (turn:, turns:): scheme, host (IPv6 in brackets), port,
# and for TURN an optional transport.
_URL = re.compile(
    r"(?P<scheme>stuns?|turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?"
)


@dataclass(frozen=True)
class IceUrl:
    scheme: str
    host: str
    port: int | None
    transport: str | None

    @classmethod
    def parse(cls, url: str) -> "IceUrl":
        match = _URL.fullmatch(url)
        if match is None:
            raise CredentialError(
                "ice_url_invalid", f"{url!r} is not a stun:, stuns:, turn: or turns: URL (RFC 7064, RFC 7065)"
            )
        scheme, transport = match["scheme"], match["transport"]
        port = int(match["port"]) if match["port"] else None
        if port is not None and not (0 < port < 65536):
            raise CredentialError("ice_url_invalid", f"{url!r} has a port outside 1-65535")
        if transport and scheme.startswith("stun"):
            raise CredentialError("ice_url_invalid", f"{url!r}: a STUN URL takes no transport")
        if scheme == "turns" and transport == "udp":
            raise CredentialError("ice_url_invalid", f"{url!r}: turns: runs over TLS, so over TCP")
        return cls(scheme=scheme, host=match["host"], port=port, transport=transport)

    @property
    def is_turn(self) -> bool:
        return self.scheme.startswith("turn")


def standard_turn_urls(host: str, port: int = DEFAULT_TURN_PORT, tls_port: int = DEFAULT_TURNS_PORT) -> tuple[str, ...]:
    """The three URLs of one coturn: UDP first (what aiortc and most clients use), then TCP, then
    TLS on 443, which passes firewalls that allow nothing but HTTPS."""
    urls = (
        f"turn:{host}:{port}?transport=udp",
        f"turn:{host}:{port}?transport=tcp",
        f"turns:{host}:{tls_port}?transport=tcp",
    )
    for url in urls:
        IceUrl.parse(url)
    return urls


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class IceServer:
    """One entry of ``iceServers``: a server's URLs and, for TURN, its credential."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            data["username"] = self.username
            data["credential"] = self.credential
        return data

    def link_header_values(self) -> list[str]:
        """One RFC 9725 ``Link`` header value per URL."""
        values = []
        for url in self.urls:
            value = f'<{url}>; rel="ice-server"'
            if self.username is not None and self.credential is not None:
                value += (
                    f"; username={_quoted(self.username)}; credential={_quoted(self.credential)}"
                    '; credential-type="password"'
                )
            values.append(value)
        return values


@dataclass(frozen=True)
class IceServerList:
    servers: tuple[IceServer, ...]
    ttl: int
    # None when no TURN server is configured: STUN entries never expire.
    expires_at: int | None

    def to_json(self) -> dict[str, Any]:
        """``{"iceServers": [...], "ttl": ..., "expiresAt": ...}``: what clients put in RTCConfiguration."""
        return {
            "iceServers": [server.to_dict() for server in self.servers],
            "ttl": self.ttl,
            "expiresAt": self.expires_at,
        }

    def link_header_values(self) -> list[str]:
        """``Link`` header values for a WHIP or WHEP response (RFC 9725): add each as its own header."""
        return [value for server in self.servers for value in server.link_header_values()]

    def refresh_at(self) -> int | None:
        """When to hand out a new list: four fifths into the lifetime, well before coturn refuses it."""
        if self.expires_at is None:
            return None
        return self.expires_at - self.ttl // 5

    def to_aiortc(self) -> list[Any]:
        """``aiortc.RTCIceServer`` objects for an ``RTCConfiguration`` (the SFU's own peer
        connections). aiortc uses the first STUN and the first TURN URL it is given."""
        from aiortc import RTCIceServer

        return [
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in self.servers
        ]


class IceServerProvider:
    """Checks the configuration once and hands out ``IceServerList``s per user.

    ``turn_urls`` is a flat list; URLs are grouped into one ``iceServers`` entry per host, so several
    TURN servers are simply several hosts. All of them must share ``secret``.
    """

    def __init__(
        self,
        secret: str,
        turn_urls: Iterable[str],
        stun_urls: Iterable[str] = (),
        ttl: int = 6 * 3600,
        max_ttl: int = 24 * 3600,
    ) -> None:
        turn_urls, stun_urls = tuple(turn_urls), tuple(stun_urls)
        grouped: dict[str, list[str]] = {}
        for url in turn_urls:
            parsed = IceUrl.parse(url)
            if not parsed.is_turn:
                raise CredentialError("ice_url_invalid", f"{url!r} is listed as a TURN URL but is not turn: or turns:")
            grouped.setdefault(parsed.host, []).append(url)
        for url in stun_urls:
            if IceUrl.parse(url).is_turn:
                raise CredentialError("ice_url_invalid", f"{url!r} is listed as a STUN URL but is a TURN URL")
        if turn_urls:
            check_secret(secret)
        self._secret = secret
        self._turn = tuple(tuple(urls) for urls in grouped.values())
        self._stun = stun_urls
        self.max_ttl = max_ttl
        self.ttl = clamp_ttl(ttl, max_ttl)

    @property
    def has_turn(self) -> bool:
        return bool(self._turn)

    def for_user(self, user_id: str, ttl: int | None = None, now: float | None = None) -> IceServerList:
        """Servers for ``user_id``; ``ttl`` (the default when None) is clamped to the maximum."""
        ttl = self.ttl if ttl is None else clamp_ttl(ttl, self.max_ttl)
        servers: list[IceServer] = []
        if self._stun:
            servers.append(IceServer(urls=self._stun))
        expires_at: int | None = None
        if self._turn:
            cred: TurnCredential = make_credential(
                self._secret, user_id, ttl, self.max_ttl, now=time.time() if now is None else now
            )
            expires_at = cred.expires_at
            servers.extend(IceServer(urls=urls, username=cred.username, credential=cred.password) for urls in self._turn)
        return IceServerList(servers=tuple(servers), ttl=ttl, expires_at=expires_at)
