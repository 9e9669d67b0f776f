"""The application's core ``web.AppKey``s: its settings, metrics and databases. A key whose value
belongs to one part lives in that part, beside the setup that sets it (``calls.node.SIGNALLING``,
``billing.service.METER``, ``experts.rest.EXPERTS``, ...)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .database import Database
from .metrics import Metrics
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
DATABASE = web.AppKey("database", Database)
# The asyncpg pool of the PostgreSQL database every node shares (set when database_url is).
POSTGRES: web.AppKey[Any] = web.AppKey("postgres")
