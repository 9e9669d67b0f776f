"""Billing inside the application: resources opened in a ``cleanup_ctx`` and the REST routes.

``setup(app)`` is the one call ``create_app`` makes. At start-up the billing store opens (SQLite in
the data dir, or the PostgreSQL every node shares with ``database_url``), the Meter recovers the
open sessions it may own and starts its timers, then the Redis relay (when ``redis_url`` is set) and the webhook
sender (when ``webhook_urls`` are) start publishing the outbox. At shutdown, after the session
layer has ended its sessions, the Meter charges what is due, the relay flushes and everything
closes; what is not flushed stays in the outbox for the next start.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from ..auth.tokens import TOKENS, Identity, Role, authenticate
from ..core import keys
from ..core.errors import http_error, int_param, read_json_value
from ..core.redis_timeouts import TIMEOUTS
from ..core.settings import SettingsError
from . import receipts
from .checkpointer import WalCheckpointer
from .fees import PlatformFees
from .ledger import Ledger, to_csv
from .meter import BillingError, Claim, Meter
from .outbox import Outbox
from .query import instant_param
from .relay import RedisRelay
from .storage import open_store
from .store import BillingStore, StoredSession
from .times import END_OF_TIME
from .views import session_view
from .webhooks import WebhookSender

log = logging.getLogger(__name__)

MAX_PAGE = 1000
ERROR_STATUS = {
    "unknown_session": 404,
    "session_open": 409,
    "refund_window_closed": 409,
    "nothing_to_refund": 409,
}


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(billing_ctx)
    app.router.add_get("/api/metering", metering_feed)
    app.router.add_get("/api/billing/sessions/{session_id}", session_cost)
    app.router.add_post("/api/billing/sessions/{session_id}/refund", refund)
    app.router.add_get("/api/billing/statement", statement)
    app.router.add_get("/api/billing/export", export)
    app.router.add_get("/api/billing/experts/{expert_id}/fee", get_fee)
    app.router.add_put("/api/billing/experts/{expert_id}/fee", put_fee)
    receipts.setup(app, BILLING_STORE, LEDGER)


async def billing_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if settings.webhook_urls and not settings.webhook_secret:
        raise SettingsError("webhook_urls need a webhook_secret (EXPERTCALL_WEBHOOK_SECRET) to sign with")
    db = app[keys.DATABASE]
    store, close_store = await open_store(settings, db, app.get(keys.POSTGRES))
    ledger = Ledger(store)
    outbox = Outbox(store)
    meter = Meter(
        store, ledger, outbox, node_id=settings.node_id, refund_window_seconds=settings.refund_window_seconds,
    )
    app[BILLING_STORE] = store
    app[LEDGER] = ledger
    app[METER] = meter
    app[PLATFORM_FEES] = PlatformFees(store, settings.platform_fee_bps)
    checkpointer = WalCheckpointer(db)
    checkpointer.start()
    recovered = await meter.start(app.get(METER_CLAIM))
    if recovered:
        log.info("metering recovered %d open sessions", len(recovered))
    redis = relay = None
    if settings.redis_url:
        redis = Redis.from_url(settings.redis_url, **TIMEOUTS)
        relay = RedisRelay(outbox, redis, settings.metering_stream)
        relay.start()
    webhooks = WebhookSender(outbox, settings.webhook_urls, settings.webhook_secret)
    webhooks.start()
    collector = BillingCollector(meter, relay)
    app[keys.METRICS].registry.register(collector)
    try:
        yield
    finally:
        app[keys.METRICS].registry.unregister(collector)
        await meter.close()
        if relay is not None:
            await relay.close()
        await webhooks.close()
        if redis is not None:
            await redis.aclose()
        await checkpointer.close()
        await close_store()


class BillingCollector(Collector):
    """Billing figures for /metrics, read at scrape time (the outbox backlog is sampled by the
    relay, which reads the store off the scrape's thread)."""

    def __init__(self, meter: Meter, relay: RedisRelay | None) -> None:
        self.meter = meter
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "expertcall_billing_open_sessions", "Sessions being metered", value=len(self.meter.open_sessions())
        )
        yield CounterMetricFamily(
            "expertcall_billing_units", "Units charged by this process", value=self.meter.units_charged
        )
        if self.relay is not None:
            yield GaugeMetricFamily(
                "expertcall_metering_outbox_unrelayed", "Metering events not yet in the Redis stream",
                value=self.relay.backlog,
            )


def _billing_error(exc: BillingError) -> web.HTTPException:
    return http_error(ERROR_STATUS.get(exc.code, 400), exc.code, exc.message)


def _me(request: web.Request, *roles: Role) -> Identity:
    return authenticate(request, request.app[TOKENS], *roles)


async def metering_feed(request: web.Request) -> web.Response:
    """``GET /api/metering?after=<cursor>&limit=<n>`` (admin): the feed from the billing store, in
    order: the same on every node."""
    _me(request, Role.ADMIN)
    # docs/billing.md: a bad parameter here is "bad_request".
    after = int_param(request.query, "after", 0, 0, 2**62, code="bad_request")
    limit = int_param(request.query, "limit", 100, 1, MAX_PAGE, code="bad_request")
    rows = await request.app[METER].outbox.after(after, limit)
    body = '{"events":[' + ",".join(r.body for r in rows) + '],"cursors":' + str([r.seq for r in rows])
    body += ',"next":' + str(rows[-1].seq if rows else after) + "}"
    return web.Response(text=body, content_type="application/json")


