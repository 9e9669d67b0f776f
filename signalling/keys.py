"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from aiohttp import web

from .auth import TokenIssuer
from .billing.ledger import Ledger
from .billing.live import LiveTracker
from .billing.meter import Meter
from .metrics import Metrics
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenIssuer)
METRICS = web.AppKey("metrics", Metrics)
METER = web.AppKey("meter", Meter)
LEDGER = web.AppKey("ledger", Ledger)
LIVE_TRACKER = web.AppKey("live_tracker", LiveTracker)
