"""Coded errors: one hierarchy, and the one JSON body ``{"error": {"code", "message", "field"}}``.

Every refusal a client can see is a ``CodedError``: a stable ``code`` and a ``message``. Its kinds:
``ApiError`` (REST, with an HTTP status and the offending ``field``; ``InvalidInput`` for a 400),
``protocol.ProtocolError`` (an ``error`` message on ``/ws``), ``auth.tokens.AuthError``,
``limits.LimitReached``, and billing's ``MoneyError``, ``PricingError`` and ``BillingError``.
Domain modules raise them; the ``api_errors`` middleware turns an ``ApiError`` into its HTTP
response, and every HTTP error body is built by ``error_body``. ``field`` names the request
parameter or the JSON path (``working_hours.weekly.mon[0]``) that was wrong, or is null.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any, Iterable, Mapping, overload

import jsonschema
from aiohttp import web
from aiohttp.typedefs import Handler

from . import json_bounds

_DIGITS = re.compile(r"[0-9]{1,19}")  # up to 2**63: the range check does the rest


class CodedError(Exception):
    """A refusal with a stable ``code`` (an enum's value, or a string) and a ``message``."""

    def __init__(self, code: str | enum.Enum, message: str) -> None:
        super().__init__(message)
        self.code: str = code.value if isinstance(code, enum.Enum) else code
        self.message = message


def error_body(code: str, message: str, field: str | None = None) -> str:
    """The JSON body of every HTTP error."""
    return json.dumps({"error": {"code": code, "message": message, "field": field}})


class ApiError(CodedError):
    """A refusal with an HTTP status, a stable ``code`` and an optional offending ``field``."""

    status = 400

    def __init__(self, code: str, message: str, field: str | None = None, status: int | None = None) -> None:
        super().__init__(code, message)
        self.field = field
        if status is not None:
            self.status = status

    def as_http(self) -> web.HTTPException:
        return http_error(self.status, self.code, self.message, self.field)


class InvalidInput(ApiError):
    status = 400


_BY_STATUS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    401: web.HTTPUnauthorized,
    409: web.HTTPConflict,
    415: web.HTTPUnsupportedMediaType,
    429: web.HTTPTooManyRequests,
    503: web.HTTPServiceUnavailable,
}


# Paths whose every error is coded JSON, the router's own 404 and 405 included.
API_PREFIXES = ("/api/", "/whip/", "/whep/")


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn an ``ApiError`` raised by any handler into its coded JSON response, and the router's
    plain-text "404: Not Found" / "405: Method Not Allowed" under the API into the same shape."""
    try:
        return await handler(request)
    except ApiError as exc:
        raise exc.as_http() from None
    except web.HTTPNotFound as exc:
        if exc.content_type != "text/plain" or not request.path.startswith(API_PREFIXES):
            raise
        raise http_error(404, "not_found", "no such resource") from None
    except web.HTTPMethodNotAllowed as exc:
        if exc.content_type != "text/plain" or not request.path.startswith(API_PREFIXES):
            raise
        body = error_body("method_not_allowed", f"{exc.method} is not allowed here")
        raise web.HTTPMethodNotAllowed(exc.method, exc.allowed_methods, text=body, content_type="application/json") from None


def install(app: web.Application) -> None:
    if api_errors not in app.middlewares:
        app.middlewares.append(api_errors)


def http_error(status: int, code: str, message: str, field: str | None = None) -> web.HTTPException:
    body = error_body(code, message, field)
    if status == 413:  # its constructor wants the sizes, for a text we replace
        return web.HTTPRequestEntityTooLarge(0, 0, text=body, content_type="application/json")
    return _BY_STATUS[status](text=body, content_type="application/json")


async def read_json_value(request: web.Request) -> Any:
    """The request body as JSON, or a coded 400: ``invalid_json`` (not UTF-8, not JSON, NaN),
    ``json_too_deep`` (nested deeper than json_bounds.MAX_DEPTH) or ``invalid_text`` (a string
    that is not Unicode text, such as a lone surrogate, with its ``field``)."""
    try:
        body = json.loads((await request.read()).decode("utf-8"), parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise http_error(400, "invalid_json", "the request body is not valid JSON in UTF-8") from None
    except RecursionError:
        raise http_error(400, "json_too_deep", f"the request body is nested deeper than {json_bounds.MAX_DEPTH} levels") from None
    problem = json_bounds.inspect(body)
    if problem is not None:
        code = "json_too_deep" if problem.code == "too_deep" else problem.code
        raise http_error(400, code, problem.message, json_path(problem.path) or None)
    return body


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json(request: web.Request, validator: jsonschema.protocols.Validator) -> dict[str, Any]:
    """The request body as a JSON object valid against ``validator``, or a coded 400."""
    body = await read_json_value(request)
    errors = sorted(validator.iter_errors(body), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        first = errors[0]
        raise http_error(400, "schema_violation", first.message, json_path(first.absolute_path) or None)
    return body  # type: ignore[no-any-return]


@overload
def int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int, code: str | None = None) -> int: ...
@overload
def int_param(
    params: Mapping[str, str], name: str, default: None, lo: int, hi: int, code: str | None = None
) -> int | None: ...
def int_param(
    params: Mapping[str, str], name: str, default: int | None, lo: int, hi: int, code: str | None = None
) -> int | None:
    """A whole-number query parameter within [lo, hi], or a coded 400 (``invalid_<name>`` unless
    the API documents another ``code``)."""
    raw = params.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() takes "²", which int() refuses, and int() takes "٣".
    if not _DIGITS.fullmatch(raw) or not (lo <= int(raw) <= hi):
        raise InvalidInput(code or f"invalid_{name}", f"{name} is a whole number from {lo} to {hi}", name)
    return int(raw)


def json_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
