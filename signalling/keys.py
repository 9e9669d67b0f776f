"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from sfu.api import MediaPlane

from .auth import TokenIssuer
from .backends.base import Backend
from .database import Database
from .directory import ExpertDirectory
from .metrics import Metrics
from .settings import Settings

if TYPE_CHECKING:
    from .node import SignallingNode

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenIssuer)
METRICS = web.AppKey("metrics", Metrics)
DATABASE = web.AppKey("database", Database)
EXPERT_DIRECTORY = web.AppKey("expert_directory", ExpertDirectory)
MEDIA_PLANE = web.AppKey("media_plane", MediaPlane)
# Set before start-up to share one backend object (tests run several nodes on one memory hub).
BACKEND = web.AppKey("backend", Backend)
SIGNALLING: web.AppKey["SignallingNode"] = web.AppKey("signalling")
# The ICE servers a socket's welcome lists for a user id (the TURN module provides it; default none).
WS_ICE_SERVERS: web.AppKey[Callable[[str], list[dict[str, Any]]]] = web.AppKey("ws_ice_servers")
