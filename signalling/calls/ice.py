"""ICE servers for clients: ``GET /api/ice-servers`` and the lists the WebSocket layer sends.

``setup(app)`` checks the TURN settings at start-up (a misconfigured server refuses to start rather
than hand out credentials coturn will reject) and keeps one ``IceServerProvider`` under
``ICE_SERVERS``. The WebSocket layer calls ``ice_servers_for(app, user_id)`` for its welcome
and join messages and again on every resume (a fresh credential each time); ``refresh_at()`` says
when a long-lived connection should be sent a new list. WHIP and WHEP handlers pass a list to
``add_link_headers``.
"""

from __future__ import annotations

from aiohttp import web

from turn_config.credentials import MIN_TTL, CredentialError
from turn_config.ice_servers import IceServerList, IceServerProvider

from ..auth.tokens import TOKENS, authenticate
from ..core import keys
from ..core.errors import http_error
from ..core.settings import Settings, SettingsError


def provider_from_settings(settings: Settings) -> IceServerProvider:
    if settings.turn_ttl > settings.turn_max_ttl:
        raise SettingsError(f"turn_ttl ({settings.turn_ttl}) must not exceed turn_max_ttl ({settings.turn_max_ttl})")
    if settings.turn_urls and not settings.turn_secret:
        raise SettingsError("turn_urls are set but turn_secret is not: set EXPERTCALL_TURN_SECRET to coturn's static-auth-secret")
    try:
        return IceServerProvider(
            secret=settings.turn_secret,
            turn_urls=settings.turn_urls,
            stun_urls=settings.stun_urls,
            ttl=settings.turn_ttl,
            max_ttl=settings.turn_max_ttl,
        )
    except CredentialError as exc:
        raise SettingsError(f"TURN settings: {exc.message}") from None


def setup(app: web.Application) -> None:
    app[ICE_SERVERS] = provider_from_settings(app[keys.SETTINGS])
    app.router.add_get("/api/ice-servers", get_ice_servers)


def ice_servers_for(app: web.Application, user_id: str, ttl: int | None = None) -> IceServerList:
    """The ICE servers (with a fresh TURN credential) for ``user_id``; ``.to_json()`` is the wire shape."""
    return app[ICE_SERVERS].for_user(user_id, ttl=ttl)


def add_link_headers(response: web.StreamResponse, ice: IceServerList) -> None:
    """RFC 9725: a WHIP or WHEP response names its ICE servers in ``Link`` headers, one per URL."""
    for value in ice.link_header_values():
        response.headers.add("Link", value)


async def get_ice_servers(request: web.Request) -> web.Response:
    """``{"iceServers": [...], "ttl": s, "expiresAt": unix time}``; ``?ttl=`` asks for a shorter life."""
    identity = authenticate(request, request.app[TOKENS])
    ttl: int | None = None
    if "ttl" in request.query:
        try:
            ttl = int(request.query["ttl"])
        except ValueError:
            ttl = 0
        if ttl < MIN_TTL:
            raise http_error(400, "bad_ttl", f"ttl must be a whole number of seconds, at least {MIN_TTL}")
    ice = ice_servers_for(request.app, identity.user_id, ttl=ttl)
    # Credentials: never cached by the browser or a proxy.
    return web.json_response(ice.to_json(), headers={"Cache-Control": "no-store"})


# Who hands out TURN credentials and ICE server lists (set by ``setup``).
ICE_SERVERS = web.AppKey("ice_servers", IceServerProvider)
