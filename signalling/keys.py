"""The application's shared ``web.AppKey``s. A key whose value is an object of one module lives
beside it (``node.SIGNALLING``, ``whip.WHIP_RESOURCES``, ``session_billing.SESSION_BILLING``), so
that this module imports none of the modules that read it."""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from sfu.api import MediaPlane
from turn_config.ice_servers import IceServerProvider

from .auth import TokenIssuer
from .backends.base import Backend
from .billing.fees import PlatformFees
from .billing.ledger import Ledger
from .billing.meter import Claim, Meter
from .billing.store import BillingStore
from .database import Database
from .directory import ExpertDirectory
from .expert_profiles import ExpertProfiles
from .experts import SessionParties
from .grants import SessionGrants
from .metrics import Metrics
from .scheduling import BookingListener, Scheduler
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenIssuer)
METRICS = web.AppKey("metrics", Metrics)
ICE_SERVERS = web.AppKey("ice_servers", IceServerProvider)
DATABASE = web.AppKey("database", Database)
# The asyncpg pool of the PostgreSQL database every node shares (set when database_url is).
POSTGRES: web.AppKey[Any] = web.AppKey("postgres")
EXPERTS = web.AppKey("experts", ExpertProfiles)
SCHEDULER = web.AppKey("scheduler", Scheduler)
# Optional, set by create_app before start-up: who hears about bookings (reminders, openings),
# and how a session id maps to (expert_id, client_id, state) for ratings.
BOOKING_LISTENER = web.AppKey("booking_listener", BookingListener)
SESSION_PARTIES: web.AppKey[SessionParties] = web.AppKey("session_parties")
METER = web.AppKey("meter", Meter)
# Billing's tables (SQLite, or the PostgreSQL every node shares), opened by billing's cleanup_ctx.
BILLING_STORE = web.AppKey("billing_store", BillingStore)
# Set before start-up to decide which open sessions a starting Meter takes over (see Meter.recover).
METER_CLAIM: web.AppKey[Claim] = web.AppKey("meter_claim")
LEDGER = web.AppKey("ledger", Ledger)
# Per-expert platform fee overrides (admin-set), applied when a session opens.
PLATFORM_FEES = web.AppKey("platform_fees", PlatformFees)
EXPERT_DIRECTORY = web.AppKey("expert_directory", ExpertDirectory)
# The media plane (sfu.api.MediaPlane): a LocalMediaPlane in this process, set by create_app.
MEDIA_PLANE = web.AppKey("media_plane", MediaPlane)
# Set before start-up to share one backend object (tests run several nodes on one memory hub).
BACKEND = web.AppKey("backend", Backend)
# The ICE servers a socket's welcome lists for a user id (the TURN module provides it; default none).
WS_ICE_SERVERS: web.AppKey[Callable[[str], list[dict[str, Any]]]] = web.AppKey("ws_ice_servers")
SESSION_GRANTS = web.AppKey("session_grants", SessionGrants)