async def _session_row(request: web.Request, session_id: str) -> StoredSession:
    row = await request.app[BILLING_STORE].session(session_id)
    if row is None:
        raise http_error(404, "unknown_session", f"no metered session {session_id}")
    return row


async def session_cost(request: web.Request) -> web.Response:
    """The running cost of an open session, or the totals of an ended one (its expert, client, admin)."""
    me = _me(request)
    session_id = request.match_info["session_id"]
    row = await _session_row(request, session_id)
    if not me.is_admin and me.user_id not in (row.expert_id, row.client_id):
        raise http_error(403, "forbidden", "only the session's expert, client or an admin may see its cost")
    return web.json_response(await session_view(request.app[METER], row))


async def refund(request: web.Request) -> web.Response:
    """``POST /api/billing/sessions/{id}/refund`` ``{"reason": "..."}``: an admin or the session's expert."""
    me = _me(request, Role.EXPERT)
    session_id = request.match_info["session_id"]
    row = await _session_row(request, session_id)
    if not me.is_admin and me.user_id != row.expert_id:
        raise http_error(403, "forbidden", "only the session's expert or an admin may refund it")
    body = await read_json_value(request) if request.can_read_body else {}
    reason = body.get("reason", "") if isinstance(body, dict) else ""
    if not isinstance(reason, str) or len(reason) > 500:
        raise http_error(400, "bad_request", "reason must be a string of at most 500 characters")
    try:
        result = await request.app[METER].refund(session_id, by=f"{me.role.value}:{me.user_id}", reason=reason)
    except BillingError as exc:
        raise _billing_error(exc) from None
    p = result.posting
    return web.json_response({
        "session_id": session_id, "created": result.created, "posting_id": p.id,
        "amount": p.gross.amount, "fee": p.fee.amount, "payout": p.payout.amount, "currency": p.currency,
    }, status=201 if result.created else 200)


async def get_fee(request: web.Request) -> web.Response:
    """``GET /api/billing/experts/{id}/fee``: the platform fee of that expert's next sessions."""
    me = _me(request, Role.EXPERT)
    expert_id = request.match_info["expert_id"]
    if not me.is_admin and me.user_id != expert_id:
        raise http_error(403, "forbidden", "experts see their own fee only")
    return web.json_response(await _fee_json(request, expert_id))


async def put_fee(request: web.Request) -> web.Response:
    """``PUT /api/billing/experts/{id}/fee`` ``{"platform_fee_bps": int | null}`` (admins only);
    null goes back to the server's default."""
    me = _me(request, Role.ADMIN)
    expert_id = request.match_info["expert_id"]
    body = await read_json_value(request)
    if not isinstance(body, dict) or set(body) != {"platform_fee_bps"}:
        raise http_error(400, "bad_request", 'the body must be {"platform_fee_bps": <0-10000 or null>}')
    try:
        await request.app[PLATFORM_FEES].set(expert_id, body["platform_fee_bps"], by=f"admin:{me.user_id}")
    except BillingError as exc:
        raise _billing_error(exc) from None
    return web.json_response(await _fee_json(request, expert_id))


async def _fee_json(request: web.Request, expert_id: str) -> dict[str, object]:
    fees = request.app[PLATFORM_FEES]
    override = await fees.override(expert_id)
    return {
        "expert_id": expert_id, "platform_fee_bps": fees.default_bps if override is None else override,
        "default": override is None,
    }


async def statement(request: web.Request) -> web.Response:
    """``GET /api/billing/statement?expert=E&from=&to=``: an expert's own, or anyone's for an admin."""
    me = _me(request, Role.EXPERT)
    expert = request.query.get("expert") or me.user_id
    if not me.is_admin and expert != me.user_id:
        raise http_error(403, "forbidden", "experts see their own statement only")
    start = instant_param(request, "from", 0.0)
    end = instant_param(request, "to", END_OF_TIME)
    return web.json_response(await request.app[LEDGER].statement(expert, start, end))


async def export(request: web.Request) -> web.Response:
    """``GET /api/billing/export?from=&to=&format=csv|json`` (admin): ledger entries."""
    _me(request, Role.ADMIN)
    start = instant_param(request, "from", 0.0)
    end = instant_param(request, "to", END_OF_TIME)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise http_error(400, "bad_request", "format is json or csv")
    rows = await request.app[LEDGER].export(start, end)
    if fmt == "csv":
        return web.Response(text=to_csv(rows), content_type="text/csv")
    return web.json_response(rows)


METER = web.AppKey("meter", Meter)
# Billing's tables (SQLite, or the PostgreSQL every node shares), opened by billing's cleanup_ctx.
BILLING_STORE = web.AppKey("billing_store", BillingStore)
# Set before start-up to decide which open sessions a starting Meter takes over (see Meter.recover).
METER_CLAIM: web.AppKey[Claim] = web.AppKey("meter_claim")
LEDGER = web.AppKey("ledger", Ledger)
# Per-expert platform fee overrides (admin-set), applied when a session opens.
PLATFORM_FEES = web.AppKey("platform_fees", PlatformFees)
