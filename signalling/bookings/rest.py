"""REST for scheduled sessions. Times are RFC 3339 with an offset; replies are in UTC (``...Z``).

- ``POST /api/bookings`` (a client): ``{"expert_id", "start", "end", "topic"?}`` -> 201, or 200 with
  the existing booking when the same client repeats the same request
- ``GET /api/bookings?state=&limit=&offset=``: the caller's bookings as client or expert (an
  admin sees everyone's)
- ``GET /api/bookings/{id}`` and ``DELETE /api/bookings/{id}?reason=``: a party or an admin;
  cancelling works until the start and repeating it is harmless
- ``GET /api/experts/{id}/slots?from=&to=&duration=``: the expert's free time, as ranges and as
  slots of ``duration`` seconds (default 1800)
"""

from __future__ import annotations

from typing import AsyncIterator

import jsonschema
from aiohttp import web

from ..auth.tokens import TOKENS, Identity, Role, authenticate
from ..core import errors as rest_errors
from ..core import keys
from ..core.errors import InvalidInput, http_error, int_param, read_json
from ..experts.model import iso_utc
from ..experts.rest import EXPERTS
from .scheduling import STATES, BookingListener, BookingRules, BookingStore, Scheduler, parse_rfc3339
from .storage import open_booking_tables
from .tables import Booking

BOOKING_SCHEMA = jsonschema.Draft202012Validator(
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["expert_id", "start", "end"],
        "properties": {
            "expert_id": {"type": "string", "minLength": 1, "maxLength": 128},
            "start": {"type": "string"},
            "end": {"type": "string"},
            "topic": {"type": ["string", "null"]},
        },
    }
)
MAX_SLOT_WINDOW = 31 * 86400
MAX_SLOTS = 1000
DEFAULT_SLOT_SECONDS = 1800


def setup(app: web.Application) -> None:
    rest_errors.install(app)
    app.cleanup_ctx.append(scheduler_ctx)
    # Start the scheduler once every cleanup_ctx has run, so that a booking due at start-up
    # reaches a listener whose dependencies (sockets, sessions) already exist.
    app.on_startup.append(_start_scheduler)
    app.router.add_post("/api/bookings", post_booking)
    app.router.add_get("/api/bookings", list_bookings)
    app.router.add_get("/api/bookings/{id}", get_booking)
    app.router.add_delete("/api/bookings/{id}", delete_booking)
    app.router.add_get("/api/experts/{id}/slots", get_slots)


async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    rules = BookingRules.from_settings(app[keys.SETTINGS])
    tables = await open_booking_tables(app[keys.DATABASE], app.get(keys.POSTGRES))
    store = BookingStore(tables, app[EXPERTS], rules)
    scheduler = Scheduler(store, app.get(BOOKING_LISTENER), app[keys.METRICS])
    app[SCHEDULER] = scheduler
    yield
    await scheduler.close()


async def _start_scheduler(app: web.Application) -> None:
    app[SCHEDULER].start()


def _scheduler(request: web.Request) -> Scheduler:
    return request.app[SCHEDULER]


async def _visible(request: web.Request, identity: Identity) -> Booking:
    """The booking in the path if the caller is a party or an admin; otherwise 404, so that
    strangers learn nothing about other people's bookings."""
    booking = await _scheduler(request).store.get(request.match_info["id"])
    if booking is None or not (identity.is_admin or booking.has_party(identity.user_id)):
        raise http_error(404, "booking_not_found", "no such booking", "id")
    return booking


async def post_booking(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS], Role.CLIENT)
    body = await read_json(request, BOOKING_SCHEMA)
    start = parse_rfc3339(body["start"], "start")
    end = parse_rfc3339(body["end"], "end")
    booking, created = await _scheduler(request).book(
        identity.user_id, body["expert_id"], start, end, body.get("topic"), client_name=identity.name or "",
    )
    return web.json_response(booking.to_json(), status=201 if created else 200)


async def list_bookings(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS])
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise InvalidInput("invalid_state", f"state is one of {', '.join(STATES)}", "state")
    limit = int_param(request.query, "limit", 50, 1, 200)
    offset = int_param(request.query, "offset", 0, 0, 10**9)
    user = None if identity.is_admin else identity.user_id
    bookings = await _scheduler(request).store.list_for(user, state, limit, offset)
    return web.json_response({"bookings": [b.to_json() for b in bookings], "limit": limit, "offset": offset})


async def get_booking(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS])
    return web.json_response((await _visible(request, identity)).to_json())


async def delete_booking(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS])
    booking = await _visible(request, identity)
    booking, _ = await _scheduler(request).cancel(booking.id, identity.user_id, request.query.get("reason"))
    return web.json_response(booking.to_json())


async def get_slots(request: web.Request) -> web.Response:
    authenticate(request, request.app[TOKENS])
    store = _scheduler(request).store
    now = int(store.clock())
    start = parse_rfc3339(request.query["from"], "from") if "from" in request.query else now
    end = parse_rfc3339(request.query["to"], "to") if "to" in request.query else start + 7 * 86400
    if not (0 < end - start <= MAX_SLOT_WINDOW):
        raise InvalidInput("invalid_window", f"from is before to, at most {MAX_SLOT_WINDOW // 86400} days apart", "to")
    rules = store.rules
    default = min(max(DEFAULT_SLOT_SECONDS, rules.min_seconds), rules.max_seconds)
    duration = int_param(request.query, "duration", default, rules.min_seconds, rules.max_seconds)
    expert_id = request.match_info["id"]
    free = await store.free_intervals(expert_id, start, end)
    slots: list[dict[str, str]] = []
    for s, e in free:
        while s + duration <= e and len(slots) < MAX_SLOTS:
            slots.append({"start": iso_utc(s), "end": iso_utc(s + duration)})
            s += duration
    expert = await store.directory.get(expert_id)
    hours = expert.profile.working_hours if expert else None
    return web.json_response(
        {
            "expert_id": expert_id,
            "time_zone": hours.time_zone if hours else None,
            "from": iso_utc(start),
            "to": iso_utc(end),
            "duration": duration,
            "free": [{"start": iso_utc(s), "end": iso_utc(e)} for s, e in free],
            "slots": slots,
        }
    )


SCHEDULER = web.AppKey("scheduler", Scheduler)
# Optional, set before start-up: who hears about bookings (reminders, openings).
BOOKING_LISTENER = web.AppKey("booking_listener", BookingListener)
