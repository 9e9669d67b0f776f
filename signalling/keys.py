"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

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
from .directory import ExpertDirectory as ExpertLookup
from .experts import ExpertDirectory, SessionParties
from .grants import SessionGrants
from .metrics import Metrics
from .scheduling import BookingListener, Scheduler
from .settings import Settings

if TYPE_CHECKING:
    from .billing.session_billing import SessionBilling
    from .node import SignallingNode
    from .recording import RecordingControl
    from .recording_archive import RecordingStore
    from .whip import WhipResources

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenIssuer)
METRICS = web.AppKey("metrics", Metrics)
ICE_SERVERS = web.AppKey("ice_servers", IceServerProvider)
DATABASE = web.AppKey("database", Database)
# The asyncpg pool of the PostgreSQL database every node shares (set when database_url is).
POSTGRES: web.AppKey[Any] = web.AppKey("postgres")
EXPERTS = web.AppKey("experts", ExpertDirectory)
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
EXPERT_DIRECTORY = web.AppKey("expert_directory", ExpertLookup)
# The media plane (sfu.api.MediaPlane): a LocalMediaPlane in this process, set by create_app.
MEDIA_PLANE = web.AppKey("media_plane", MediaPlane)
# Set before start-up to share one backend object (tests run several nodes on one memory hub).
BACKEND = web.AppKey("backend", Backend)
SIGNALLING: web.AppKey["SignallingNode"] = web.AppKey("signalling")
# The ICE servers a socket's welcome lists for a user id (the TURN module provides it; default none).
WS_ICE_SERVERS: web.AppKey[Callable[[str], list[dict[str, Any]]]] = web.AppKey("ws_ice_servers")
SESSION_GRANTS = web.AppKey("session_grants", SessionGrants)
WHIP_RESOURCES: web.AppKey["WhipResources"] = web.AppKey("whip_resources")
# Billing <-> sessions (signalling/billing/session_billing.py), set while the app runs.
SESSION_BILLING: web.AppKey["SessionBilling"] = web.AppKey("session_billing")
RECORDING_CONTROL: web.AppKey["RecordingControl"] = web.AppKey("recording_control")
RECORDING_ARCHIVE: web.AppKey["RecordingStore"] = web.AppKey("recording_archive")
