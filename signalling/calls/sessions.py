"""The session lifecycle: an explicit state machine, persisted, with listeners for every transition.

    requested --> ringing --> accepted --> connecting --> live <--> paused
        |  ^         |            |             |           |          |
        |  +---------+            +-------------+-----------+----------+--> ended (reason)
        +-----------------------------------------------------------------> ended (reason)

``requested`` waits in the expert's queue; ``ringing`` is the head of the queue being offered to the
expert (it falls back to ``requested`` when the expert steps away); ``accepted`` has a media room
but no media yet; ``connecting`` once a participant starts media; ``live`` while both sides' media
flows; ``paused`` while either side's does not. A scheduled session starts at ``accepted``.

Every transition is written to the durable store (the ``sessions`` row and a
``session_transitions`` log) before it is published to the backend and to listeners, so that a
restarted server forgets no session. The backend holds the records every node reads; the store
is the durable copy - the node's SQLite, or with ``database_url`` the PostgreSQL every node
shares - from which ``recover`` restores what the backend lost (the memory backend loses
everything on restart; Redis may too).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import enum
import inspect
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..backends.base import Backend
from ..core.database import Database

log = logging.getLogger(__name__)


class State(str, enum.Enum):
    REQUESTED = "requested"
    RINGING = "ringing"
    ACCEPTED = "accepted"
    CONNECTING = "connecting"
    LIVE = "live"
    PAUSED = "paused"
    ENDED = "ended"


class EndReason(str, enum.Enum):
    HANGUP = "hangup"  # a participant ended it (session.end)
    DECLINED = "declined"  # the expert said no
    RING_TIMEOUT = "ring_timeout"  # the expert did not answer in Settings.ring_timeout
    CANCELLED = "cancelled"  # a participant withdrew a waiting or ringing request
    BUDGET_REACHED = "budget_reached"  # billing: the client's budget is used up
    NO_SHOW = "no_show"  # accepted, but media never flowed on both sides in Settings.connect_timeout
    DISCONNECTED = "disconnected"  # a participant's socket stayed away longer than the resume grace
    EXPERT_UNAVAILABLE = "expert_unavailable"  # the expert went offline with clients waiting
    ERROR = "error"  # the media room failed
    PAUSED_TIMEOUT = "paused_timeout"  # paused (either side's media stopped) longer than Settings.paused_timeout


WAITING = frozenset({State.REQUESTED, State.RINGING})
IN_PROGRESS = frozenset({State.ACCEPTED, State.CONNECTING, State.LIVE, State.PAUSED})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.REQUESTED: frozenset({State.RINGING, State.ACCEPTED, State.ENDED}),
    State.RINGING: frozenset({State.REQUESTED, State.ACCEPTED, State.ENDED}),
    State.ACCEPTED: frozenset({State.CONNECTING, State.ENDED}),
    State.CONNECTING: frozenset({State.LIVE, State.ENDED}),
    State.LIVE: frozenset({State.PAUSED, State.ENDED}),
    State.PAUSED: frozenset({State.LIVE, State.ENDED}),
    State.ENDED: frozenset(),
}


class InvalidTransition(ValueError):
    pass


@dataclass
class Session:
    id: str
    expert_id: str
    client_id: str
    state: State
    created_at: float
    updated_at: float
    reason: str = ""
    expert_name: str = ""
    client_name: str = ""
    skill: str = ""
    note: str = ""
    booking_id: str = ""
    # When a ringing session times out, an accepted/connecting one becomes a no-show, or a paused
    # one ends for having been paused too long (0: none).
    deadline: float = 0.0
    # The node whose media plane hosts the room (set on accept).
    media_node: str = ""
    # Participants whose media is flowing, as last reported by the media plane.
    flowing: list[str] = field(default_factory=list)
    # The queue position last told to the client (0: not told yet).
    position: int = 0
    ended_by: str = ""
    message: str = ""
    version: int = 0
    # The terms fixed when the client asked (or booked): billing's ``Quote.to_dict()``, shown to
    # the client before the expert is rung and charged whatever the profile says later.
    quote: dict[str, Any] | None = None
    # The client's budget cap in minor units of the quote's currency (None: no cap).
    budget: int | None = None
    # The client's token said they are a minor: the session is never recorded.
    client_minor: bool = False
    # Recording consent and state (signalling/recording.py); empty until someone asks.
    recording: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = State(self.state)
        if not self.id or not self.expert_id or not self.client_id:
            raise ValueError("a session needs an id, an expert and a client")
        if self.expert_id == self.client_id:
            raise ValueError("an expert cannot be their own client")

    @property
    def participants(self) -> tuple[str, str]:
        return (self.expert_id, self.client_id)

    def other(self, user_id: str) -> str:
        return self.client_id if user_id == self.expert_id else self.expert_id

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Session":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def public(self) -> dict[str, Any]:
        """The session as clients see it (schemas/common.json#/$defs/session)."""
        out: dict[str, Any] = {
            "id": self.id,
            "expert_id": self.expert_id,
            "client_id": self.client_id,
            "expert_name": self.expert_name,
            "client_name": self.client_name,
            "state": self.state.value,
            "reason": self.reason,
            "skill": self.skill,
            "note": self.note,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "deadline": self.deadline,
        }
        if self.booking_id:
            out["booking_id"] = self.booking_id
        if self.quote is not None:
            out["quote"] = self.quote
        if self.recording:
            out["recording"] = self.recording
        if self.state is State.ENDED:
            out["ended_by"] = self.ended_by
            out["message"] = self.message
        return out


@dataclass(frozen=True)
class Transition:
    """One state change. Billing keys on (session_id, state, at) for live, paused and ended.

    ``origin_user``/``origin_ref`` name the request that caused it, so that the answer to that
    request carries its ``ref``.
    """

    session: Session
    previous: State | None
    state: State
    reason: str
    at: float
    origin_user: str = ""
    origin_ref: str | int | None = None

    @property
    def session_id(self) -> str:
        return self.session.id

    @property
    def expert_id(self) -> str:
        return self.session.expert_id

    @property
    def client_id(self) -> str:
        return self.session.client_id


Listener = Callable[[Transition], Awaitable[None] | None]

# A critical listener (billing) that fails is tried this many times, these seconds apart, before
# the transition fails with ``ListenerFailed``.
CRITICAL_ATTEMPTS = 3
CRITICAL_RETRY_DELAY = 0.1


class ListenerFailed(RuntimeError):
    """A critical listener failed on a committed transition every time it was tried: the state
    changed, and what that listener keeps (billing) may not know. Raised to the transition's
    caller so that it is never silent."""

DDL = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions (state);
CREATE TABLE IF NOT EXISTS session_transitions (
    session_id TEXT NOT NULL REFERENCES sessions (id),
    version INTEGER NOT NULL,
    previous TEXT,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (session_id, version)
);
"""


class SessionStore(abc.ABC):
    """The durable copy of sessions and their transition log: the node's SQLite
    (``SqliteSessionStore``) or the PostgreSQL database every node shares
    (``session_store_postgres.PostgresSessionStore``)."""

    @abc.abstractmethod
    async def save(self, session: Session, transition: Transition | None = None) -> None: ...

    @abc.abstractmethod
    async def get(self, session_id: str) -> Session | None: ...

    @abc.abstractmethod
    async def unfinished(self) -> list[Session]:
        """Every session not ended, oldest first."""

    @abc.abstractmethod
    async def history(self, session_id: str) -> list[tuple[str | None, str, str, float]]:
        """(previous, state, reason, at) of every transition, oldest first."""


class SqliteSessionStore(SessionStore):
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate_versions("sessions", [(1, DDL)])

    async def save(self, session: Session, transition: Transition | None = None) -> None:
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO sessions (id, expert_id, client_id, state, reason, created_at, updated_at, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
                " reason = excluded.reason, updated_at = excluded.updated_at, record = excluded.record",
                session_row(session),
            )
            if transition is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO session_transitions (session_id, version, previous, state, reason, at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    transition_row(session, transition),
                )

    async def get(self, session_id: str) -> Session | None:
        row = self.db.fetchone("SELECT record FROM sessions WHERE id = ?", (session_id,))
        return None if row is None else Session.from_dict(json.loads(row["record"]))

    async def unfinished(self) -> list[Session]:
        rows = self.db.fetchall(
            "SELECT record FROM sessions WHERE state != ? ORDER BY created_at, id", (State.ENDED.value,)
        )
        return [Session.from_dict(json.loads(r["record"])) for r in rows]

    async def history(self, session_id: str) -> list[tuple[str | None, str, str, float]]:
        rows = self.db.fetchall(
            "SELECT previous, state, reason, at FROM session_transitions WHERE session_id = ? ORDER BY version",
            (session_id,),
        )
        return [(r["previous"], r["state"], r["reason"], r["at"]) for r in rows]


def session_row(session: Session) -> tuple[Any, ...]:
    return (
        session.id, session.expert_id, session.client_id, session.state.value, session.reason,
        session.created_at, session.updated_at, json.dumps(session.to_dict()),
    )


def transition_row(session: Session, transition: Transition) -> tuple[Any, ...]:
    return (
        session.id, session.version, transition.previous.value if transition.previous else None,
        transition.state.value, transition.reason, transition.at,
    )


class SessionManager:
    """Creates sessions and moves them through the state machine. Callers hold the expert's lock."""

    def __init__(self, backend: Backend, store: SessionStore, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.store = store
        self.clock = clock
        self._listeners: list[tuple[Listener, bool]] = []

    def add_listener(self, listener: Listener, critical: bool = False) -> None:
        """Call ``listener`` with every ``Transition`` this node makes, in order.

        A listener that raises is logged and the others still run. A ``critical`` one (billing:
        a lost ``ended`` would leave a meter charging) is retried, and if it fails every time the
        transition raises ``ListenerFailed`` after the other listeners ran; it must therefore be
        idempotent."""
        self._listeners.append((listener, critical))

    async def get(self, session_id: str) -> Session | None:
        record = await self.backend.load_session(session_id)
        if record is not None:
            return Session.from_dict(record)
        return await self.store.get(session_id)

    async def create(
        self,
        expert_id: str,
        client_id: str,
        *,
        state: State = State.REQUESTED,
        reason: str = "requested",
        origin: tuple[str, str | int | None] = ("", None),
        **fields: Any,
    ) -> Session:
        now = self.clock()
        session = Session(
            id=uuid.uuid4().hex,
            expert_id=expert_id,
            client_id=client_id,
            state=state,
            created_at=now,
            updated_at=now,
            reason=reason,
            **fields,
        )
        await self._commit(Transition(session, None, state, reason, now, *origin))
        return session

    async def transition(
        self,
        session: Session,
        state: State,
        reason: str,
        *,
        origin: tuple[str, str | int | None] = ("", None),
        **changes: Any,
    ) -> Session:
        """Move ``session`` to ``state``; raises ``InvalidTransition`` when the machine forbids it."""
        if state not in TRANSITIONS[session.state]:
            raise InvalidTransition(f"session {session.id}: {session.state.value} -> {state.value} is not allowed")
        now = self.clock()
        previous = session.state
        updated = dataclasses.replace(
            session, state=state, reason=reason, updated_at=now, version=session.version + 1, **changes
        )
        await self._commit(Transition(updated, previous, state, reason, now, *origin))
        return updated

    async def save(self, session: Session, **changes: Any) -> Session:
        """Store a change that is not a transition (the flowing set, the told position)."""
        updated = dataclasses.replace(session, **changes)
        await self.store.save(updated)
        await self.backend.save_session(updated.to_dict(), active=updated.state is not State.ENDED)
        return updated

    async def recover(self) -> list[Session]:
        """Every unfinished session, restoring into the backend those it does not have."""
        for session in await self.store.unfinished():
            if await self.backend.load_session(session.id) is not None:
                continue
            await self.backend.save_session(session.to_dict(), active=True)
            if session.state in IN_PROGRESS:
                await self.backend.set_user_session(session.expert_id, session.id)
            await self.backend.set_user_session(session.client_id, session.id)
            if session.state in WAITING:
                await self.backend.queue_push(session.expert_id, session.id)
        sessions = [await self.get(sid) for sid in await self.backend.active_session_ids()]
        return sorted((s for s in sessions if s is not None), key=lambda s: (s.created_at, s.id))

    async def _commit(self, transition: Transition) -> None:
        session = transition.session
        await self.store.save(session, transition)
        await self.backend.save_session(session.to_dict(), active=session.state is not State.ENDED)
        failed: list[BaseException] = []
        for listener, critical in self._listeners:
            for attempt in range(1, CRITICAL_ATTEMPTS + 1 if critical else 2):
                try:
                    result = listener(transition)
                    if inspect.isawaitable(result):
                        await result
                    break
                except Exception as exc:
                    # A listener must not undo a committed transition, nor keep the others from it.
                    log.exception(
                        "session listener %r failed on %s -> %s (attempt %d)",
                        listener, session.id, transition.state.value, attempt,
                    )
                    if critical and attempt == CRITICAL_ATTEMPTS:
                        failed.append(exc)
                    elif critical:
                        await asyncio.sleep(CRITICAL_RETRY_DELAY * attempt)
        if failed:
            raise ListenerFailed(
                f"session {session.id} -> {transition.state.value}: a critical listener failed {CRITICAL_ATTEMPTS} times"
            ) from failed[0]
