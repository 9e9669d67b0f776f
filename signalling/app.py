"""The application factory: ``create_app(settings)`` builds everything; ``expertcall serve`` runs it.

Resources open in ``cleanup_ctx`` order and close in reverse: the database first (everything
keeps state in it), the media plane before the signalling node (so the node, closing first, can
still close its rooms), billing before the node (so the node's last transitions are still metered).
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from aiohttp import web

import web_demo.routes
from sfu.api import MediaPlane
from sfu.metrics import WorkerMetrics
from sfu.options import MediaOptions
from sfu.pool import WorkerPool
from sfu.worker import LocalMediaPlane

from . import ice, keys, metrics_http, openapi, origins, rest_bookings, rest_experts, rest_tokens, wiring
from .auth import TokenIssuer
from .billing import service as billing_service
from .billing import session_billing
from .database import Database
from .limits import body_limit_middleware
from .metrics import Metrics
from .node import setup as setup_signalling
from .settings import Settings
from .whip import setup_whip

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[keys.SETTINGS] = settings
    app[keys.TOKENS] = TokenIssuer(settings.resolve_secret(), settings.token_max_ttl)
    app[keys.METRICS] = Metrics()
    origins.setup(app, settings.allowed_origins)
    app.middlewares.append(body_limit_middleware(settings.max_body_bytes))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    metrics_http.setup(app)
    ice.setup(app)
    openapi.setup(app)
    app.cleanup_ctx.append(database_ctx)
    rest_experts.setup(app)
    rest_bookings.setup(app)
    rest_tokens.setup(app)
    billing_service.setup(app)
    app[keys.MEDIA_PLANE] = media_plane(settings)
    app.cleanup_ctx.append(media_plane_ctx)
    setup_whip(app)
    setup_signalling(app)
    wiring.setup(app)
    session_billing.setup(app)
    web_demo.routes.setup(app)
    return app


def media_plane(settings: Settings) -> MediaPlane:
    """The SFU in this process, or in ``sfu_workers`` worker processes (started in media_plane_ctx)."""
    if settings.sfu_workers == 1:
        return LocalMediaPlane(media_options(settings))
    return WorkerPool(media_options(settings), settings.sfu_workers)


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


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The node's SQLite file, and the PostgreSQL pool every shared store uses (database_url)."""
    settings = app[keys.SETTINGS]
    db = Database.in_dir(settings.data_dir)
    app[keys.DATABASE] = db
    pool = None
    if settings.database_url:
        from .postgres import connect

        pool = await connect(settings.database_url)
        app[keys.POSTGRES] = pool
    try:
        yield
    finally:
        if pool is not None:
            await pool.close()
        db.close()


async def media_plane_ctx(app: web.Application) -> AsyncIterator[None]:
    """The media plane is built with the app (handlers may subscribe to it early); a worker pool
    starts its processes here, before the node adopts rooms. Closed last: after the node and
    billing finished, so in-flight billing still sees its media.

    A signalling-only node (media hosted elsewhere) has none."""
    plane = app.get(keys.MEDIA_PLANE)
    if isinstance(plane, WorkerPool):
        await plane.start()
        WorkerMetrics(plane.health, app[keys.METRICS].registry)
    yield
    if plane is not None:
        await plane.close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while the node runs and its backend (Redis when scaled out) answers for it."""
    node = request.app.get(keys.SIGNALLING)
    if node is None or node.closing:
        return web.json_response({"status": "not_ready", "reason": "shutting down"}, status=503)
    try:
        alive = await asyncio.wait_for(node.backend.node_alive(node.node_id), timeout=2)
    except Exception as exc:  # any backend failure means "do not send traffic here"
        # The probe is unauthenticated: the exception's text (a Redis URL with its password, a
        # host name) goes to the log, the answer names only what kind of failure it was.
        log.warning("readyz: backend did not answer: %r", exc)
        return web.json_response(
            {"status": "not_ready", "reason": f"backend: {type(exc).__name__}"}, status=503)
    if not alive:
        return web.json_response({"status": "not_ready", "reason": "backend does not list this node"}, status=503)
    plane = request.app.get(keys.MEDIA_PLANE)
    if isinstance(plane, WorkerPool):
        # Each worker's state, no more (the probe is open): one down is restarting, its rooms moved.
        workers = [{"worker": w.index, "up": w.up} for w in plane.health()]
        down = [w["worker"] for w in workers if not w["up"]]
        if down:
            return web.json_response({"status": "not_ready", "reason": f"sfu workers down: {down}",
                                      "sfu_workers": workers}, status=503)
        return web.json_response({"status": "ready", "node": node.node_id, "sfu_workers": workers})
    return web.json_response({"status": "ready", "node": node.node_id})

