"""The application factory: ``create_app(settings)`` builds everything; ``expertcall serve`` runs it."""

from __future__ import annotations

import logging
from typing import AsyncIterator

from aiohttp import web

from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane

from . import keys
from .auth import TokenIssuer
from .metrics import CONTENT_TYPE, Metrics
from .settings import Settings
from .whip import setup_whip

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_message_bytes * 16)
    app[keys.SETTINGS] = settings
    app[keys.TOKENS] = TokenIssuer(settings.resolve_secret())
    app[keys.METRICS] = Metrics()

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app[keys.MEDIA] = LocalMediaPlane(media_options(settings))
    setup_whip(app)
    app.cleanup_ctx.append(media_plane)
    return app


def media_options(settings: Settings) -> MediaOptions:
    return MediaOptions(
        loopback=settings.media_loopback,
        interfaces=settings.media_interfaces,
        announced_ip=settings.media_announced_ip or None,
        port_min=settings.media_port_min,
        port_max=settings.media_port_max,
        ice_servers=tuple({"urls": url} for url in settings.stun_urls),
        max_publish_bitrate=settings.max_publish_bitrate,
        media_state_debounce=settings.media_debounce_seconds,
        keyframe_interval=settings.media_keyframe_interval,
    )


async def media_plane(app: web.Application) -> AsyncIterator[None]:
    """Close the media plane (set in ``app[keys.MEDIA]`` before start-up) on shutdown."""
    yield
    media = app.get(keys.MEDIA)
    if media is not None:
        await media.close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[keys.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
