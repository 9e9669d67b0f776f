"""The signalling protocol on ``/ws``: message envelope, error codes, close codes and JSON Schemas.

Every message is a JSON object ``{"v": 1, "type": ..., "id": ...}``. A reply carries the request's
``id`` as ``ref``. Each client->server type has a JSON Schema (draft 2020-12) in
``schemas/client.<type>.json`` and each server->client type one in ``schemas/server.<type>.json``;
incoming messages are validated before any handler sees them. docs/protocol.md is the prose twin.
"""

from __future__ import annotations

import enum
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from .errors import CodedError

VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA_BASE = "https://expertcall.invalid/schemas/"


class ErrorCode(str, enum.Enum):
    """The ``code`` of an ``error`` message. The media plane's own codes (``MediaError.code``)
    pass through unchanged and are listed in docs/protocol.md as well."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    MESSAGE_TOO_BIG = "message_too_big"
    RATE_LIMITED = "rate_limited"
    HELLO_REQUIRED = "hello_required"
    ALREADY_AUTHENTICATED = "already_authenticated"
    AUTH_REQUIRED = "auth_required"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    RESUME_INVALID = "resume_invalid"
    FORBIDDEN = "forbidden"
    SESSION_NOT_FOUND = "session_not_found"
    NOT_PARTICIPANT = "not_participant"
    INVALID_STATE = "invalid_state"
    EXPERT_NOT_FOUND = "expert_not_found"
    EXPERT_UNAVAILABLE = "expert_unavailable"
    NO_EXPERT_AVAILABLE = "no_expert_available"
    ALREADY_IN_SESSION = "already_in_session"
    MEDIA_UNAVAILABLE = "media_unavailable"
    INTERNAL_ERROR = "internal_error"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses (RFC 6455 leaves 4000-4999 to applications)."""

    AUTH_FAILED = 4001  # missing, forged, expired or revoked token (also when that happens mid-connection)
    HELLO_TIMEOUT = 4002  # no hello/resume in time
    RATE_LIMITED = 4008  # kept flooding after rate_limited errors
    MESSAGE_TOO_BIG = 4009  # a frame over max_message_bytes
    REPLACED = 4010  # the same user connected again elsewhere
    PING_TIMEOUT = 4011  # nothing received for ping_interval + ping_timeout
    GOING_AWAY = 4012  # the server is shutting down: reconnect and resume
    TOO_SLOW = 4013  # the client let Settings.ws_outbox_limit messages pile up unread


class ProtocolError(CodedError):
    """A request the server refuses; becomes an ``error`` message and the connection carries on."""


def client_types() -> frozenset[str]:
    return frozenset(_validators("client"))


def server_types() -> frozenset[str]:
    return frozenset(_validators("server"))


def validate_client(message: dict[str, Any]) -> None:
    """Raise ``ProtocolError`` unless ``message`` is a valid client->server message."""
    validator = _validators("client").get(message.get("type"))  # type: ignore[arg-type]
    if validator is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {message.get('type')!r}")
    error = next(iter(sorted(validator.iter_errors(message), key=lambda e: e.path)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(message)"
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{where}: {_shorten(error.message)}")


def server_errors(message: dict[str, Any]) -> list[str]:
    """Why ``message`` is not a valid server->client message (empty when it is); for tests and clients."""
    validator = _validators("server").get(message.get("type"))  # type: ignore[arg-type]
    if validator is None:
        return [f"unknown server message type {message.get('type')!r}"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(message)]


def message(type_: str, ref: Any = None, **fields: Any) -> dict[str, Any]:
    """A server->client message; ``ref`` is the id of the request it answers, if any."""
    out: dict[str, Any] = {"v": VERSION, "type": type_}
    if ref is not None:
        out["ref"] = ref
    out.update(fields)
    return out


def error(code: ErrorCode | str, text: str, ref: Any = None) -> dict[str, Any]:
    return {
        "v": VERSION,
        "type": "error",
        "code": code.value if isinstance(code, ErrorCode) else code,
        "message": text,
        "ref": ref,
    }


def safe_ref(value: Any) -> str | int | None:
    """A request id fit to echo back, read from a message that may not have passed validation."""
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    return None


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def decode(text: str) -> Any:
    """``json.loads`` without NaN/Infinity, which JSON does not have; raises ``ValueError``."""
    return json.loads(text, parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@cache
def _registry() -> Registry:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


@cache
def _validators(direction: str) -> dict[str, Draft202012Validator]:
    registry = _registry()
    out: dict[str, Draft202012Validator] = {}
    for path in sorted(SCHEMA_DIR.glob(f"{direction}.*.json")):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        type_ = path.name[len(direction) + 1 : -len(".json")]
        out[type_] = Draft202012Validator(schema, registry=registry)
    return out
