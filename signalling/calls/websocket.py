"""The ``/ws`` handler: one ``Connection`` per socket, messages checked and dispatched in order.

Shape: prepare -> register -> ``async for`` -> finally unregister. Every frame passes, in order:
the size limit, the rate limit, JSON parsing, the type, the version, the type's JSON Schema, the
hello/resume handshake, the sender's role, and only then a handler. A refused message gets an
``error`` (with its ``ref``) and the connection carries on, except where docs/protocol.md names a
close code. Handlers raise ``ProtocolError``; anything else is a bug, logged, answered with
``internal_error``, and never allowed to take the connection or the server down.

Every message type a client may send is in ``ROUTES`` (with its schema file in schemas/); billing's
are answered through ``billing_desk.BillingDesk``, recording's through ``recording.RecordingControl``.
``setup(app)`` serves ``/ws``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from sfu.api import MediaError

from ..auth.tokens import AuthError, Identity, Role, bearer_token
from ..core import json_bounds
from ..core.limits import LimitReached, client_address
from ..core.protocol import (
    VERSION,
    CloseCode,
    ErrorCode,
    ProtocolError,
    decode,
    encode,
    error,
    message,
    safe_ref,
    validate_client,
)
from .billing_desk import BILLING_DESK
from .node import SIGNALLING, SignallingNode
from .presence import Availability
from .recording import RECORDING_CONTROL
from .sessions import InvalidTransition

log = logging.getLogger(__name__)

Handler = Callable[["Connection", dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    # Who may send it once authenticated; None: anyone.
    roles: frozenset[Role] | None = None


class Connection:
    def __init__(self, node: SignallingNode, ws: web.WebSocketResponse, request: web.Request, address: str = "") -> None:
        self.node = node
        self.ws = ws
        self.settings = node.settings
        self.conn_id = uuid.uuid4().hex
        # What the socket limits count it against (limits.client_address).
        self.address = address
        self.identity: Identity | None = None
        # Browsers cannot set headers on a WebSocket: the upgrade (and only it) may carry ?token=.
        # Better still, the token goes in hello; the access log never shows query strings.
        self.bearer = bearer_token(request) or request.query.get("token") or None
        # Handlers that ask another part of the application (billing) find it here.
        self.app = request.app
        self.ice_servers: Callable[[str], list[dict[str, Any]]] = request.app.get(WS_ICE_SERVERS, _no_ice_servers)
        self.finished = asyncio.Event()
        # Messages routed here before the welcome went out wait for it.
        self._ready = False
        self._early: list[dict[str, Any]] = []
        # Rate limit: a token bucket of max_message_burst tokens refilled at max_messages_per_second.
        self._tokens = float(self.settings.max_message_burst)
        self._refilled_at = time.monotonic()
        self._dropped = 0  # messages dropped since the last one admitted
        self._touched = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._expiry: asyncio.Future[None] | None = None
        # Outgoing messages are queued and written by one task, in order.
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._writer = asyncio.ensure_future(self._write())
        self._slow = False

    @property
    def user_id(self) -> str:
        assert self.identity is not None
        return self.identity.user_id

    # --- sending ------------------------------------------------------------------------------

    async def send(self, msg: dict[str, Any]) -> bool:
        """Queue one message for this socket (a reply, or a message routed here); False when it
        is closing. A client that lets ``ws_outbox_limit`` messages pile up unread, whatever
        they are, is closed as too slow: it must not stall the handlers (and locks) of the users
        sending to it, nor grow the server's memory. What it did not read is stashed, in order,
        for its resume."""
        if not self._ready:
            self._early.append(msg)
            return True
        if self.ws.closed or self._slow:
            return False
        if self._outbox.qsize() >= self.settings.ws_outbox_limit:
            await self._too_slow()
            if self.identity is not None:
                await self.node.backend.stash(self.user_id, msg)
            return True
        self._outbox.put_nowait(msg)
        return True

    async def deliver(self, msg: dict[str, Any]) -> bool:
        """``send`` for messages routed here by the backend; False tells the backend to stash it."""
        if self._ready and not self._slow and self._outbox.qsize() >= self.settings.ws_outbox_limit:
            await self._too_slow()
            return False
        return await self.send(msg)

    async def _too_slow(self) -> None:
        self._slow = True
        unread = []
        while not self._outbox.empty():
            unread.append(self._outbox.get_nowait())
            self._outbox.task_done()
        if self.identity is not None:
            for queued in unread:
                await self.node.backend.stash(self.user_id, queued)
        self._expiry = asyncio.ensure_future(self.close(CloseCode.TOO_SLOW, "messages are not being read"))

    async def _write(self) -> None:
        while True:
            msg = await self._outbox.get()
            try:
                if not self.ws.closed:
                    await self.ws.send_str(encode(msg))
                    if msg.get("type") == "error":
                        self.node.metrics.ws_errors.labels(msg["code"]).inc()
            except (ConnectionError, RuntimeError):
                pass
            finally:
                self._outbox.task_done()

    async def reply_error(self, code: ErrorCode | str, text: str, ref: Any) -> None:
        await self.send(error(code, text, ref))

    async def close(self, code: CloseCode, reason: str) -> None:
        if self.ws.closed:
            return
        if not self._slow:
            # What was said before the close (an error explaining it) goes out first.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 2.0)
        await self.ws.close(code=int(code), message=reason.encode()[:120])

    async def fail(self, code: ErrorCode | str, text: str, ref: Any, close: CloseCode) -> None:
        """An error the connection does not survive."""
        self._ready = True
        await self.reply_error(code, text, ref)
        await self.close(close, text)

    def _close_later(self, delay: float, code: ErrorCode, text: str, close: CloseCode) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = asyncio.get_running_loop().call_later(max(0.0, delay), self._expire, code, text, close)

    def revoke(self) -> None:
        """The token this socket authenticated with was revoked: close it as a refused token."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._expire(ErrorCode.TOKEN_REVOKED, "the token has been revoked", CloseCode.AUTH_FAILED)

    def _expire(self, code: ErrorCode, text: str, close: CloseCode) -> None:
        # Held on the connection so the task is not garbage-collected mid-close.
        self._expiry = asyncio.ensure_future(self.fail(code, text, None, close))

    # --- receiving ----------------------------------------------------------------------------

    async def run(self) -> None:
        self._close_later(self.settings.ping_timeout, ErrorCode.HELLO_REQUIRED, "no hello in time", CloseCode.HELLO_TIMEOUT)
        self._ready = True
        try:
            async for frame in self.ws:
                if frame.type is WSMsgType.TEXT:
                    await self.receive(frame.data, len(frame.data.encode()))
                elif frame.type is WSMsgType.BINARY:
                    if await self._admit(len(frame.data)):
                        await self.reply_error(ErrorCode.INVALID_MESSAGE, "binary frames are not part of the protocol", None)
        except asyncio.TimeoutError:
            await self.close(CloseCode.PING_TIMEOUT, "nothing received within ping_interval + ping_timeout")

    async def _admit(self, size: int) -> bool:
        """The size and rate limits; False when the frame is dropped."""
        if size > self.settings.max_message_bytes:
            await self.fail(
                ErrorCode.MESSAGE_TOO_BIG,
                f"messages are limited to {self.settings.max_message_bytes} bytes",
                None,
                CloseCode.MESSAGE_TOO_BIG,
            )
            return False
        now = time.monotonic()
        rate = self.settings.max_messages_per_second
        self._tokens = min(float(self.settings.max_message_burst), self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._dropped = 0
            return True
        self._dropped += 1
        if self._dropped == 1:
            await self.reply_error(ErrorCode.RATE_LIMITED, f"more than {rate} messages a second: dropped", None)
        elif self._dropped > rate:
            # Still flooding after a second's worth of refused messages.
            await self.close(CloseCode.RATE_LIMITED, "rate limit exceeded")
        return False

    async def receive(self, text: str, size: int) -> None:
        if not await self._admit(size):
            return
        try:
            msg = decode(text)
        except (ValueError, RecursionError) as exc:
            await self.reply_error(ErrorCode.INVALID_JSON, f"not JSON: {str(exc)[:120]}", None)
            return
        if not isinstance(msg, dict):
            await self.reply_error(ErrorCode.INVALID_MESSAGE, "a message is a JSON object", None)
            return
        ref = safe_ref(msg.get("id"))
        deep = json_bounds.inspect(msg, text=False)
        if deep is not None:
            await self.reply_error(ErrorCode.INVALID_MESSAGE, deep.message, ref)
            return
        type_ = msg.get("type")
        route = ROUTES.get(type_) if isinstance(type_, str) else None
        if route is None or not isinstance(type_, str):
            await self.reply_error(ErrorCode.UNKNOWN_TYPE, f"unknown message type {str(type_)[:64]!r}", ref)
            return
        self.node.metrics.ws_messages.labels(type_).inc()
        if msg.get("v") != VERSION:
            await self.reply_error(ErrorCode.UNSUPPORTED_VERSION, f"this server speaks protocol version {VERSION}", ref)
            return
        try:
            validate_client(msg)
            if json_bounds.may_hold_surrogates(text):
                # A bearer token is the auth layer's to refuse (token_invalid, close 4001).
                bad = json_bounds.inspect(msg, skip=_TOKEN if type_ in ("hello", "resume") else frozenset())
                if bad is not None:
                    where = "/".join(map(str, bad.path)) or "(message)"
                    raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{where}: {bad.message}")
            self._authorise(type_, route)
            await self._keep_location()
            await self.node.run_to_completion(route.handler(self, msg))
        except ProtocolError as exc:
            await self.reply_error(exc.code, exc.message, ref)
        except InvalidTransition as exc:
            await self.reply_error(ErrorCode.INVALID_STATE, str(exc), ref)
        except MediaError as exc:
            await self.reply_error(exc.code, exc.message, ref)
        except Exception:
            log.exception("handler for %s failed", type_)
            await self.reply_error(ErrorCode.INTERNAL_ERROR, "the server failed to handle this message", ref)

    async def _keep_location(self) -> None:
        """Refresh the user's location (it expires so that a crashed node's users do not linger),
        at most once per ping interval, whatever the client sends."""
        now = time.monotonic()
        if self.identity is not None and now - self._touched >= self.settings.ping_interval:
            self._touched = now
            await self.node.backend.touch(self.identity.user_id, self.conn_id)

    def _authorise(self, type_: str, route: Route) -> None:
        handshake = type_ in ("hello", "resume")
        if self.identity is None:
            if not handshake:
                raise ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello (or resume) first")
            return
        if handshake:
            raise ProtocolError(ErrorCode.ALREADY_AUTHENTICATED, "this connection has already said hello")
        if route.roles is not None and self.identity.role not in route.roles:
            allowed = " or ".join(sorted(r.value for r in route.roles))
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{type_} is for {allowed}s only")

    # --- handshake ----------------------------------------------------------------------------

    async def authenticate(self, msg: dict[str, Any]) -> Identity | None:
        try:
            return self.node.tokens.verify(msg.get("token") or self.bearer)
        except AuthError as exc:
            await self.fail(exc.code, exc.message, msg.get("id"), CloseCode.AUTH_FAILED)
            return None

    async def start(self, identity: Identity, ref: Any, resumed: bool) -> None:
        self._ready = False
        if self.identity is None:
            self.node.sockets.authenticated(self.address)
        self.identity = identity
        if self._deadline is not None:
            self._deadline.cancel()
        try:
            welcome, stashed, presence_changed = await self._welcome(identity, ref, resumed)
        except BaseException:
            self._ready = True  # the error reply must go out, not wait for a welcome
            raise
        early, self._early = self._early, []
        self._ready = True
        # Missed messages are replayed only on a resume; a fresh hello starts from the welcome.
        # The replay is bounded by the stash (MAX_STASHED) and never counts as a slow reader.
        if not self.ws.closed:
            for msg in [welcome] + (stashed if resumed else []) + early:
                self._outbox.put_nowait(msg)
        self._close_later(
            identity.expires_at - time.time(), ErrorCode.TOKEN_EXPIRED, "the token has expired", CloseCode.AUTH_FAILED
        )
        if presence_changed:
            await self.node.queues.presence_changed(identity.user_id)
        if not resumed:
            await self.node.queues.brief(identity.user_id)

    async def _welcome(self, identity: Identity, ref: Any, resumed: bool) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
        """Take over the user's routing and build their welcome; messages routed here meanwhile
        wait in ``_early``."""
        node = self.node
        await node.connected(identity, self)
        stashed = await node.backend.drain(identity.user_id)
        presence_changed = False
        availability = None
        if identity.role is Role.EXPERT:
            if await node.presence.chosen(identity.user_id) is None:
                await node.presence.choose(identity.user_id, Availability.ONLINE)
                presence_changed = True
            availability = (await node.presence.availability(identity.user_id)).value
        session = await node.queues.current(identity.user_id)
        welcome = message(
            "welcome",
            ref,
            protocol=VERSION,
            user={"id": identity.user_id, "role": identity.role.value, "name": identity.name},
            resumed=resumed,
            resume_token=node.resume_tokens.issue(identity.user_id, self.conn_id),
            ping_interval=self.settings.ping_interval,
            ping_timeout=self.settings.ping_timeout,
            resume_grace=self.settings.resume_grace,
            max_message_bytes=self.settings.max_message_bytes,
            max_messages_per_second=self.settings.max_messages_per_second,
            max_message_burst=self.settings.max_message_burst,
            ice_servers=self.ice_servers(identity.user_id),
            billing_unit_seconds=self.settings.billing_unit_seconds,
            session=session.public() if session else None,
            presence=availability,
        )
        return welcome, stashed, presence_changed

    async def finish(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._writer.cancel()
        unsent = []
        while not self._outbox.empty():
            unsent.append(self._outbox.get_nowait())
        if self.identity is not None:
            try:
                if await self.node.disconnected(self.identity, self.conn_id):
                    # Kept for a resume, like everything sent while the user is away.
                    for msg in unsent:
                        await self.node.backend.stash(self.identity.user_id, msg)
            except Exception:
                # Shutdown may have closed the backend already; the location then simply expires.
                log.warning("could not unregister %s on node %s", self.identity.user_id, self.node.node_id)
        self.finished.set()


# --- handlers -------------------------------------------------------------------------------


async def on_hello(conn: Connection, msg: dict[str, Any]) -> None:
    identity = await conn.authenticate(msg)
    if identity is not None:
        await conn.node.backend.take_dropped(identity.user_id)
        await conn.start(identity, msg.get("id"), resumed=False)


async def on_resume(conn: Connection, msg: dict[str, Any]) -> None:
    identity = await conn.authenticate(msg)
    if identity is None:
        return
    node = conn.node
    claim = node.resume_tokens.verify(msg["resume_token"])
    if claim is None or claim.user_id != identity.user_id:
        raise ProtocolError(ErrorCode.RESUME_INVALID, "the resume token is not valid for you: send hello instead")
    dropped = await node.backend.take_dropped(identity.user_id)
    location = await node.backend.locate(identity.user_id)
    # In time if the old socket dropped within the grace, or has not been noticed dropping yet.
    resumed = dropped == claim.conn_id or (location is not None and location.conn_id == claim.conn_id)
    await conn.start(identity, msg.get("id"), resumed=resumed)


async def on_ping(conn: Connection, msg: dict[str, Any]) -> None:
    await conn.send(message("pong", msg.get("id"), time=time.time()))


async def on_presence_set(conn: Connection, msg: dict[str, Any]) -> None:
    node = conn.node
    await node.presence.choose(conn.user_id, Availability(msg["status"]))
    await node.queues.presence_changed(conn.user_id)
    status = await node.presence.availability(conn.user_id)
    await conn.send(message("presence", msg.get("id"), user_id=conn.user_id, status=status.value))


async def on_help_request(conn: Connection, msg: dict[str, Any]) -> None:
    assert conn.identity is not None
    await conn.node.queues.request(
        conn.user_id,
        conn.identity.name,
        expert_id=msg.get("expert_id"),
        skill=msg.get("skill"),
        note=msg.get("note", ""),
        origin=(conn.user_id, msg.get("id")),
        minor=conn.identity.minor,
    )


async def on_help_accept(conn: Connection, msg: dict[str, Any]) -> None:
    await conn.node.queues.accept(conn.user_id, msg["session_id"], origin=(conn.user_id, msg.get("id")))


async def on_help_decline(conn: Connection, msg: dict[str, Any]) -> None:
    await conn.node.queues.decline(
        conn.user_id, msg["session_id"], msg.get("message", ""), origin=(conn.user_id, msg.get("id"))
    )


async def on_help_cancel(conn: Connection, msg: dict[str, Any]) -> None:
    await conn.node.queues.cancel(conn.user_id, msg["session_id"], origin=(conn.user_id, msg.get("id")))


async def on_session_end(conn: Connection, msg: dict[str, Any]) -> None:
    await conn.node.queues.hang_up(conn.user_id, msg["session_id"], origin=(conn.user_id, msg.get("id")))


async def on_media(conn: Connection, msg: dict[str, Any]) -> None:
    await conn.node.media.handle(conn.user_id, msg)


async def on_billing_budget(conn: Connection, msg: dict[str, Any]) -> None:
    session = await conn.node.queues.visible(conn.user_id, msg["session_id"])
    if session.client_id != conn.user_id:
        raise ProtocolError(ErrorCode.FORBIDDEN, "only the session's client sets its budget")
    reply = await conn.app[BILLING_DESK].set_budget(session, msg["budget"])
    await conn.send({**reply, "ref": msg.get("id")} if msg.get("id") is not None else reply)


async def on_billing_cost_get(conn: Connection, msg: dict[str, Any]) -> None:
    session = await conn.node.queues.visible(conn.user_id, msg["session_id"])
    reply = await conn.app[BILLING_DESK].cost(session)
    await conn.send({**reply, "ref": msg.get("id")} if msg.get("id") is not None else reply)


async def on_recording(conn: Connection, msg: dict[str, Any]) -> None:
    assert conn.identity is not None
    await conn.app[RECORDING_CONTROL].handle(conn.user_id, conn.identity.minor, msg)


# hello/resume leave their token to TokenIssuer (json_bounds.inspect's skip).
_TOKEN: frozenset[tuple[str | int, ...]] = frozenset({("token",)})

EXPERT = frozenset({Role.EXPERT})
CLIENT = frozenset({Role.CLIENT})
PARTICIPANT = frozenset({Role.EXPERT, Role.CLIENT})

ROUTES: dict[str, Route] = {
    "hello": Route(on_hello),
    "resume": Route(on_resume),
    "ping": Route(on_ping),
    "presence.set": Route(on_presence_set, EXPERT),
    "help.request": Route(on_help_request, CLIENT),
    "help.accept": Route(on_help_accept, EXPERT),
    "help.decline": Route(on_help_decline, EXPERT),
    "help.cancel": Route(on_help_cancel, PARTICIPANT),
    "session.end": Route(on_session_end, PARTICIPANT),
    "media.offer": Route(on_media, PARTICIPANT),
    "media.answer": Route(on_media, PARTICIPANT),
    "media.ice": Route(on_media, PARTICIPANT),
    "billing.budget": Route(on_billing_budget, CLIENT),
    "billing.cost.get": Route(on_billing_cost_get, PARTICIPANT),
    "recording.request": Route(on_recording, PARTICIPANT),
    "recording.consent": Route(on_recording, PARTICIPANT),
    "recording.stop": Route(on_recording, PARTICIPANT),
}


def _no_ice_servers(user_id: str) -> list[dict[str, Any]]:
    return []


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    node = request.app[SIGNALLING]
    settings = node.settings
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_message_bytes * 4,
        receive_timeout=settings.ping_interval + settings.ping_timeout,
    )
    # Counted before the upgrade, so that a refusal costs one HTTP answer (limits.py).
    address = client_address(request, node.trusted_proxies)
    try:
        node.sockets.admit(address)
    except LimitReached as exc:
        raise exc.as_http() from None
    conn = None
    try:
        await ws.prepare(request)
        conn = Connection(node, ws, request, address)
        node.connections[conn.conn_id] = conn
        node.metrics.ws_connections.inc()
        if node.closing:
            await conn.close(CloseCode.GOING_AWAY, "server shutting down")
        else:
            await conn.run()
    finally:
        node.sockets.release(address, authenticated=conn is not None and conn.identity is not None)
        if conn is not None:
            node.connections.pop(conn.conn_id, None)
            node.metrics.ws_connections.dec()
            await conn.finish()
    return ws


def setup(app: web.Application) -> None:
    """Serve ``/ws`` (the node itself opens with ``node.setup``)."""
    app.router.add_get("/ws", websocket_handler)


# The ICE servers a socket's welcome lists for a user id (the TURN module provides it; default none).
WS_ICE_SERVERS: web.AppKey[Callable[[str], list[dict[str, Any]]]] = web.AppKey("ws_ice_servers")
