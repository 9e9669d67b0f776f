"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from aiohttp import web

from .auth import TokenIssuer
from .database import Database
from .experts import ExpertDirectory, SessionParties
from .metrics import Metrics
from .scheduling import BookingListener, Scheduler
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenIssuer)
METRICS = web.AppKey("metrics", Metrics)
DATABASE = web.AppKey("database", Database)
EXPERTS = web.AppKey("experts", ExpertDirectory)
SCHEDULER = web.AppKey("scheduler", Scheduler)
# Optional, set by create_app before start-up: who hears about bookings (reminders, openings),
# and how a session id maps to (expert_id, client_id, state) for ratings.
BOOKING_LISTENER = web.AppKey("booking_listener", BookingListener)
SESSION_PARTIES: web.AppKey[SessionParties] = web.AppKey("session_parties")
