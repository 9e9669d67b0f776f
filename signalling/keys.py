"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from sfu.api import MediaPlane

from .auth import TokenIssuer
from .metrics import Metrics
from .grants import SessionGrants
from .settings import Settings

if TYPE_CHECKING:
    from .whip import WhipResources

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenIssuer)
METRICS = web.AppKey("metrics", Metrics)
MEDIA = web.AppKey("media", MediaPlane)
SESSION_GRANTS = web.AppKey("session_grants", SessionGrants)
WHIP_RESOURCES: web.AppKey["WhipResources"] = web.AppKey("whip_resources")
