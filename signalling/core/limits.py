"""Resource limits that one caller cannot push past: each a setting, each refused with a coded error.

| setting                                 | default | refused with                                  |
| --------------------------------------- | ------- | --------------------------------------------- |
| ws_max_connections                      | 10000   | upgrade: 503 ``server_full`` (Retry-After)     |
| ws_max_connections_per_address          | 50      | upgrade: 429 ``too_many_connections``         |
| ws_max_unauthenticated_per_address      | 10      | upgrade: 429 ``too_many_unauthenticated``     |
| ws_outbox_limit                         | 256     | socket: close 4013 (too slow), nothing lost   |
| whip_max_resources_per_participant      | 4       | WHIP/WHEP POST: 429 ``too_many_resources``    |
| whip_max_resources_per_session          | 16      | WHIP/WHEP POST: 429 ``too_many_resources``    |
| booking_max_open_per_client             | 10      | POST /api/bookings: 429 ``too_many_bookings`` |
| booking_max_open_per_expert             | 500     | POST /api/bookings: 429 ``too_many_bookings`` |
| max_body_bytes                          | 65536   | any body: 413 ``body_too_large``              |
| max_sdp_bytes                           | 65536   | WHIP/WHEP offer: 413 ``body_too_large``       |
| experts.photos.MAX_PHOTO_BYTES (fixed)   | 5 MiB   | photo upload: 413 ``body_too_large``          |
| experts.photos.MAX_PHOTO_PIXELS (fixed)  | 40 M    | photo upload: 400 ``photo_too_large``         |

The socket counts are per node; an address is the peer's IP (an IPv6 client's /64, which one
machine usually owns whole), or, from a proxy in ``trusted_proxies``, the nearest address in
``X-Forwarded-For`` that is not a trusted proxy. Bodies are refused by their ``Content-Length``
before a byte is read, and a body without one (chunked) is read only up to the limit.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .errors import CodedError, http_error

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    """``trusted_proxies`` as networks; ValueError names the first that is not an IP or a CIDR."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or a CIDR range") from None
    return tuple(out)


def client_address(request: web.BaseRequest, trusted: tuple[Network, ...] = ()) -> str:
    """The address limits count against (see the module docstring)."""
    peer = _ip(request.remote)
    if peer is not None and trusted and any(peer in net for net in trusted):
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed(forwarded):
            ip = _ip(hop)
            if ip is None:
                break
            peer = ip
            if not any(ip in net for net in trusted):
                break
    if peer is None:
        return request.remote or "unknown"
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((int(peer) >> 64 << 64, 64)))
    return str(peer.ipv4_mapped if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped else peer)


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None


class LimitReached(CodedError):
    """A limit refused a request: HTTP ``status`` with a stable ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status

    def as_http(self) -> web.HTTPException:
        error = http_error(self.status, self.code, self.message)
        if self.status == 503:
            error.headers["Retry-After"] = "5"
        return error


@dataclass
class SocketCounts:
    """Open sockets of this node by address, and those that have not said hello yet."""

    max_total: int
    max_per_address: int
    max_unauthenticated_per_address: int
    total: int = 0
    by_address: dict[str, int] = field(default_factory=dict)
    unauthenticated: dict[str, int] = field(default_factory=dict)

    def admit(self, address: str) -> None:
        """Count a new socket from ``address``, or raise ``LimitReached``."""
        if self.total >= self.max_total:
            raise LimitReached(503, "server_full", f"this server holds its limit of {self.max_total} sockets: try again soon")
        if self.by_address.get(address, 0) >= self.max_per_address:
            raise LimitReached(429, "too_many_connections", f"at most {self.max_per_address} sockets per address")
        if self.unauthenticated.get(address, 0) >= self.max_unauthenticated_per_address:
            raise LimitReached(
                429, "too_many_unauthenticated",
                f"at most {self.max_unauthenticated_per_address} sockets per address may wait for their hello",
            )
        self.total += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        self.unauthenticated[address] = self.unauthenticated.get(address, 0) + 1

    def authenticated(self, address: str) -> None:
        """A socket from ``address`` said hello: it no longer counts as waiting."""
        _decrement(self.unauthenticated, address)

    def release(self, address: str, authenticated: bool) -> None:
        self.total -= 1
        _decrement(self.by_address, address)
        if not authenticated:
            _decrement(self.unauthenticated, address)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 once it is known or seen to pass ``limit`` bytes: by its
    Content-Length before reading, otherwise as soon as the chunks read so far pass it."""
    if (request.content_length or 0) > limit:
        raise too_large(limit)
    data = bytearray()
    while True:
        chunk = await request.content.read(min(65536, limit + 1 - len(data)))
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            raise too_large(limit)


def too_large(limit: int) -> web.HTTPException:
    return http_error(413, "body_too_large", f"the request body is limited to {limit} bytes")


def body_limit_middleware(limit: int) -> Middleware:
    """Refuse a body over ``limit`` by its Content-Length before any handler reads it, and turn
    aiohttp's own refusal of a longer chunked body (``client_max_size``) into our coded JSON."""

    @web.middleware
    async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.content_length or 0) > limit and not _reads_own_body(request):
            raise too_large(limit)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            raise too_large(limit) from None

    return body_limit


def _reads_own_body(request: web.Request) -> bool:
    """WHIP/WHEP offers (``max_sdp_bytes``) and experts' photos (``experts.photos.MAX_PHOTO_BYTES``)
    have limits of their own, read with ``read_limited``."""
    if request.method == "PUT":
        return request.path.startswith("/api/experts/") and request.path.endswith("/photo")
    return request.method == "POST" and request.path.startswith(("/whip/", "/whep/"))
