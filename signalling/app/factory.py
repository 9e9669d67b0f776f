"""The application factory: ``create_app(settings)`` builds everything; ``expertcall serve`` runs it.

Every part is set up here, in one place, and nothing is set up by an import. Resources open in
``cleanup_ctx`` order and close in reverse: the database first (everything keeps state in it),
the media plane before the signalling node (so the node, closing first, can still close its
rooms), billing before the node (so the node's last transitions are still metered). The media
plane is made at start-up by the ``media`` factory (by the settings' role: a ``LocalMediaPlane``
or a worker pool for ``all``, the SFU nodes in Redis for ``signalling``, unless a caller, such as
a test or the media bench's reference server, passes another), never when the app is built. An
SFU node (``--role sfu``) is another, smaller application: ``sfu_node.create_sfu_node_app``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable

from aiohttp import web

import web_demo.routes
from sfu.api import MediaPlane
from sfu.options import MediaOptions
from sfu.node_link import link_key
from sfu.node_registry import NodeRegistry
from sfu.pool import WorkerPool
from sfu.remote import RemoteNodes
from sfu.worker import LocalMediaPlane

from ..auth.tokens import TOKENS, TokenIssuer
from ..billing import service as billing_service
from ..billing import recording_archive, rest_recordings, session_billing
from ..bookings import rest as rest_bookings
from ..calls import ice, recording, rest_tokens, websocket
from ..calls.node import MEDIA_PLANE, SIGNALLING
from ..calls.node import setup as setup_signalling
from ..calls.whip import setup_whip
from ..core import keys, origins
from ..core.database import Database
from ..core.limits import body_limit_middleware
from ..core.metrics import Metrics
from ..core.settings import Settings
from ..experts import rest as rest_experts
from . import metrics_http, openapi, wiring
from .media_metrics import PlaneMetrics, WorkerMetrics

log = logging.getLogger(__name__)


# Makes the media plane at start-up; None for a node that hosts no media.
MediaPlaneFactory = Callable[[Settings], "MediaPlane | None"]


def local_media_plane(settings: Settings) -> MediaPlane:
    """The SFU in this process, or in ``sfu_workers`` worker processes (a WorkerPool, whose
    processes media_plane_ctx starts; each worker starts its own LocalMediaPlane)."""
    if settings.sfu_workers > 1:
        return WorkerPool(media_options(settings), settings.sfu_workers)
    plane = LocalMediaPlane(media_options(settings))
    plane.start()
    return plane


def no_media_plane(settings: Settings) -> None:
    return None


def remote_media_plane(settings: Settings) -> MediaPlane:
    """The SFU nodes registered in Redis (``--role signalling``), reached over authenticated links."""
    return RemoteNodes(NodeRegistry(settings.redis_url, settings.redis_prefix),
                       link_key(settings.sfu_link_secret()), settings.node_id)


def media_plane_for_role(settings: Settings) -> MediaPlane:
    """``--role all``: the SFU in this process or its workers; ``--role signalling``: SFU nodes."""
    if settings.role == "signalling":
        return remote_media_plane(settings)
    return local_media_plane(settings)


def create_app(settings: Settings, media: MediaPlaneFactory = media_plane_for_role) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    # What every part reads.
    app[keys.SETTINGS] = settings
    app[TOKENS] = TokenIssuer(settings.resolve_secret(), settings.token_max_ttl)
    app[keys.METRICS] = Metrics()
    origins.setup(app, settings.allowed_origins)
    app.middlewares.append(body_limit_middleware(settings.max_body_bytes))

    # Endpoints that keep no state of their own.
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    metrics_http.setup(app)
    ice.setup(app)
    openapi.setup(app)
    # The parts, in the order their resources open at start-up.
    app.cleanup_ctx.append(database_ctx)
    rest_experts.setup(app)  # profiles
    rest_bookings.setup(app)  # bookings and their scheduler
    rest_tokens.setup(app)
    billing_service.setup(app)  # meter, ledger, outbox, relay, webhooks
    recording_archive.setup(app)  # the recording index, its events, retention
    rest_recordings.setup(app)
    app.cleanup_ctx.append(media_plane_ctx(media))
    app.on_shutdown.append(media_plane_shutting_down)  # before the node closes its sockets
    setup_whip(app)
    setup_signalling(app)  # the node: sessions, queues, presence, the media bridge
    websocket.setup(app)
    wiring.setup(app)  # once the node runs: profiles, bookings and quotes joined to it
    session_billing.setup(app)  # once the node runs: billing follows its transitions
    recording.setup(app)  # once the node runs: recording with both consents
    web_demo.routes.setup(app)
    return app


def media_options(settings: Settings) -> MediaOptions:
    return MediaOptions(
        loopback=settings.media_loopback,
        interfaces=settings.media_interfaces,
        announced_ip=settings.media_announced_ip or None,
        media_port=settings.media_port,
        per_connection_sockets=settings.media_per_connection,
        port_min=settings.media_port_min,
        port_max=settings.media_port_max,
        ice_servers=tuple({"urls": url} for url in settings.stun_urls),
        max_publish_bitrate=settings.max_publish_bitrate,
        media_state_debounce=settings.media_debounce_seconds,
        keyframe_interval=settings.media_keyframe_interval,
        recordings_dir=str(settings.recordings_dir()) if settings.recording_enabled else "",
    )


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The node's SQLite file, and the PostgreSQL pool every shared store uses (database_url)."""
    settings = app[keys.SETTINGS]
    db = Database.in_dir(settings.data_dir)
    app[keys.DATABASE] = db
    pool = None
    if settings.database_url:
        from ..core.postgres import connect

        pool = await connect(settings.database_url)
        app[keys.POSTGRES] = pool
    try:
        yield
    finally:
        if pool is not None:
            await pool.close()
        db.close()


