"""One signalling node: the backend, the session machine, queues, presence and the media bridge,
wired together and opened/closed with the application (``setup(app)``).

Everything a node does is location-transparent: state lives in the backend and every message to
a user goes through ``Backend.deliver``, so a client on node A and an expert on node B pair as if
they shared a process. Only a session's media stays on one node (the one that accepted it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from aiohttp import web

from sfu.api import MediaPlane

from ..auth.revocation import RevocationStore
from ..auth.tokens import TOKENS, Identity, TokenIssuer
from ..backends.base import Backend, Location
from ..backends.memory import MemoryBackend
from ..core import keys
from ..core.database import Database
from ..core.limits import SocketCounts, parse_networks
from ..core.metrics import Metrics
from ..core.protocol import CloseCode, message
from ..core.settings import Settings
from ..core.timers import Timers
from .booking_events import BookingNotifier
from .directory import ExpertDirectory
from .media_bridge import MediaBridge
from .presence import Presence
from .queueing import ExpertQueues, ring_message
from .resume import ResumeTokens
from .session_storage import open_session_store
from .sessions import IN_PROGRESS, SessionManager, SessionStore, State, Transition

log = logging.getLogger(__name__)
T = TypeVar("T")


def _report_orphan(task: asyncio.Future[Any]) -> None:
    """A request whose socket went away while it ran: its outcome has nobody to reach."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("a request failed after its socket went away: %r", task.exception())


