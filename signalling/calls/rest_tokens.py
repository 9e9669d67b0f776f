"""REST for bearer tokens: ``POST /api/tokens/revocations`` (admins), what ``expertcall token revoke`` calls.

The body names the token itself (``{"token": "eyJ…"}``, whose signature is checked and whose
expiry bounds the entry) or only its id (``{"jti": "…"}``, kept for the longest lifetime a token
may have). The revocation reaches every node at once: the token is refused from then on and the
sockets it opened close with 4001 ``token_revoked``.
"""

from __future__ import annotations

import time

import jsonschema
from aiohttp import web

from ..auth.tokens import TOKENS, AuthError, Role, authenticate
from ..core import errors as rest_errors
from ..core.errors import http_error, read_json
from .node import SIGNALLING

REVOCATION_SCHEMA = jsonschema.Draft202012Validator(
    {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            "token": {"type": "string", "minLength": 1, "maxLength": 4096},
            "jti": {"type": "string", "minLength": 1, "maxLength": 64},
        },
    }
)


def setup(app: web.Application) -> None:
    rest_errors.install(app)
    app.router.add_post("/api/tokens/revocations", revoke)


async def revoke(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS], Role.ADMIN)
    body = await read_json(request, REVOCATION_SCHEMA)
    issuer = request.app[TOKENS]
    if "token" in body:
        try:
            claims = issuer.claims(body["token"], verify_exp=False)
        except AuthError as exc:
            raise http_error(400, exc.code, exc.message, "token") from None
        jti, expires_at = str(claims["jti"]), int(claims["exp"])  # type: ignore[call-overload]
    else:
        jti, expires_at = body["jti"], int(time.time()) + issuer.max_ttl
    created = await request.app[SIGNALLING].revoke(jti, expires_at, by=f"admin:{identity.user_id}")
    return web.json_response({"jti": jti, "expires_at": expires_at}, status=201 if created else 200)
