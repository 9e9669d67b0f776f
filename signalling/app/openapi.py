"""The REST API as an OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

Written by hand next to the handlers it describes, and held to them twice: tests/signalling/app/test_openapi.py
checks that its operations are exactly the application's routes, and schemathesis (a property
based fuzzer, run against a live server in scripts/test) checks that every response the server
gives is one this document allows - status, content type and body. The WebSocket protocol on
``/ws`` has its own artefacts (docs/protocol.md and signalling/schemas/).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aiohttp import web

from ..bookings.scheduling import MAX_REASON, MAX_TOPIC, STATES
from ..core.currencies import MAX_PRICE_AMOUNT, PRICE_CURRENCIES
from ..experts.model import (
    AVAILABILITY,
    MAX_BIO,
    MAX_DISPLAY_NAME,
    MAX_ID,
    MAX_REVIEW,
    PRICE_MODES,
    WEEKDAYS,
)

Schema = dict[str, Any]

VERSION = "1"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str] | None = None, **properties: Schema) -> Schema:
    """An object of exactly these properties (all of them required unless ``required`` says)."""
    return _props(properties, required)


def _props(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "required": list(properties) if required is None else required,
    }


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339 in UTC (...Z)"}
MONEY: Schema = _obj(amount=INTEGER, currency=STRING)

SCHEMAS: dict[str, Schema] = {
    "Error": _obj(
        error=_obj(
            required=["code", "message"],
            code={"type": "string", "description": "Stable, machine-readable"},
            message={"type": "string", "description": "For humans; may change"},
            field=_nullable({"type": "string", "description": "The parameter or JSON path that was wrong"}),
        )
    ),
    "Price": _obj(
        required=["mode"],
        mode={"enum": list(PRICE_MODES)},
        amount={"type": "integer", "minimum": 0, "maximum": MAX_PRICE_AMOUNT, "description": "Minor units"},
        currency={"enum": sorted(PRICE_CURRENCIES)},
    ),
    "WorkingHours": _obj(
        required=["time_zone"],
        time_zone={"type": "string", "description": "An IANA time zone, e.g. Europe/Berlin"},
        weekly=_props(
            required=[],
            properties={
                day: {
                    "type": "array",
                    "maxItems": 12,
                    "items": {
                        "type": "array",
                        "minItems": 2,
                        "maxItems": 2,
                        "items": {"type": "string", "pattern": "^([01][0-9]|2[0-4]):[0-5][0-9]$"},
                    },
                }
                for day in WEEKDAYS
            },
        ),
    ),
    "ProfileInput": _obj(
        required=["display_name"],
        display_name={"type": "string", "minLength": 1, "maxLength": MAX_DISPLAY_NAME},
        bio={"type": "string", "maxLength": MAX_BIO},
        skills={"type": "array", "maxItems": 30, "items": {"type": "string", "minLength": 1, "maxLength": 40}},
        languages={"type": "array", "maxItems": 20, "items": {"type": "string", "pattern": "^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"}},
        price=_ref("Price"),
        working_hours=_nullable(_ref("WorkingHours")),
    ),
    "RatingSummary": _obj(average=_nullable(NUMBER), count={"type": "integer", "minimum": 0}),
    "Expert": _obj(
        required=["id", "display_name", "bio", "skills", "languages", "price", "working_hours", "rating", "updated_at",
                  "photo"],
        id=STRING,
        display_name=STRING,
        bio=STRING,
        skills={"type": "array", "items": STRING},
        languages={"type": "array", "items": STRING},
        price=_obj(mode={"enum": list(PRICE_MODES)}, amount=INTEGER, currency=STRING),
        working_hours=_nullable(_ref("WorkingHours")),
        rating=_ref("RatingSummary"),
        updated_at=TIMESTAMP,
        photo={**_nullable(STRING), "description": "The photo's URL (GET without a token), versioned; null: none"},
        availability={"enum": list(AVAILABILITY)},
    ),
    "Photo": _obj(photo=_nullable(STRING)),
    "ExpertPage": _obj(
        experts={"type": "array", "items": _ref("Expert")}, total=INTEGER, limit=INTEGER, offset=INTEGER
    ),
    "Rating": _obj(
        session_id=STRING, expert_id=STRING, client_id=STRING, stars={"type": "integer", "minimum": 1, "maximum": 5},
        review=_nullable(STRING), created_at=TIMESTAMP,
    ),
    "PublicRating": _obj(
        session_id=STRING, expert_id=STRING, stars={"type": "integer", "minimum": 1, "maximum": 5},
        review=_nullable(STRING), created_at=TIMESTAMP,
    ),
    "RatingPage": _obj(rating=_ref("RatingSummary"), ratings={"type": "array", "items": _ref("PublicRating")}),
    "RatingInput": _obj(
        required=["stars"],
        stars={"type": "integer", "minimum": 1, "maximum": 5},
        review=_nullable({"type": "string", "maxLength": MAX_REVIEW}),
    ),
    "RatingReply": _obj(rating=_ref("Rating"), expert_rating=_nullable(_ref("RatingSummary"))),
    "BookingInput": _obj(
        required=["expert_id", "start", "end"],
        expert_id={"type": "string", "minLength": 1, "maxLength": MAX_ID},
        start={"type": "string", "format": "date-time", "description": "RFC 3339 with an offset, whole seconds"},
        end={"type": "string", "format": "date-time"},
        topic=_nullable({"type": "string", "maxLength": MAX_TOPIC}),
    ),
    "Booking": _obj(
        id=STRING,
        expert_id=STRING,
        client_id=STRING,
        start=TIMESTAMP,
        end=TIMESTAMP,
        state={"enum": list(STATES)},
        topic=_nullable(STRING),
        created_at=TIMESTAMP,
        opened_at=_nullable(TIMESTAMP),
        cancelled_at=_nullable(TIMESTAMP),
        cancelled_by=_nullable(STRING),
        cancel_reason=_nullable(STRING),
        quote=_nullable(_ref("Quote")),
        expert_name={**STRING, "description": "The expert's display name when it was booked (else the id)"},
        client_name={**STRING, "description": "The client's name when it was booked (else the id)"},
    ),
    "Quote": _props({
        "price": _obj(kind={"enum": ["free", "per_session", "per_minute"]}, amount=INTEGER, currency=STRING),
        "unit_seconds": INTEGER,
        "grace_seconds": INTEGER,
        "per_session_minimum_seconds": INTEGER,
        "platform_fee_bps": {"type": "integer", "minimum": 0, "maximum": 10000},
        "quoted_at": NUMBER,
    }),
    "BookingPage": _obj(bookings={"type": "array", "items": _ref("Booking")}, limit=INTEGER, offset=INTEGER),
    "Interval": _obj(start=TIMESTAMP, end=TIMESTAMP),
    "Slots": _props({
        "expert_id": STRING,
        "time_zone": _nullable(STRING),
        "from": TIMESTAMP,
        "to": TIMESTAMP,
        "duration": INTEGER,
        "free": {"type": "array", "items": _ref("Interval")},
        "slots": {"type": "array", "items": _ref("Interval")},
    }),
    "IceServers": _obj(
        iceServers={
            "type": "array",
            "items": _obj(
                required=["urls"],
                urls={"type": "array", "items": STRING},
                username=STRING,
                credential=STRING,
            ),
        },
        ttl=INTEGER,
        expiresAt=_nullable(INTEGER),
    ),
    "RevocationInput": {
        "oneOf": [
            _obj(token={"type": "string", "minLength": 1, "maxLength": 4096}),
            _obj(jti={"type": "string", "minLength": 1, "maxLength": 64}),
        ]
    },
    "Revocation": _obj(jti=STRING, expires_at=INTEGER),
    "BillingSession": _obj(
        session_id=STRING,
        expert_id=STRING,
        client_id=STRING,
        open=BOOLEAN,
        price=_obj(kind={"enum": ["free", "per_session", "per_minute"]}, amount=INTEGER, currency=STRING),
        currency=STRING,
        units=INTEGER,
        total=INTEGER,
        fee=INTEGER,
        payout=INTEGER,
        live=BOOLEAN,
        live_seconds=NUMBER,
        budget_cap=_nullable(MONEY),
        next_charge_at=_nullable(NUMBER),
        started_at=NUMBER,
        ended_at=_nullable(NUMBER),
        end_reason=_nullable(STRING),
        refunded=BOOLEAN,
    ),
    "BillingTerms": _obj(
        unit_seconds=INTEGER, grace_seconds=INTEGER, per_session_minimum_seconds=INTEGER, platform_fee_bps=INTEGER,
    ),
    "Receipt": _obj(
        required=[
            "session_id", "expert_id", "expert_name", "client_id", "client_name", "started_at", "ended_at", "open",
            "end_reason", "price", "currency", "unit_seconds", "grace_seconds", "per_session_minimum_seconds",
            "call_seconds", "live_seconds", "units", "billed_seconds", "total", "refunded",
        ],
        session_id=STRING,
        expert_id=STRING,
        expert_name=STRING,
        client_id=STRING,
        client_name=STRING,
        started_at=TIMESTAMP,
        ended_at=_nullable(TIMESTAMP),
        open=BOOLEAN,
        end_reason=_nullable(STRING),
        price=_obj(kind={"enum": ["free", "per_session", "per_minute"]}, amount=INTEGER, currency=STRING),
        currency=STRING,
        unit_seconds=INTEGER,
        grace_seconds=INTEGER,
        per_session_minimum_seconds=INTEGER,
        call_seconds={**NUMBER, "description": "From accepted to ended (or now)"},
        live_seconds={**NUMBER, "description": "Both sides' media flowing: the metered time"},
        units=INTEGER,
        billed_seconds={**_nullable(INTEGER), "description": "units × unit_seconds for a per_minute price"},
        total=INTEGER,
        refunded=BOOLEAN,
        fee={**INTEGER, "description": "The expert's and admins' receipts only"},
        payout={**INTEGER, "description": "The expert's and admins' receipts only"},
        platform_fee_bps={**INTEGER, "description": "The expert's and admins' receipts only"},
    ),
    "History": _obj(sessions={"type": "array", "items": _ref("Receipt")}),
    "RefundInput": _obj(required=[], reason={"type": "string", "maxLength": 500}),
    "Refund": _obj(
        session_id=STRING, created=BOOLEAN, posting_id=STRING, amount=INTEGER, fee=INTEGER, payout=INTEGER,
        currency=STRING,
    ),
    "Fee": _obj(expert_id=STRING, platform_fee_bps={"type": "integer", "minimum": 0, "maximum": 10000}, default=BOOLEAN),
    "FeeInput": _obj(platform_fee_bps=_nullable({"type": "integer", "minimum": 0, "maximum": 10000})),
    "Statement": _props({
        "expert_id": STRING,
        "from": TIMESTAMP,
        "to": TIMESTAMP,
        "lines": {
            "type": "array",
            "items": _props({
                "session_id": STRING, "client_id": STRING, "kind": {"enum": ["charge", "refund"]}, "units": INTEGER,
                "currency": STRING, "gross": INTEGER, "fee": INTEGER, "payout": INTEGER, "from": TIMESTAMP,
                "to": TIMESTAMP,
            }),
        },
        "totals": {
            "type": "object",
            "additionalProperties": _obj(sessions=INTEGER, gross=INTEGER, fee=INTEGER, payout=INTEGER),
        },
    }),
    "LedgerEntry": _obj(
        entry_id=STRING, posting_id=STRING, session_id=STRING, kind=STRING, unit_index=_nullable(INTEGER),
        account=STRING, amount=INTEGER, currency=STRING, at=TIMESTAMP, expert_id=STRING, client_id=STRING,
        memo=_nullable(STRING),
    ),
    "MeteringPage": _obj(
        events={"type": "array", "items": {"type": "object", "description": "A CloudEvents 1.0 event (docs/billing.md)"}},
        cursors={"type": "array", "items": INTEGER},
        next=INTEGER,
    ),
    "Broadcast": _obj(session_id=STRING, whip=STRING, whep=STRING),
    "DevTokenInput": _obj(
        required=["user", "role"],
        user={"type": "string", "minLength": 1, "maxLength": 128},
        role={"enum": ["client", "expert"]},
        name={"type": "string", "maxLength": 80},
    ),
    "DevToken": _obj(token=STRING, user=STRING, role={"enum": ["client", "expert"]}, name=STRING, expires_in=INTEGER),
    "Health": _obj(status={"const": "ok"}),
    "Recording": _obj(
        id=STRING, session_id=STRING, recording_id=STRING, participant_id=STRING, expert_id=STRING,
        client_id=STRING, node=STRING, size=INTEGER, duration=NUMBER, sha256=STRING, started_at=NUMBER,
        ready_at=NUMBER, recovered=BOOLEAN, deleted_at=_nullable(NUMBER), deleted_by=_nullable(STRING),
    ),
    "SessionRecordings": _obj(session_id=STRING, recordings={"type": "array", "items": _ref("Recording")}),
    "Ready": _obj(
        required=["status"], status={"enum": ["ready", "not_ready"]}, node=STRING, reason=STRING,
        # with SFU worker processes (serve --sfu-workers N > 1), or as a signalling node (--role)
        sfu_workers={"type": "array", "items": _obj(worker={"type": "integer", "minimum": 0}, up={"type": "boolean"})},
        sfu_nodes={"type": "array",
                   "items": _obj(node=STRING, up={"type": "boolean"}, draining={"type": "boolean"})},
    ),
}

# Every error a route can answer, by status: what each means across the API.
ERRORS: dict[int, str] = {
    400: "Malformed input: `invalid_json`, `json_too_deep`, `invalid_text`, `schema_violation` or a code naming the field; "
         "a request line or header over 8,190 bytes is refused by the HTTP parser itself (aiohttp), in text/plain",
    401: "No valid bearer token: `auth_required`, `token_invalid`, `token_expired`, `token_revoked`",
    403: "The token's role or user may not do this (`forbidden`), or the request's Origin is not allowed (`origin_forbidden`)",
    404: "No such resource (or not one the caller may see)",
    405: "The method is not supported on this resource",
    409: "The resource's state does not allow this",
    413: "The body is over `max_body_bytes` (or an SDP over `max_sdp_bytes`): `body_too_large`",
    415: "The body is not of the media type this operation takes",
    429: "A limit was reached (`too_many_resources`, `too_many_bookings`): see docs/security.md",
    503: "The media plane or the backend is unavailable",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def _json(schema: Schema, description: str = "OK", headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _body(schema: Schema, required: bool = True, media: str = "application/json") -> dict[str, Any]:
    return {"required": required, "content": {media: {"schema": schema}}}


def _path(name: str, schema: Schema | None = None, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string", "minLength": 1},
            "description": description}


def _query(name: str, schema: Schema, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _op(summary: str, responses: dict[str, Any], *, tag: str, auth: bool = True, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if auth:
        out["security"] = [{"bearer": []}]
    else:
        out["security"] = []
    out.update(extra)
    return out


def _int(lo: int, hi: int | None = None) -> Schema:
    out: Schema = {"type": "integer", "minimum": lo}
    if hi is not None:
        out["maximum"] = hi
    return out


AVAILABLE = "(" + "|".join(AVAILABILITY) + ")"
INSTANT = {"type": "string", "description": "RFC 3339 with an offset, e.g. 2027-03-28T09:00:00Z"}
BILLING_INSTANT = {"type": "string", "description": "An ISO 8601 date or time (UTC unless it says) or Unix seconds"}
SESSION_PATH = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
RESOURCE_PATH = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
SDP_OFFER = {"type": "string", "description": "An SDP offer (RFC 8866), at most max_sdp_bytes"}


def _paths() -> dict[str, Any]:
    expert_id = _path("id", description="The expert's user id")
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("Liveness", {"200": _json(_ref("Health"))}, tag="operations", auth=False)},
        "/readyz": {
            "get": _op(
                "Readiness: 503 while shutting down or when the backend does not answer",
                {"200": _json(_ref("Ready")), "503": _json(_ref("Ready"), "Not ready")},
                tag="operations",
                auth=False,
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics: an admin token, or the static metrics token",
                {"200": {"description": "The Prometheus text format", "content": {"text/plain": {"schema": STRING}}},
                 **_errors(401, 403)},
                tag="operations",
            )
        },
        "/api/openapi.json": {
            "get": _op("This document", {"200": _json({"type": "object"})}, tag="operations", auth=False)
        },
        "/api/ice-servers": {
            "get": _op(
                "ICE servers for RTCPeerConnection, with a fresh TURN credential for the caller",
                {"200": _json(_ref("IceServers"), headers={"Cache-Control": {"schema": {"const": "no-store"}}}),
                 **_errors(400, 401)},
                tag="media",
                parameters=[_query("ttl", _int(60), "A shorter credential lifetime, in seconds")],
            )
        },
        "/api/experts": {
            "get": _op(
                "Search experts: best rated first",
                {"200": _json(_ref("ExpertPage")), **_errors(400, 401)},
                tag="experts",
                parameters=[
                    _query("q", {"type": "string", "maxLength": 200},
                           "Words that must each start a word of the name, skills or bio (at most 8)"),
                    _query("skill", STRING),
                    _query("language", STRING, "A BCP 47 tag: pt finds pt-BR too"),
                    _query("max_price", _int(0, 10**12), "Minor units of currency; free experts always match"),
                    _query("currency", {"enum": sorted(PRICE_CURRENCIES)}),
                    _query("mode", {"enum": list(PRICE_MODES)}),
                    _query("min_rating", {"type": "string", "pattern": "^[1-5](\\.[0-9]{1,2})?$"}),
                    _query("available", {"type": "string", "pattern": f"^{AVAILABLE}(,{AVAILABLE})*$"},
                           "A comma-separated list of " + ", ".join(AVAILABILITY)),
                    _query("limit", _int(1, 100), "Default 20"),
                    _query("offset", _int(0, 10**9), "Default 0"),
                ],
            )
        },
        "/api/experts/{id}/photo": {
            "parameters": [expert_id],
            "put": _op(
                "Set the expert's photo (that expert or an admin): JPEG, PNG or WebP, at most 5 MiB and 40 Mpx; "
                "decoded in full, then remade by the server as a 320 px square JPEG",
                {"200": _json(_ref("Photo")), **_errors(400, 401, 403, 404, 413, 415)},
                tag="experts",
                requestBody={"required": True, "content": {
                    media: {"schema": {"type": "string", "format": "binary"}}
                    for media in ("image/jpeg", "image/png", "image/webp")}},
            ),
            "delete": _op("Remove the expert's photo (that expert or an admin)",
                          {"200": _json(_ref("Photo")), **_errors(401, 403, 404)}, tag="experts"),
            "get": _op(
                "The expert's photo, a JPEG (no token needed: an <img> sends none)",
                {"200": {"description": "The photo", "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                 **_errors(404)},
                tag="experts",
                auth=False,
            ),
        },
        "/api/experts/{id}": {
            "parameters": [expert_id],
            "get": _op("An expert's profile and availability", {"200": _json(_ref("Expert")), **_errors(401, 404)},
                       tag="experts"),
            "put": _op(
                "Create or replace the profile (that expert, or an admin)",
                {"200": _json(_ref("Expert"), "Replaced"), "201": _json(_ref("Expert"), "Created"),
                 **_errors(400, 401, 403, 413)},
                tag="experts",
                requestBody=_body(_ref("ProfileInput")),
            ),
        },
        "/api/experts/{id}/ratings": {
            "parameters": [expert_id],
            "get": _op(
                "An expert's ratings, newest first (without who wrote them)",
                {"200": _json(_ref("RatingPage")), **_errors(400, 401, 404)},
                tag="experts",
                parameters=[_query("limit", _int(1, 100)), _query("offset", _int(0, 10**9))],
            ),
        },
        "/api/experts/{id}/slots": {
            "parameters": [expert_id],
            "get": _op(
                "The expert's free time, as ranges and as slots of `duration` seconds",
                {"200": _json(_ref("Slots")), **_errors(400, 401, 404)},
                tag="bookings",
                parameters=[_query("from", INSTANT), _query("to", INSTANT),
                            _query("duration", _int(1), "Seconds, within the booking durations; default 1800")],
            ),
        },
        "/api/sessions/{session_id}/rating": {
            "parameters": [_path("session_id")],
            "post": _op(
                "Rate an ended session, once, as its client",
                {"201": _json(_ref("RatingReply"), "Rated"), **_errors(400, 401, 403, 404, 409, 413)},
                tag="experts",
                requestBody=_body(_ref("RatingInput")),
            ),
        },
        "/api/bookings": {
            "post": _op(
                "Book a slot (a client); the same request again answers 200 with the same booking",
                {"200": _json(_ref("Booking"), "Booked already"), "201": _json(_ref("Booking"), "Booked"),
                 **_errors(400, 401, 403, 404, 409, 413, 429)},
                tag="bookings",
                requestBody=_body(_ref("BookingInput")),
            ),
            "get": _op(
                "The caller's bookings as client or expert (an admin's: everyone's), by start",
                {"200": _json(_ref("BookingPage")), **_errors(400, 401)},
                tag="bookings",
                parameters=[_query("state", {"enum": list(STATES)}), _query("limit", _int(1, 200)),
                            _query("offset", _int(0, 10**9))],
            ),
        },
        "/api/bookings/{id}": {
            "parameters": [_path("id")],
            "get": _op("A booking (its parties or an admin)", {"200": _json(_ref("Booking")), **_errors(401, 404)},
                       tag="bookings"),
            "delete": _op(
                "Cancel a booking before its start; repeating it is harmless",
                {"200": _json(_ref("Booking")), **_errors(400, 401, 404, 409)},
                tag="bookings",
                parameters=[_query("reason", {"type": "string", "maxLength": MAX_REASON})],
            ),
        },
        "/api/tokens/revocations": {
            "post": _op(
                "Revoke a token on every node (admins); its sockets close with 4001",
                {"200": _json(_ref("Revocation"), "Revoked already"), "201": _json(_ref("Revocation"), "Revoked"),
                 **_errors(400, 401, 403, 413)},
                tag="tokens",
                requestBody=_body(_ref("RevocationInput")),
            )
        },
        "/api/metering": {
            "get": _op(
                "The metering feed from the billing store's outbox, in order (admins)",
                {"200": _json(_ref("MeteringPage")), **_errors(400, 401, 403)},
                tag="billing",
                parameters=[_query("after", _int(0, 2**62), "A cursor"), _query("limit", _int(1, 1000))],
            )
        },
        "/api/billing/sessions/{session_id}": {
            "parameters": [_path("session_id")],
            "get": _op(
                "A session's cost, the same on every node: running while it is metered, final once ended",
                {"200": _json(_ref("BillingSession")), **_errors(401, 403, 404)},
                tag="billing",
            ),
        },
        "/api/billing/sessions/{session_id}/refund": {
            "parameters": [_path("session_id")],
            "post": _op(
                "Refund an ended session (its expert or an admin); a second refund answers the first",
                {"200": _json(_ref("Refund"), "Refunded already"), "201": _json(_ref("Refund"), "Refunded"),
                 **_errors(400, 401, 403, 404, 409, 413)},
                tag="billing",
                requestBody=_body(_ref("RefundInput"), required=False),
            ),
        },
        "/api/billing/terms": {
            "get": _op(
                "The billing rule new sessions are charged by: unit length, free grace, per-session minimum",
                {"200": _json(_ref("BillingTerms")), **_errors(401)},
                tag="billing",
            )
        },
        "/api/billing/history": {
            "get": _op(
                "The caller's metered sessions, newest first, each as a receipt (an admin may name a user)",
                {"200": _json(_ref("History")), **_errors(400, 401, 403)},
                tag="billing",
                parameters=[_query("as", {"enum": ["client", "expert"]}, "Default: the token's role"),
                            _query("user", STRING, "Admins only"), _query("from", BILLING_INSTANT),
                            _query("to", BILLING_INSTANT), _query("limit", _int(1, 100))],
            )
        },
        "/api/billing/receipts/{session_id}": {
            "parameters": [_path("session_id")],
            "get": _op(
                "One session's receipt (its client, its expert or an admin)",
                {"200": _json(_ref("Receipt")), **_errors(401, 404)},
                tag="billing",
            ),
        },
        "/api/billing/statement": {
            "get": _op(
                "An expert's earnings between two times (their own, or anyone's for an admin)",
                {"200": _json(_ref("Statement")), **_errors(400, 401, 403)},
                tag="billing",
                parameters=[_query("expert", STRING), _query("from", BILLING_INSTANT), _query("to", BILLING_INSTANT)],
            )
        },
        "/api/billing/export": {
            "get": _op(
                "Every ledger entry posted between two times (admins)",
                {
                    "200": {
                        "description": "The entries",
                        "content": {
                            "application/json": {"schema": {"type": "array", "items": _ref("LedgerEntry")}},
                            "text/csv": {"schema": STRING},
                        },
                    },
                    **_errors(400, 401, 403),
                },
                tag="billing",
                parameters=[_query("from", BILLING_INSTANT), _query("to", BILLING_INSTANT),
                            _query("format", {"enum": ["json", "csv"]})],
            )
        },
        "/api/billing/experts/{expert_id}/fee": {
            "parameters": [_path("expert_id")],
            "get": _op("The platform fee of the expert's next sessions (that expert or an admin)",
                       {"200": _json(_ref("Fee")), **_errors(401, 403)}, tag="billing"),
            "put": _op(
                "Set (or with null, remove) an expert's platform fee (admins)",
                {"200": _json(_ref("Fee")), **_errors(400, 401, 403, 413)},
                tag="billing",
                requestBody=_body(_ref("FeeInput")),
            ),
        },
        "/api/sessions/{session_id}/recordings": {
            "parameters": [_path("session_id")],
            "get": _op(
                "A session's recording files, one per participant per recording (its participants or an admin)",
                {"200": _json(_ref("SessionRecordings")), **_errors(401, 403, 404)},
                tag="recordings",
            ),
        },
        "/api/recordings/{file_id}": {
            "parameters": [_path("file_id")],
            "get": _op("One recording file's index entry (the session's participants or an admin)",
                       {"200": _json(_ref("Recording")), **_errors(401, 403, 404)}, tag="recordings"),
            "delete": _op("Delete a recording file (admins), on the node that holds it",
                          {"204": {"description": "Deleted"}, **_errors(401, 403, 404, 409)},
                          tag="recordings"),
        },
        "/api/recordings/{file_id}/file": {
            "parameters": [_path("file_id")],
            "get": _op(
                "Download a recording file (the session's participants or an admin), with HTTP range requests. "
                "409 `recording_on_other_node`: another node holds it, and the message names it",
                {
                    "200": {"description": "The whole file", "content": {
                        "video/webm": {"schema": {"type": "string", "format": "binary"}},
                        "video/x-matroska": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "The range asked for", "content": {
                        "video/webm": {"schema": {"type": "string", "format": "binary"}},
                        "video/x-matroska": {"schema": {"type": "string", "format": "binary"}}}},
                    "416": {"description": "The range is outside the file"},
                    **_errors(401, 403, 404, 409),
                },
                tag="recordings",
                parameters=[{"name": "Range", "in": "header", "required": False, "schema": STRING}],
            ),
        },
        "/api/broadcasts": {
            "post": _op(
                "Open a session for a broadcast or a load test (admins)",
                {"201": _json(_ref("Broadcast"), "Opened", headers={"Location": {"schema": STRING}}),
                 **_errors(401, 403, 503)},
                tag="media",
            )
        },
        "/api/dev/token": {
            "post": _op(
                "A development token for the demo: on a loopback bind with the demo on only, for this "
                "machine's own pages (loopback Host, application/json, same-origin Origin)",
                {"200": _json(_ref("DevToken")), **_errors(400, 403, 413, 415)},
                tag="development",
                auth=False,
                requestBody=_body(_ref("DevTokenInput")),
            )
        },
    }
    for endpoint, what in (("whip", "publish into"), ("whep", "watch")):
        session = _path("session", SESSION_PATH)
        resource = _path("resource", RESOURCE_PATH)
        paths[f"/{endpoint}/{{session}}"] = {
            "parameters": [session],
            "post": _op(
                f"Offer SDP to {what} a session (RFC 9725); the answer comes back with the resource's Location",
                {
                    "201": {
                        "description": "The SDP answer",
                        "headers": {"Location": {"schema": STRING}, "ETag": {"schema": STRING},
                                    "Link": {"schema": STRING, "description": "ICE servers, rel=\"ice-server\""}},
                        "content": {"application/sdp": {"schema": STRING}},
                    },
                    **_errors(400, 401, 403, 413, 415, 429, 503),
                },
                tag="media",
                requestBody=_body(SDP_OFFER, media="application/sdp"),
            ),
            "options": _op(
                "What the endpoint takes (and, with a valid token, its ICE servers as Link headers)",
                {"204": {"description": "Allow and Accept-Post", "headers": {"Allow": {"schema": STRING},
                                                                           "Accept-Post": {"schema": STRING}}}},
                tag="media",
                auth=False,
            ),
        }
        paths[f"/{endpoint}/{{session}}/{{resource}}"] = {
            "parameters": [session, resource],
            "delete": _op("Stop the resource", {"200": {"description": "Stopped"}, **_errors(401, 404)}, tag="media"),
            "patch": _op(
                "Trickle ICE and ICE restarts are not supported: always 405 for the resource's owner",
                {**_errors(401, 404, 405)},
                tag="media",
            ),
        }
    # A path parameter the router cannot match (empty, or outside its pattern) is a 404 anywhere;
    # a request line over the HTTP parser's limit gets the parser's own text/plain 400, which only
    # an operation taking parameters can be sent.
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters":
                continue
            if "{" in path:
                op["responses"].setdefault("404", {"$ref": "#/components/responses/E404"})
            if "{" in path or op.get("parameters"):
                op["responses"].setdefault("400", {"$ref": "#/components/responses/E400"})
    return paths


@cache
def document() -> dict[str, Any]:
    responses: dict[str, dict[str, Any]] = {
        f"E{status}": {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
        for status, text in ERRORS.items()
    }
    responses["E400"]["content"]["text/plain"] = {"schema": STRING}  # the HTTP parser's own
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "expertcall REST API",
            "version": VERSION,
            "description": (
                "Experts, bookings, ratings, billing, recordings, ICE servers, broadcasts and WHIP/WHEP. Bearer "
                "tokens go in "
                "the Authorization header. Errors are {\"error\": {\"code\", \"message\", \"field\"}}; the "
                "WebSocket protocol on /ws is described in docs/protocol.md."
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "responses": responses,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def setup(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", serve)


async def serve(request: web.Request) -> web.Response:
    return web.Response(text=_text(), content_type="application/json")


@cache
def _text() -> str:
    return json.dumps(document(), indent=1)