def media_plane_ctx(media: MediaPlaneFactory) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: make the media plane before the parts that use it start (a worker pool starts
    its processes here, before the node adopts rooms), close it after them: after the node and
    billing finished, so in-flight billing still sees its media.

    A signalling-only node (media hosted elsewhere) has none."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        plane = media(app[keys.SETTINGS])
        if isinstance(plane, WorkerPool):
            await plane.start()
            if isinstance(plane, RemoteNodes):
                WorkerMetrics(plane.nodes, app[keys.METRICS].registry, "node", lambda n: n.node_id)
            else:
                WorkerMetrics(plane.health, app[keys.METRICS].registry)
        elif isinstance(plane, LocalMediaPlane):
            PlaneMetrics(plane, app[keys.METRICS].registry)
        if plane is not None:
            app[MEDIA_PLANE] = plane
        try:
            yield
        finally:
            if plane is not None:
                await plane.close()

    return ctx


async def media_plane_shutting_down(app: web.Application) -> None:
    """on_shutdown: a pool (of workers or SFU nodes) waits for no member any more, so a member
    that froze or died holds none of the requests the shutdown waits for (WorkerPool.shutting_down)."""
    plane = app.get(MEDIA_PLANE)
    if isinstance(plane, WorkerPool):
        plane.shutting_down()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while the node runs and its backend (Redis when scaled out) answers for it."""
    node = request.app.get(SIGNALLING)
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
    plane = request.app.get(MEDIA_PLANE)
    if isinstance(plane, RemoteNodes):
        # Ready while some SFU node is linked (rooms are placed on those).
        nodes = [{"node": n.node_id, "up": n.up, "draining": n.draining} for n in plane.nodes()]
        if not any(n["up"] for n in nodes):
            return web.json_response({"status": "not_ready", "reason": "no SFU node linked", "sfu_nodes": nodes},
                                     status=503)
        return web.json_response({"status": "ready", "node": node.node_id, "sfu_nodes": nodes})
    if isinstance(plane, WorkerPool):
        # Each worker's state, no more (the probe is open): one down is restarting, its rooms moved.
        workers = [{"worker": w.index, "up": w.up} for w in plane.health()]
        down = [w["worker"] for w in workers if not w["up"]]
        if down:
            return web.json_response({"status": "not_ready", "reason": f"sfu workers down: {down}",
                                      "sfu_workers": workers}, status=503)
        return web.json_response({"status": "ready", "node": node.node_id, "sfu_workers": workers})
    return web.json_response({"status": "ready", "node": node.node_id})

