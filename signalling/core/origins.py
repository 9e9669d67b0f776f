"""Which web pages may call this server: the ``Origin`` check on ``/ws`` and every HTTP route.

A browser names the page that makes a request in ``Origin`` (on every WebSocket upgrade and
every POST, PUT, DELETE or cross-origin fetch), so a page elsewhere cannot open a socket or post
on a signed-in user's behalf. Allowed are the server's own origin (the ``Origin`` naming the host
and port of the request's ``Host``) and those listed in ``Settings.allowed_origins``. A request
without ``Origin`` comes from a native app, a WHIP encoder or curl, not from a web page, and
passes; ``Origin: null`` (a sandboxed frame, a file) does not.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from .errors import http_error

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case with the scheme's default port dropped; None when
    ``origin`` is not an http(s) origin (no path, query, user or fragment)."""
    try:
        url = URL(origin)
    except ValueError:
        return None
    scheme = (url.scheme or "").lower()
    if scheme not in DEFAULT_PORTS or not url.host or url.user or url.raw_path not in ("", "/"):
        return None
    if url.raw_query_string or url.raw_fragment or origin.endswith("/"):
        return None
    port = url.explicit_port
    host = f"[{url.host}]" if ":" in url.host else url.host.lower()
    return f"{scheme}://{host}" if port in (None, DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def same_origin(request: web.BaseRequest, origin: str) -> bool:
    """Whether ``origin`` names the host and port this request was sent to (its ``Host``)."""
    normalised = normalise(origin)
    if normalised is None:
        return False
    url = URL(normalised)
    try:
        target = URL(f"{url.scheme}://{request.host}")
    except ValueError:
        return False
    return (url.host or "").lower() == (target.host or "").lower() and url.port == target.port


def allowed(request: web.BaseRequest, configured: frozenset[str]) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return same_origin(request, origin) or normalise(origin) in configured


def setup(app: web.Application, allowed_origins: tuple[str, ...]) -> None:
    """Check every request's Origin before anything else (first middleware)."""
    configured = frozenset(allowed_origins)

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not allowed(request, configured):
            raise http_error(
                403, "origin_forbidden",
                "requests from this web origin are not allowed (EXPERTCALL_ALLOWED_ORIGINS lists the others)",
            )
        return await handler(request)

    app.middlewares.insert(0, check_origin)