class SignallingNode:
    def __init__(
        self,
        settings: Settings,
        tokens: TokenIssuer,
        backend: Backend,
        db: Database,
        session_store: SessionStore,
        directory: ExpertDirectory,
        metrics: Metrics,
        plane: MediaPlane | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.node_id = backend.node_id
        self.tokens = tokens
        self.resume_tokens = ResumeTokens(settings.resolve_secret())
        self.backend = backend
        self.metrics = metrics
        self.timers = Timers()
        self.revoked = RevocationStore(db)
        self.sockets = SocketCounts(
            settings.ws_max_connections,
            settings.ws_max_connections_per_address,
            settings.ws_max_unauthenticated_per_address,
        )
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        self.sessions = SessionManager(backend, session_store, clock)
        self.presence = Presence(backend, self.sessions)
        self.queues = ExpertQueues(self.node_id, settings, backend, self.sessions, self.presence, directory, self.timers, clock)
        self.media = MediaBridge(self.node_id, backend, self.queues, plane)
        # The scheduler's BookingListener: reminders over the socket, sessions opened on time.
        self.bookings = BookingNotifier(backend, self.queues)
        # The room opens before participants hear "accepted", so their first offer finds it.
        self.sessions.add_listener(self.media.on_transition)
        self.sessions.add_listener(self._notify)
        self.sessions.add_listener(self._count)
        self.sessions.add_listener(self.queues.on_transition)
        # Open sockets on this node by connection id; the websocket module adds and removes them.
        self.connections: dict[str, Any] = {}
        self._operations: set[asyncio.Future[Any]] = set()
        # Envelopes other modules handle, by op (billing: transitions for the sessions it meters).
        self.envelope_handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {}
        self.closing = False

    async def start(self) -> None:
        self.media.start()
        await self.backend.start(self._on_envelope)
        await self._load_revocations()
        sessions = await self.queues.recover()
        for session in sessions:
            if session.state in IN_PROGRESS and (
                session.media_node == self.node_id or not await self.backend.node_alive(session.media_node)
            ):
                await self.media.adopt(session.id)
        for session in sessions:
            self.metrics.sessions.labels(session.state.value).inc()
        # Whoever does not come back within the grace is gone, as if their socket had just dropped.
        for user in sorted({u for s in sessions for u in s.participants}):
            if await self.backend.locate(user) is None:
                self.timers.start(("gone", user), self.settings.resume_grace, self._gone_check, user)
        if sessions:
            log.info("node %s recovered %d unfinished sessions", self.node_id, len(sessions))

    async def _load_revocations(self) -> None:
        """Share what this node's SQLite remembers (the memory backend forgets on restart), then
        refuse every token revoked anywhere."""
        shared = await self.backend.revoked_tokens()
        for jti, until in self.revoked.active().items():
            if jti not in shared:
                await self.backend.revoke_token(jti, until)
                shared[jti] = until
        for jti, until in shared.items():
            self.tokens.revocations.add(jti, until)

    async def revoke(self, jti: str, expires_at: int, by: str) -> bool:
        """Revoke a token on every node (its sockets close with 4001); True when it is new."""
        new = self.revoked.add(jti, expires_at, by)
        await self.backend.revoke_token(jti, expires_at)
        return new

    def _on_revoked(self, jti: str, expires_at: int) -> None:
        self.tokens.revocations.add(jti, expires_at)
        for conn in list(self.connections.values()):
            if conn.identity is not None and conn.identity.token_id == jti:
                conn.revoke()

    async def run_to_completion(self, operation: Awaitable[T]) -> T:
        """Run a client's request so that its socket going away (the client left, or this node
        is shutting down) cannot cancel it half done: an accept that told the expert "accepted"
        but had not yet recorded the session as theirs left them with no session to resume.
        The caller may be cancelled; the operation goes on, and ``shutdown`` waits for it."""
        task = asyncio.ensure_future(operation)
        self._operations.add(task)
        task.add_done_callback(self._operations.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_report_orphan)
            raise

    async def shutdown(self) -> None:
        """Close every socket with GOING_AWAY (clients resume elsewhere or after the restart)."""
        self.closing = True
        connections = list(self.connections.values())
        await asyncio.gather(
            *(c.close(CloseCode.GOING_AWAY, "server shutting down") for c in connections), return_exceptions=True
        )
        if connections:
            # Let the handlers unregister while the backend is still open.
            waiters = [asyncio.ensure_future(c.finished.wait()) for c in connections]
            await asyncio.wait(waiters, timeout=5)
            for waiter in waiters:
                waiter.cancel()
        if self._operations:
            await asyncio.wait(set(self._operations), timeout=5)

    async def close(self) -> None:
        self.closing = True
        await self.timers.close()
        await self.media.close()
        await self.backend.close()

    # --- connections --------------------------------------------------------------------------

    async def connected(self, identity: Identity, conn: Any) -> None:
        """A socket authenticated: route the user's messages to it, replacing any older socket."""
        self.timers.cancel(("gone", identity.user_id))
        previous = await self.backend.claim(identity.user_id, conn.conn_id, conn.deliver)
        if previous is not None and previous.conn_id != conn.conn_id:
            await self._kick(previous)

    async def disconnected(self, identity: Identity, conn_id: str) -> bool:
        """A socket closed: if it was still the user's, wait ``resume_grace`` before giving up on
        them (and return True)."""
        if not await self.backend.release(identity.user_id, conn_id):
            return False
        await self.backend.note_dropped(identity.user_id, conn_id)
        if not self.closing:
            self.timers.start(("gone", identity.user_id), self.settings.resume_grace, self._gone_check, identity.user_id)
        return True

    async def _kick(self, location: Location) -> None:
        if location.node_id == self.node_id:
            old = self.connections.get(location.conn_id)
            if old is not None:
                await old.close(CloseCode.REPLACED, "connected again elsewhere")
        else:
            await self.backend.send_to_node(location.node_id, {"op": "kick", "conn_id": location.conn_id})

    async def _gone_check(self, user_id: str) -> None:
        if await self.backend.locate(user_id) is None:
            await self.queues.user_gone(user_id)

    async def _on_envelope(self, envelope: dict[str, Any]) -> None:
        op = envelope.get("op")
        if op == "kick":
            await self._kick(Location(self.node_id, envelope["conn_id"]))
        elif op == "revoked":
            self._on_revoked(str(envelope["jti"]), int(envelope["expires_at"]))
        elif op in ("media", "close_room"):
            await self.media.on_envelope(envelope)
        elif isinstance(op, str) and op in self.envelope_handlers:
            await self.envelope_handlers[op](envelope)
        else:
            log.warning("node %s ignored an envelope with op %r", self.node_id, op)

    # --- for the experts module (its injected callables) --------------------------------------

    async def availability(self, expert_id: str) -> str:
        """online / busy / away / offline, as a plain string."""
        return (await self.presence.availability(expert_id)).value

    async def waiting(self, expert_id: str) -> int:
        """How many clients wait in the expert's queue."""
        return len(await self.backend.queue(expert_id))

    async def session_names(self, session_id: str) -> tuple[str, str] | None:
        """(expert_name, client_name) of a session, for receipts; None when there is none."""
        session = await self.sessions.get(session_id)
        return None if session is None else (session.expert_name, session.client_name)

    async def session_parties(self, session_id: str) -> tuple[str, str, str] | None:
        """(expert_id, client_id, state) of a session, for ratings; None when there is none."""
        session = await self.sessions.get(session_id)
        return None if session is None else (session.expert_id, session.client_id, session.state.value)

    # --- transitions --------------------------------------------------------------------------

    async def _notify(self, transition: Transition) -> None:
        for user_id, msg in session_messages(transition):
            await self.backend.deliver(user_id, msg)

    def _count(self, transition: Transition) -> None:
        if transition.previous is not None:
            self.metrics.sessions.labels(transition.previous.value).dec()
        if transition.state is not State.ENDED:
            self.metrics.sessions.labels(transition.state.value).inc()


# The node of this application, set while it runs.
SIGNALLING = web.AppKey("signalling", SignallingNode)


def session_messages(transition: Transition) -> list[tuple[str, dict[str, Any]]]:
    """Who hears of a transition, and how.

    The client hears of every one. The expert hears once rung (a ``ring``) and of everything after,
    but not of requests waiting in their queue (``queue.update`` shows those), unless they caused
    the transition themselves. The participant whose request caused it gets its ``ref``.
    """
    session = transition.session
    public = session.public()
    previous = transition.previous.value if transition.previous else None

    def state_message(user_id: str) -> dict[str, Any]:
        ref = transition.origin_ref if user_id == transition.origin_user else None
        return message("session.state", ref, session=public, previous=previous)

    out = [(session.client_id, state_message(session.client_id))]
    if transition.state is State.RINGING:
        out.append((session.expert_id, ring_message(session, transition.at)))
    elif (
        transition.origin_user == session.expert_id
        or transition.state not in (State.REQUESTED, State.ENDED)
        or transition.previous not in (None, State.REQUESTED)
    ):
        out.append((session.expert_id, state_message(session.expert_id)))
    return out


def _make_backend(settings: Settings) -> Backend:
    if settings.redis_url:
        from ..backends.redis import RedisBackend

        return RedisBackend(
            settings.node_id,
            settings.redis_url,
            prefix=settings.redis_prefix,
            stash_ttl=settings.resume_grace,
            # A location outlives several keepalive periods; a crashed node's users expire with it.
            location_ttl=max(90, int(3 * (settings.ping_interval + settings.ping_timeout))),
        )
    return MemoryBackend(settings.node_id, stash_ttl=settings.resume_grace)


async def signalling_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open the backend and the node (on the database and directory set before)."""
    settings = app[keys.SETTINGS]
    node = SignallingNode(
        settings,
        app[TOKENS],
        app[BACKEND] if BACKEND in app else _make_backend(settings),
        app[keys.DATABASE],
        await open_session_store(app[keys.DATABASE], app.get(keys.POSTGRES)),
        app[EXPERT_DIRECTORY],
        app[keys.METRICS],
        app.get(MEDIA_PLANE),
    )
    app[SIGNALLING] = node
    await node.start()
    try:
        yield
    finally:
        await node.close()


async def close_sockets(app: web.Application) -> None:
    """on_shutdown: tell every client to go away (and resume) before the node closes."""
    node = app.get(SIGNALLING)
    if node is not None:
        await node.shutdown()


def setup(app: web.Application) -> None:
    """Open the node with the application (the socket layer's ``websocket.setup`` serves it)."""
    app.cleanup_ctx.append(signalling_ctx)
    app.on_shutdown.append(close_sockets)


# How the node finds experts (set by create_app; an empty in-memory directory otherwise).
EXPERT_DIRECTORY = web.AppKey("expert_directory", ExpertDirectory)
# The media plane (sfu.api.MediaPlane) this node hosts rooms on; a signalling-only node has none.
MEDIA_PLANE = web.AppKey("media_plane", MediaPlane)
# Set before start-up to share one backend object (tests run several nodes on one memory hub).
BACKEND = web.AppKey("backend", Backend)
