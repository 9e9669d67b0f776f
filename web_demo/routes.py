"""Serve the browser demo at ``/`` and, on a loopback bind only, hand it development tokens.

The pages are plain HTML + ES modules under ``static/``: no build step, nothing fetched from
another origin (the Content-Security-Policy below enforces that in the browser too).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from signalling.auth.tokens import TOKENS, Role
from signalling.core import keys, origins
from signalling.core.errors import error_body, read_json_value
from signalling.core.settings import is_loopback_host

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/client": "client.html", "/expert": "expert.html", "/receipt": "receipt.html"}
DEMO_ROLES = (Role.CLIENT, Role.EXPERT)
DEV_TOKEN_TTL = 12 * 3600
MAX_NAME = 80

# Same-origin only: scripts, styles, the WebSocket and REST calls all go to this server.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def setup(app: web.Application) -> None:
    """Register the demo's routes: pages and assets when ``Settings.demo``, the dev-token
    endpoint only when ``Settings.dev_tokens`` (demo on a loopback bind)."""
    settings = app[keys.SETTINGS]
    if not settings.demo:
        return
    for path in PAGES:
        app.router.add_get(path, page)
    app.router.add_static("/static/", STATIC, append_version=False)
    if settings.dev_tokens:
        app.router.add_post("/api/dev/token", dev_token)
    app.on_response_prepare.append(_security_headers)


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / PAGES[request.path], headers={"Cache-Control": "no-cache"})


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path in PAGES or request.path.startswith("/static/"):
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-cache")


async def dev_token(request: web.Request) -> web.Response:
    """``{"user", "role", "name"}`` → ``{"token", "user", "role", "name", "expires_in"}``.

    Only registered on a loopback bind with the demo on, so that anyone able to reach it is
    already on this machine - or is a web page that machine's browser is showing. So it also
    wants a loopback ``Host`` (a page on another site that re-points its own name at 127.0.0.1,
    DNS rebinding, still sends that name), ``application/json`` (a plain form cannot send it)
    and, from a browser, an ``Origin`` that is this server's own. Admin tokens are never handed
    out this way.
    """
    try:
        host = request.url.host or ""
    except ValueError:  # a Host that is no name at all (non-UTF-8 bytes: IDNA refuses them)
        host = ""
    if not is_loopback_host(host):
        return _error(403, "forbidden_host", "dev tokens are handed out to http://127.0.0.1 or http://localhost only")
    origin = request.headers.get("Origin")
    if origin is not None and not origins.same_origin(request, origin):
        return _error(403, "origin_forbidden", "dev tokens are handed out to this server's own pages only")
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return _error(403, "origin_forbidden", "dev tokens are handed out to this server's own pages only")
    if request.content_type != "application/json":
        return _error(415, "unsupported_media_type", "send the body as application/json")
    body = await read_json_value(request)
    if not isinstance(body, dict):
        return _error(400, "invalid_json", "the body must be a JSON object")
    unknown = sorted(set(body) - {"user", "role", "name"})
    if unknown:
        return _error(400, "unknown_field", f"unknown field {unknown[0]!r}: the body is {{user, role, name}}")
    user, role, name = body.get("user"), body.get("role"), body.get("name", "")
    if not isinstance(user, str) or not (1 <= len(user) <= 128) or not user.isprintable():
        return _error(400, "invalid_user", "user must be a 1-128 character printable string")
    if role not in [r.value for r in DEMO_ROLES]:
        return _error(400, "invalid_role", "role must be 'client' or 'expert'")
    if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
        return _error(400, "invalid_name", f"name must be a printable string of at most {MAX_NAME} characters")
    name = name.strip() or user
    issuer = request.app[TOKENS]
    ttl = min(DEV_TOKEN_TTL, issuer.max_ttl)  # never past the server's own lifetime cap
    token = issuer.mint(user, role, ttl=ttl, name=name)
    return web.json_response(
        {"token": token, "user": user, "role": role, "name": name, "expires_in": ttl},
        headers={"Cache-Control": "no-store"},
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(text=error_body(code, message), status=status, content_type="application/json")
