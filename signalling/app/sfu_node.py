"""An SFU node (``expertcall serve --role sfu``): the media plane ``--role all`` would run, served
to signalling nodes over the authenticated internal endpoint (sfu/node_server.py) and announced
in Redis; its HTTP port answers ``/healthz`` and ``/readyz`` only (no client reaches it: clients
talk to signalling nodes, and their media to the SFU's ICE candidates).

Start-up: the plane (its worker processes, with ``--sfu-workers`` above 1), files a killed
process left unfinished are finalized (held for the first signalling node that links), then the
endpoint opens and the node registers. Shutdown (SIGTERM) drains it first: it withdraws from the
registry and tells its links it is draining (no signalling node places a new room on it), and its
rooms go on for at most ``sfu_drain_seconds`` while their calls end; then it hangs up every link,
so signalling nodes re-place the rooms left on other SFU nodes at once, and closes the plane.
"""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from sfu.api import RecoverRecordings
from sfu.node_link import link_key
from sfu.node_registry import NodeRegistry
from sfu.node_server import NodeServer, load_of
from sfu.pool import WorkerPool
from sfu.worker import LocalMediaPlane

from ..core import keys
from ..core.settings import Settings
from .factory import healthz, media_options

NODE_SERVER = web.AppKey("sfu_node_server", NodeServer)


def create_sfu_node_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[keys.SETTINGS] = settings
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.cleanup_ctx.append(sfu_node_ctx)
    return app


async def sfu_node_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    plane: LocalMediaPlane | WorkerPool
    if settings.sfu_workers > 1:
        plane = WorkerPool(media_options(settings), settings.sfu_workers)
        await plane.start()
    else:
        plane = LocalMediaPlane(media_options(settings))
        plane.start()
    server = NodeServer(plane, load_of(plane), link_key(settings.sfu_link_secret()), settings.node_id,
                        NodeRegistry(settings.redis_url, settings.redis_prefix))
    try:
        if settings.recording_enabled:
            await plane.request(RecoverRecordings())
        await server.start(settings.sfu_node_host, settings.sfu_node_port, settings.sfu_node_advertise)
        app[NODE_SERVER] = server
        yield
    finally:
        await server.drain(settings.sfu_drain_seconds)
        await server.close()
        await plane.close()


async def readyz(request: web.Request) -> web.Response:
    """Ready once the endpoint is open and the node is in the registry."""
    server = request.app.get(NODE_SERVER)
    if server is None or not server.announced:
        return web.json_response({"status": "not_ready", "reason": "not registered"}, status=503)
    return web.json_response({"status": "ready", "node": server.node_id, "role": "sfu",
                              "signalling_links": len(server.links), "rooms": len(server.owners)})
