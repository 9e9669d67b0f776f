"""Query parameters that billing's REST routes share (service.py, receipts.py)."""

from __future__ import annotations

from aiohttp import web

from ..core.errors import http_error
from .times import parse_date_or_time


def instant_param(request: web.Request, name: str, default: float) -> float:
    """``from``/``to``: an ISO 8601 date or time, or Unix seconds; a coded 400 naming the field."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return parse_date_or_time(raw)
    except ValueError as exc:
        raise http_error(400, "bad_request", f"{name}: {exc}", name) from None
