"""The application factory: ``create_app(settings)`` builds everything; ``expertcall serve`` runs it."""

from __future__ import annotations

import logging
from typing import AsyncIterator

from aiohttp import web

from . import keys
from . import ice
from . import rest_bookings, rest_experts
from .auth import TokenIssuer
from .database import Database
from .billing import service as billing_service
from .metrics import CONTENT_TYPE, Metrics
from .node import setup as setup_signalling
from .settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_message_bytes * 16)
    app[keys.SETTINGS] = settings
    app[keys.TOKENS] = TokenIssuer(settings.resolve_secret())
    app[keys.METRICS] = Metrics()

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    ice.setup(app)
    app.cleanup_ctx.append(database_ctx)
    rest_experts.setup(app)
    rest_bookings.setup(app)
    billing_service.setup(app)
    setup_signalling(app)
    return app


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    db = Database.in_dir(app[keys.SETTINGS].data_dir)
    app[keys.DATABASE] = db
    yield
    db.close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[keys.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
