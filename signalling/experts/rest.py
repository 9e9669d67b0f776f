"""REST for experts and ratings.

- ``GET /api/experts?q=&skill=&language=&max_price=&currency=&mode=&min_rating=&available=&limit=&offset=``
  (any signed-in user; ``available`` takes a comma-separated list such as ``online,busy``)
- ``GET /api/experts/{id}`` and ``GET /api/experts/{id}/ratings?limit=&offset=``
- ``PUT /api/experts/{id}``: the whole profile, by that expert or an admin
- ``POST /api/sessions/{session_id}/rating``: ``{"stars": 1-5, "review": "..."}``, once, by the
  client of that ended session
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, AsyncIterator

import jsonschema
from aiohttp import web

from ..auth.tokens import TOKENS, Role, authenticate
from ..core import errors as rest_errors
from ..core import keys
from ..core.errors import InvalidInput, http_error, int_param, read_json
from . import photos
from .model import (
    AVAILABILITY,
    PRICE_MODES,
    WEEKDAYS,
    Profile,
    SearchQuery,
    SessionParties,
    maybe_await,
    normalise_language,
    normalise_skill,
    search_words,
    validate_currency,
)
from .profiles import ExpertProfiles
from .storage import open_expert_store

_INTERVAL = {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}
PROFILE_SCHEMA = jsonschema.Draft202012Validator(
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["display_name"],
        "properties": {
            "display_name": {"type": "string"},
            "bio": {"type": "string"},
            "skills": {"type": "array", "items": {"type": "string"}},
            "languages": {"type": "array", "items": {"type": "string"}},
            "price": {
                "type": "object",
                "additionalProperties": False,
                "required": ["mode"],
                "properties": {
                    "mode": {"enum": list(PRICE_MODES)},
                    "amount": {"type": "integer"},
                    "currency": {"type": "string"},
                },
            },
            "working_hours": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "required": ["time_zone"],
                "properties": {
                    "time_zone": {"type": "string"},
                    "weekly": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {day: {"type": "array", "items": _INTERVAL} for day in WEEKDAYS},
                    },
                },
            },
        },
    }
)
RATING_SCHEMA = jsonschema.Draft202012Validator(
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["stars"],
        "properties": {"stars": {"type": "integer"}, "review": {"type": ["string", "null"]}},
    }
)
_SEARCH_PARAMS = {"q", "skill", "language", "max_price", "currency", "mode", "min_rating", "available", "limit", "offset"}
_RATING_TEXT = re.compile(r"[1-5](\.[0-9]{1,2})?")
MAX_PAGE = 100


def setup(app: web.Application) -> None:
    rest_errors.install(app)
    app.cleanup_ctx.append(directory_ctx)
    app.router.add_get("/api/experts", list_experts)
    app.router.add_get("/api/experts/{id}", get_expert)
    app.router.add_put("/api/experts/{id}", put_expert)
    app.router.add_get("/api/experts/{id}/ratings", list_ratings)
    app.router.add_post("/api/sessions/{session_id}/rating", post_rating)
    photos.setup(app, EXPERTS)


async def directory_ctx(app: web.Application) -> AsyncIterator[None]:
    app[EXPERTS] = ExpertProfiles(await open_expert_store(app[keys.DATABASE], app.get(keys.POSTGRES)))
    yield


def _directory(request: web.Request) -> ExpertProfiles:
    return request.app[EXPERTS]


async def list_experts(request: web.Request) -> web.Response:
    authenticate(request, request.app[TOKENS])
    query = search_query(request.query)
    result = await _directory(request).search(query)
    return web.json_response(
        {
            "experts": [expert.to_json(state) for expert, state in result.experts],
            "total": result.total,
            "limit": query.limit,
            "offset": query.offset,
        }
    )


def search_query(params: Any) -> SearchQuery:
    """Validate and normalise the search parameters."""
    for name in params:
        if name not in _SEARCH_PARAMS:
            raise InvalidInput("unknown_parameter", f"unknown query parameter {name!r}", name)
    skill = normalise_skill(params["skill"]) if "skill" in params else None
    language = normalise_language(params["language"]) if "language" in params else None
    mode = params.get("mode")
    if mode is not None and mode not in PRICE_MODES:
        raise InvalidInput("invalid_price_mode", f"mode is one of {', '.join(PRICE_MODES)}", "mode")
    max_price = int_param(params, "max_price", None, 0, 10**12)
    currency = params.get("currency")
    if max_price is not None and currency is None:
        raise InvalidInput("currency_required", "max_price needs a currency (ISO 4217, e.g. USD)", "currency")
    if currency is not None:
        validate_currency(currency, "currency")
    min_rating = None
    if "min_rating" in params:
        if not _RATING_TEXT.fullmatch(params["min_rating"]) or Fraction(params["min_rating"]) > 5:
            raise InvalidInput("invalid_min_rating", "min_rating is a number from 1 to 5 (e.g. 4.5)", "min_rating")
        min_rating = Fraction(params["min_rating"])
    available: tuple[str, ...] = ()
    if "available" in params:
        available = tuple(params["available"].split(","))
        if not available or any(s not in AVAILABILITY for s in available):
            raise InvalidInput("invalid_availability", f"available lists some of {', '.join(AVAILABILITY)}", "available")
    return SearchQuery(
        skill=skill,
        max_price=max_price,
        currency=currency,
        mode=mode,
        min_rating=min_rating,
        available=available,
        language=language,
        words=search_words(params["q"]) if "q" in params else (),
        limit=int_param(params, "limit", 20, 1, MAX_PAGE),
        offset=int_param(params, "offset", 0, 0, 10**9),
    )


async def get_expert(request: web.Request) -> web.Response:
    authenticate(request, request.app[TOKENS])
    directory = _directory(request)
    expert = await directory.get(request.match_info["id"])
    if expert is None:
        raise http_error(404, "expert_not_found", "no such expert", "id")
    return web.json_response(expert.to_json(await directory.availability_of(expert.id)))


async def put_expert(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS], Role.EXPERT)
    expert_id = request.match_info["id"]
    if not identity.is_admin and identity.user_id != expert_id:
        raise http_error(403, "forbidden", "experts can only edit their own profile", "id")
    body = await read_json(request, PROFILE_SCHEMA)
    directory = _directory(request)
    created = await directory.get(expert_id) is None
    expert = await directory.upsert_profile(expert_id, Profile.from_json(body))
    return web.json_response(expert.to_json(await directory.availability_of(expert.id)), status=201 if created else 200)


async def list_ratings(request: web.Request) -> web.Response:
    authenticate(request, request.app[TOKENS])
    directory = _directory(request)
    expert = await directory.get(request.match_info["id"])
    if expert is None:
        raise http_error(404, "expert_not_found", "no such expert", "id")
    limit = int_param(request.query, "limit", 20, 1, MAX_PAGE)
    offset = int_param(request.query, "offset", 0, 0, 10**9)
    # Reviews are public; who wrote them is not.
    ratings = [
        {k: v for k, v in r.to_json().items() if k != "client_id"}
        for r in await directory.ratings(expert.id, limit, offset)
    ]
    return web.json_response(
        {"rating": {"average": expert.rating_average, "count": expert.rating_count}, "ratings": ratings}
    )


async def post_rating(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS])
    session_id = request.match_info["session_id"]
    lookup = request.app.get(SESSION_PARTIES)
    parties = await maybe_await(lookup(session_id)) if lookup is not None else None
    if parties is None:
        raise http_error(404, "session_not_found", "no such session", "session_id")
    expert_id, client_id, state = parties
    if identity.user_id != client_id:
        raise http_error(403, "not_session_client", "only the session's client can rate it", "session_id")
    if state != "ended":
        raise http_error(409, "session_not_ended", "a session can be rated once it has ended", "session_id")
    body = await read_json(request, RATING_SCHEMA)
    directory = _directory(request)
    rating = await directory.add_rating(session_id, expert_id, client_id, body["stars"], body.get("review"))
    expert = await directory.get(expert_id)
    summary = {"average": expert.rating_average, "count": expert.rating_count} if expert else None
    return web.json_response({"rating": rating.to_json(), "expert_rating": summary}, status=201)


# The expert profiles (set at start-up by ``setup``'s cleanup_ctx).
EXPERTS = web.AppKey("experts", ExpertProfiles)
# How a session id maps to (expert_id, client_id, state) for ratings (set by create_app).
SESSION_PARTIES: web.AppKey[SessionParties] = web.AppKey("session_parties")
