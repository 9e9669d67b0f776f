"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from aiohttp import web

from turn_config.ice_servers import IceServerProvider

from .auth import TokenIssuer
from .metrics import Metrics
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenIssuer)
METRICS = web.AppKey("metrics", Metrics)
ICE_SERVERS = web.AppKey("ice_servers", IceServerProvider)
