"""The local channel between a worker pool and its SFU worker processes.

A stream (one end of a Unix socket pair each) carries frames: a 4-byte big-endian length, then one
msgpack map. ``t`` names the frame; the media messages inside are sfu.api's ``to_dict`` form, so
a request or an event crosses the process boundary exactly as it would cross a network.

pool -> worker: ``hello`` (MediaOptions, log level), ``request`` (an id and a request),
``shutdown``. worker -> pool: ``ready`` (or ``refused``, why, and the worker exits), ``reply`` /
``error`` (the request's id), ``event``, ``load`` (every second), ``closed`` (after ``shutdown``).

The same frames link a signalling node to an SFU node over TCP (sfu/node_link.py), after a
handshake that proves both ends hold the shared link key: node -> signalling ``challenge``,
signalling -> node ``auth``, node -> signalling ``welcome`` (or ``refused``, and the node hangs up).

Both ends are ours, so a frame that breaks these rules is a bug or a corruption: ``receive``
raises ``ChannelError`` saying what was wrong, and the receiver drops the channel (a worker exits,
the pool kills and restarts the worker). A stream that ends, even in the middle of a frame, is a
peer that went away: ``ChannelClosed``.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

from sfu.api import MediaError, Message

MAX_FRAME = 4 * 1024 * 1024  # a frame carries at most an SDP or a room's stats, far below this
_HEADER = struct.Struct(">I")

# Each frame type and its fields (beside ``t``), with the types they must have.
_NUMBER = (int, float)
FRAMES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "hello": {"options": dict, "log_level": int},
    "request": {"id": int, "message": dict},
    "shutdown": {},
    "ready": {"pid": int},
    "reply": {"id": int, "message": dict},
    "error": {"id": int, "code": str, "message": str},
    "event": {"message": dict},
    "load": {"rooms": int, "streams": int, "packets_per_second": _NUMBER, "cpu": _NUMBER},
    "closed": {},
    "challenge": {"node": str, "nonce": bytes},
    "auth": {"node": str, "nonce": bytes, "mac": bytes},
    "welcome": {"mac": bytes},
    "refused": {"reason": str},
}

# Fields added after a frame type's first version, with the value a frame without them means: SFU
# nodes and signalling nodes are upgraded one at a time, so a peer one version behind leaves them
# out. Present, they must have their type.
OPTIONAL: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "load": {"dropped": (int, 0), "draining": (bool, False)},
}


class ChannelError(Exception):
    """A frame that breaks the channel's rules."""


class ChannelClosed(Exception):
    """The other end went away."""


def _no_ext(code: int, data: bytes) -> Any:
    raise ChannelError(f"msgpack extension type {code} is not allowed")


def encode(frame: dict[str, Any]) -> bytes:
    payload = msgpack.packb(frame, use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise ChannelError(f"a {frame.get('t')!r} frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> dict[str, Any]:
    """One frame's payload, checked against FRAMES and OPTIONAL (a missing optional field gets its default)."""
    try:
        frame = msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=0)
    except ChannelError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ChannelError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(frame, dict):
        raise ChannelError(f"a frame must be a map, not {type(frame).__name__}")
    kind = frame.get("t")
    if not isinstance(kind, str) or kind not in FRAMES:
        raise ChannelError(f"unknown frame type {kind!r}")
    fields = FRAMES[kind]
    for name, expected in fields.items():
        _check(kind, name, frame.get(name), expected)
    for name, (expected, default) in OPTIONAL.get(kind, {}).items():
        if name in frame:
            _check(kind, name, frame[name], expected)
        else:
            frame[name] = default
    return frame


def _check(kind: str, name: str, value: Any, expected: type | tuple[type, ...]) -> None:
    # bool is an int to isinstance: only a field declared bool takes one
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise ChannelError(f"{kind} frame: {name} is {type(value).__name__}, not {expected}")


def message_of(frame: dict[str, Any]) -> Message:
    """The sfu.api message a request, reply or event frame carries."""
    try:
        return Message.from_dict(frame["message"])
    except MediaError as exc:
        raise ChannelError(f"{frame['t']} frame: {exc.message}") from None


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, frame: dict[str, Any]) -> None:
        if self.writer.is_closing():
            raise ChannelClosed("the channel is closed")
        self.writer.write(encode(frame))

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ChannelClosed(str(exc)) from None

    async def receive(self, max_frame: int = MAX_FRAME) -> dict[str, Any]:
        """The next frame; ``max_frame`` lowers the size allowed (a peer not yet authenticated)."""
        try:
            (length,) = _HEADER.unpack(await self.reader.readexactly(_HEADER.size))
            if not 0 < length <= max_frame:
                raise ChannelError(f"frame length {length} is outside 1..{max_frame}")
            payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed(str(exc) or "end of stream") from None
        return decode(payload)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Close at once, dropping what is not sent yet: ``close`` waits to flush it, forever when
        the peer stopped reading (a hung process on the other end of a TCP link)."""
        self.writer.transport.abort()
