"""``GET /metrics`` for Prometheus, never open to anyone who asks.

On the main listener it takes an admin bearer token, or the static ``metrics_token`` a scraper
can keep in a file (Prometheus' ``authorization.credentials_file``; an admin JWT expires within
``token_max_ttl``). With ``--metrics-port`` a second listener, bound to loopback only, serves
/metrics with no token, for a scraper or an agent on the same host.
"""

from __future__ import annotations

import hmac
from typing import AsyncIterator

from aiohttp import web

from ..auth.tokens import TOKENS, Role, authenticate, bearer_token
from ..core import keys
from ..core.metrics import CONTENT_TYPE


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", scrape_with_token)
    app.cleanup_ctx.append(listener_ctx)


async def scrape_with_token(request: web.Request) -> web.Response:
    expected = request.app[keys.SETTINGS].metrics_token
    given = bearer_token(request)
    if not (expected and given and hmac.compare_digest(given.encode(), expected.encode())):
        authenticate(request, request.app[TOKENS], Role.ADMIN)
    return _render(request.app)


def _render(app: web.Application) -> web.Response:
    return web.Response(body=app[keys.METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


async def listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """The loopback-only metrics listener, when ``metrics_port`` is set."""
    settings = app[keys.SETTINGS]
    if not settings.metrics_port:
        yield
        return

    async def scrape(request: web.Request) -> web.Response:
        return _render(app)

    listener = web.Application()
    listener.router.add_get("/metrics", scrape)
    runner = web.AppRunner(listener, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    try:
        yield
    finally:
        await runner.cleanup()
