"""What a participant sees of their money before and after a call: the charging rule, a client's
past sessions, an expert's sessions in a period, and one session's receipt.

- ``GET /api/billing/terms``: the server's billing rule (unit length, free grace, per-session
  minimum, default platform fee), for a page to state before a request or booking.
- ``GET /api/billing/history?as=client|expert&from=&to=&limit=``: the caller's sessions, newest
  first, each as a receipt (an admin adds ``user=``).
- ``GET /api/billing/receipts/{session_id}``: one session's receipt, for its client, its expert
  or an admin.

A receipt tells the call's length (accepted to ended) apart from the time both sides' media
flowed (what is metered) and from what was billed (whole units). Names come from the session's
durable record; the expert's share only goes to the expert and admins.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..auth.tokens import TOKENS, Identity, Role, authenticate
from ..core import keys
from ..core.errors import http_error, int_param
from .ledger import Ledger
from .pricing import BillingPolicy
from .store import SIDES, BillingStore, StoredSession
from .times import END_OF_TIME, parse_date_or_time, rfc3339

MAX_HISTORY = 100

# session id -> (expert_name, client_name) from the session's durable record, None when it has
# none; set by the application's wiring (without it, receipts name the ids).
SESSION_NAMES: web.AppKey[Callable[[str], Awaitable[tuple[str, str] | None]]] = web.AppKey("session_names")


def setup(app: web.Application, store: web.AppKey[BillingStore], ledger: web.AppKey[Ledger]) -> None:
    """Register the routes; ``store`` and ``ledger`` are the keys billing's cleanup_ctx fills."""
    receipts = Receipts(store, ledger)
    app.router.add_get("/api/billing/terms", terms)
    app.router.add_get("/api/billing/history", receipts.history)
    app.router.add_get("/api/billing/receipts/{session_id}", receipts.receipt)


async def terms(request: web.Request) -> web.Response:
    authenticate(request, request.app[TOKENS])
    return web.json_response(BillingPolicy.from_settings(request.app[keys.SETTINGS]).to_dict())


class Receipts:
    def __init__(self, store: web.AppKey[BillingStore], ledger: web.AppKey[Ledger]) -> None:
        self.store = store
        self.ledger = ledger

    async def history(self, request: web.Request) -> web.Response:
        me = authenticate(request, request.app[TOKENS])
        for name in request.query:
            if name not in ("as", "user", "from", "to", "limit"):
                raise http_error(400, "unknown_parameter", f"unknown query parameter {name!r}", name)
        default_side = "expert" if me.role is Role.EXPERT else "client"
        side = request.query.get("as", default_side)
        if side not in SIDES:
            raise http_error(400, "bad_request", "as is client or expert", "as")
        user = request.query.get("user", me.user_id)
        if user != me.user_id and not me.is_admin:
            raise http_error(403, "forbidden", "only an admin may see another user's sessions", "user")
        start = _instant(request, "from", 0.0)
        end = _instant(request, "to", END_OF_TIME)
        limit = int_param(request.query, "limit", 50, 1, MAX_HISTORY)
        rows = await request.app[self.store].sessions_of(side, user, start, end, limit)
        return web.json_response({"sessions": [await self._receipt(request.app, row, me) for row in rows]})

    async def receipt(self, request: web.Request) -> web.Response:
        me = authenticate(request, request.app[TOKENS])
        session_id = request.match_info["session_id"]
        row = await request.app[self.store].session(session_id)
        # Someone else's session is as unknown as a missing one: ids are not to be probed.
        if row is None or not (me.is_admin or me.user_id in (row.expert_id, row.client_id)):
            raise http_error(404, "unknown_session", f"no receipt for session {session_id}", "session_id")
        return web.json_response(await self._receipt(request.app, row, me))

    async def _receipt(self, app: web.Application, row: StoredSession, me: Identity) -> dict[str, Any]:
        totals = await app[self.ledger].session_totals(row.session_id)
        policy = BillingPolicy.from_dict(row.policy)
        expert_name, client_name = await _names(app, row)
        ended = row.ended_at
        out: dict[str, Any] = {
            "session_id": row.session_id,
            "expert_id": row.expert_id,
            "expert_name": expert_name,
            "client_id": row.client_id,
            "client_name": client_name,
            "started_at": rfc3339(row.started_at),
            "ended_at": rfc3339(ended) if ended is not None else None,
            "open": ended is None,
            "end_reason": row.end_reason,
            "price": row.price,
            "currency": row.currency,
            "unit_seconds": policy.unit_seconds,
            "grace_seconds": policy.grace_seconds,
            "per_session_minimum_seconds": policy.per_session_minimum_seconds,
            "call_seconds": round((ended if ended is not None else time.time()) - row.started_at, 3),
            "live_seconds": round(_live_seconds(row, ended), 3),
            "units": totals.units,
            "billed_seconds": totals.units * policy.unit_seconds if row.price.get("kind") == "per_minute" else None,
            "total": totals.gross,
            "refunded": totals.refunded,
        }
        if me.is_admin or me.user_id == row.expert_id:
            out.update(fee=totals.fee, payout=totals.payout, platform_fee_bps=policy.platform_fee_bps)
        return out


def _instant(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return parse_date_or_time(raw)
    except ValueError as exc:
        raise http_error(400, "bad_request", f"{name}: {exc}", name) from None


def _live_seconds(row: StoredSession, ended: float | None) -> float:
    """Both sides' media flowing: closed intervals, and an open one up to now (or the end)."""
    now = ended if ended is not None else time.time()
    return sum((end if end is not None else now) - start for start, end in row.intervals)


async def _names(app: web.Application, row: StoredSession) -> tuple[str, str]:
    """(expert_name, client_name) from the session's durable record; the ids when there is none."""
    lookup = app.get(SESSION_NAMES)
    names = await lookup(row.session_id) if lookup is not None else None
    if names is None:
        return row.expert_id, row.client_id
    return names[0] or row.expert_id, names[1] or row.client_id
