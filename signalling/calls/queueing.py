"""Each expert's FIFO queue of help requests, and the operations that move sessions along it.

A client's request joins the expert's queue (``requested``). Whenever the expert is online and free,
the head is rung (``ringing``) for ``Settings.ring_timeout`` seconds. Accepting takes it out of the
queue; declining, a ring timeout or a cancel ends it, and the next one is rung. Every waiting client
is told their position each time it changes; the expert is sent the whole queue. Declines, timeouts
and cancels reach the other side as a ``session.state`` with the reason (and who ended it).

Every operation on an expert's queue or sessions runs under the backend lock ``expert:<id>``, so
nodes sharing a Redis backend never interleave them; a client's request also holds
``client:<id>`` so that a client waits for one expert at a time.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from ..backends.base import Backend
from ..core.protocol import ErrorCode, ProtocolError, message
from ..core.settings import Settings
from ..core.timers import Timers
from .directory import ExpertDirectory
from .presence import Availability, Presence
from .sessions import IN_PROGRESS, WAITING, EndReason, Session, SessionManager, State, Transition

log = logging.getLogger(__name__)

Origin = tuple[str, "str | int | None"]
NO_ORIGIN: Origin = ("", None)


class ExpertQueues:
    def __init__(
        self,
        node_id: str,
        settings: Settings,
        backend: Backend,
        sessions: SessionManager,
        presence: Presence,
        directory: ExpertDirectory,
        timers: Timers,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.settings = settings
        self.backend = backend
        self.sessions = sessions
        self.presence = presence
        self.directory = directory
        self.timers = timers
        self.clock = clock
        # expert_id -> the terms of a session asked for now (billing's quote as a dict), fixed on
        # the session at request time; set by the application's wiring (None: no quote).
        self.quoter: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None

    # --- requests from participants -----------------------------------------------------------

    async def request(
        self,
        client_id: str,
        client_name: str,
        *,
        expert_id: str | None = None,
        skill: str | None = None,
        note: str = "",
        origin: Origin = NO_ORIGIN,
        minor: bool = False,
    ) -> Session:
        """Queue a client for a given expert, or for the best available expert with ``skill``."""
        async with self.backend.lock(f"client:{client_id}"):
            current = await self._current(client_id)
            if current is not None:
                raise ProtocolError(
                    ErrorCode.ALREADY_IN_SESSION,
                    f"you already take part in session {current.id} ({current.state.value}); cancel or end it first",
                )
            if expert_id == client_id:
                raise ProtocolError(ErrorCode.FORBIDDEN, "you cannot ask yourself for help")
            if expert_id is not None:
                expert = await self.directory.get(expert_id)
                if expert is None:
                    raise ProtocolError(ErrorCode.EXPERT_NOT_FOUND, f"there is no expert {expert_id!r}")
                # Away experts keep a queue (they are rung when back); offline ones take no requests.
                if await self.presence.availability(expert_id) is Availability.OFFLINE:
                    raise ProtocolError(ErrorCode.EXPERT_UNAVAILABLE, f"{expert.display_name} is offline")
            else:
                assert skill is not None
                expert_id = await self._pick(skill, client_id)
                expert = await self.directory.get(expert_id)
            async with self.backend.lock(f"expert:{expert_id}"):
                session = await self.sessions.create(
                    expert_id,
                    client_id,
                    origin=origin,
                    client_name=client_name,
                    expert_name=expert.display_name if expert else expert_id,
                    skill=skill or "",
                    note=note,
                    client_minor=minor,
                    quote=await self.quoter(expert_id) if self.quoter is not None else None,
                )
                await self.backend.set_user_session(client_id, session.id)
                await self.backend.queue_push(expert_id, session.id)
                await self._advance(expert_id)
                return session

    async def accept(self, expert_id: str, session_id: str, origin: Origin = NO_ORIGIN) -> Session:
        async with self.backend.lock(f"expert:{expert_id}"):
            session = await self._own(expert_id, session_id, expert_only=True)
            if session.state is not State.RINGING:
                raise ProtocolError(ErrorCode.INVALID_STATE, f"session {session_id} is {session.state.value}, not ringing")
            if await self._current(expert_id) is not None:
                raise ProtocolError(ErrorCode.ALREADY_IN_SESSION, "end your current session first")
            self.timers.cancel(("ring", session_id))
            await self.backend.queue_remove(expert_id, session_id)
            session = await self.sessions.transition(
                session,
                State.ACCEPTED,
                "accepted",
                origin=origin,
                deadline=self.clock() + self.settings.connect_timeout,
                media_node=self.node_id,
            )
            await self.backend.set_user_session(expert_id, session_id)
            self.timers.start(("connect", session_id), self.settings.connect_timeout, self._connect_expired, session_id)
            await self._advance(expert_id)
            return session

    async def decline(self, expert_id: str, session_id: str, text: str = "", origin: Origin = NO_ORIGIN) -> Session:
        """The expert turns down a ringing request, or one still waiting in their queue."""
        async with self.backend.lock(f"expert:{expert_id}"):
            session = await self._own(expert_id, session_id, expert_only=True)
            if session.state not in WAITING:
                raise ProtocolError(ErrorCode.INVALID_STATE, f"session {session_id} is {session.state.value}: end it instead")
            return await self._end(session, EndReason.DECLINED, by=expert_id, text=text, origin=origin)

    async def cancel(self, user_id: str, session_id: str, origin: Origin = NO_ORIGIN) -> Session:
        """Either side withdraws a request that is waiting or ringing."""
        session = await self._visible(user_id, session_id)
        async with self.backend.lock(f"expert:{session.expert_id}"):
            session = await self._visible(user_id, session_id)
            if session.state not in WAITING:
                raise ProtocolError(
                    ErrorCode.INVALID_STATE, f"session {session_id} is {session.state.value}: only waiting requests can be cancelled"
                )
            return await self._end(session, EndReason.CANCELLED, by=user_id, origin=origin)

    async def hang_up(self, user_id: str, session_id: str, origin: Origin = NO_ORIGIN) -> Session:
        session = await self._visible(user_id, session_id)
        async with self.backend.lock(f"expert:{session.expert_id}"):
            session = await self._visible(user_id, session_id)
            if session.state not in IN_PROGRESS:
                raise ProtocolError(
                    ErrorCode.INVALID_STATE, f"session {session_id} is {session.state.value}: use help.cancel before it is accepted"
                )
            return await self._end(session, EndReason.HANGUP, by=user_id, origin=origin)

    # --- for other modules (billing, scheduling, media) ---------------------------------------

    async def end(self, session_id: str, reason: EndReason, by: str = "") -> Session | None:
        """End a session for a server-side reason (billing: ``budget_reached``); idempotent."""
        session = await self.sessions.get(session_id)
        if session is None:
            return None
        async with self.backend.lock(f"expert:{session.expert_id}"):
            session = await self.sessions.get(session_id)
            if session is None or session.state is State.ENDED:
                return session
            return await self._end(session, reason, by=by)

    async def open_scheduled(
        self,
        expert_id: str,
        client_id: str,
        booking_id: str,
        *,
        expert_name: str = "",
        client_name: str = "",
        quote: dict[str, Any] | None = None,
    ) -> Session:
        """Open a booked session at its time: both sides agreed, so it starts ``accepted``, with
        the quote fixed when it was booked (a fresh one for a booking that has none)."""
        if quote is None and self.quoter is not None:
            quote = await self.quoter(expert_id)
        async with self.backend.lock(f"client:{client_id}"):
            for user in (expert_id, client_id):
                current = await self._current(user)
                if current is not None and current.state in IN_PROGRESS:
                    raise ProtocolError(ErrorCode.ALREADY_IN_SESSION, f"{user} is in session {current.id}")
                if current is not None:
                    # The booked session wins over an instant request still waiting in a queue.
                    await self.end(current.id, EndReason.CANCELLED)
            async with self.backend.lock(f"expert:{expert_id}"):
                session = await self.sessions.create(
                    expert_id,
                    client_id,
                    state=State.ACCEPTED,
                    reason="scheduled",
                    booking_id=booking_id,
                    expert_name=expert_name or expert_id,
                    client_name=client_name or client_id,
                    deadline=self.clock() + self.settings.connect_timeout,
                    media_node=self.node_id,
                    quote=quote,
                )
                await self.backend.set_user_session(expert_id, session.id)
                await self.backend.set_user_session(client_id, session.id)
                self.timers.start(("connect", session.id), self.settings.connect_timeout, self._connect_expired, session.id)
                await self._advance(expert_id)
                return session

    async def media_started(self, session_id: str) -> None:
        """A participant sent its first media offer: accepted -> connecting."""
        session = await self.sessions.get(session_id)
        if session is None or session.state is not State.ACCEPTED:
            return
        async with self.backend.lock(f"expert:{session.expert_id}"):
            session = await self.sessions.get(session_id)
            if session is not None and session.state is State.ACCEPTED:
                await self.sessions.transition(session, State.CONNECTING, "media_started")

    async def media_state(self, session_id: str, participant_id: str, flowing: bool) -> None:
        """The media plane says whether a participant's media flows: drives connecting/live/paused."""
        session = await self.sessions.get(session_id)
        if session is None or session.state not in IN_PROGRESS or participant_id not in session.participants:
            return
        async with self.backend.lock(f"expert:{session.expert_id}"):
            session = await self.sessions.get(session_id)
            if session is None or session.state not in IN_PROGRESS:
                return
            now_flowing = set(session.flowing)
            (now_flowing.add if flowing else now_flowing.discard)(participant_id)
            ordered = sorted(now_flowing)
            if session.state is State.ACCEPTED:
                session = await self.sessions.transition(session, State.CONNECTING, "media_started", flowing=ordered)
            both = set(session.participants) <= now_flowing
            if both and session.state in (State.CONNECTING, State.PAUSED):
                self.timers.cancel(("connect", session_id))
                await self.sessions.transition(session, State.LIVE, "media_flowing", flowing=ordered, deadline=0.0)
            elif not both and session.state is State.LIVE:
                await self.sessions.transition(
                    session, State.PAUSED, f"media_stopped:{participant_id}", flowing=ordered,
                    deadline=self.clock() + self.settings.paused_timeout,
                )
            elif ordered != session.flowing:
                await self.sessions.save(session, flowing=ordered)

    # --- presence and connectivity ------------------------------------------------------------

    async def presence_changed(self, expert_id: str) -> None:
        """The expert's chosen presence changed: stop ringing, release the queue, or ring the head."""
        async with self.backend.lock(f"expert:{expert_id}"):
            availability = await self.presence.availability(expert_id)
            waiting = await self._waiting(expert_id)
            if availability is Availability.OFFLINE:
                for session in waiting:
                    await self._end(session, EndReason.EXPERT_UNAVAILABLE, by=expert_id, advance=False)
            elif availability is Availability.AWAY:
                for session in waiting:
                    if session.state is State.RINGING:
                        self.timers.cancel(("ring", session.id))
                        await self.sessions.transition(session, State.REQUESTED, "expert_away", deadline=0.0)
            await self._advance(expert_id)

    async def user_gone(self, user_id: str) -> None:
        """A user's socket stayed away longer than the resume grace: end what they were part of."""
        current = await self._current(user_id)
        if current is not None:
            async with self.backend.lock(f"expert:{current.expert_id}"):
                current = await self.sessions.get(current.id)
                if current is not None and current.state is not State.ENDED and user_id in current.participants:
                    await self._end(current, EndReason.DISCONNECTED, by=user_id)
        # An expert who left: forget their presence, and release anyone still in their queue
        # (after a restart the presence may be gone already while the queue was recovered).
        chosen = await self.presence.chosen(user_id)
        if chosen is not None:
            await self.presence.choose(user_id, None)
        if chosen is not None or await self.backend.queue(user_id):
            await self.presence_changed(user_id)

    async def recover(self) -> list[Session]:
        """After a restart: re-arm the timers of unfinished sessions and ring whoever is due."""
        sessions = await self.sessions.recover()
        now = self.clock()
        for session in sessions:
            if session.state is State.RINGING:
                self.timers.start(("ring", session.id), session.deadline - now, self._ring_expired, session.id)
            elif session.state in (State.ACCEPTED, State.CONNECTING):
                self.timers.start(("connect", session.id), session.deadline - now, self._connect_expired, session.id)
            elif session.state is State.PAUSED:
                self._arm_paused(session)
        for expert_id in sorted({s.expert_id for s in sessions if s.state in WAITING}):
            async with self.backend.lock(f"expert:{expert_id}"):
                await self._advance(expert_id)
        return sessions

    async def brief(self, user_id: str) -> None:
        """Tell a user who just said hello (not resumed) where they stand: an expert gets their
        queue and any ring in progress, a waiting client their position."""
        waiting = await self._waiting(user_id)
        if waiting:
            if waiting[0].state is State.RINGING:
                await self.backend.deliver(user_id, ring_message(waiting[0], self.clock()))
            await self.backend.deliver(user_id, queue_update(user_id, waiting))
        current = await self._current(user_id)
        if current is not None and current.client_id == user_id and current.state in WAITING:
            queue = await self.backend.queue(current.expert_id)
            if current.id in queue:
                await self.backend.deliver(
                    user_id,
                    message(
                        "queue.position",
                        session_id=current.id,
                        expert_id=current.expert_id,
                        position=queue.index(current.id) + 1,
                        length=len(queue),
                    ),
                )

    # --- lookups ------------------------------------------------------------------------------

    async def current(self, user_id: str) -> Session | None:
        """The session a user is waiting for or taking part in."""
        return await self._current(user_id)

    async def visible(self, user_id: str, session_id: str) -> Session:
        """The session, if ``user_id`` takes part in it; coded errors otherwise."""
        return await self._visible(user_id, session_id)

    async def _current(self, user_id: str) -> Session | None:
        session_id = await self.backend.user_session(user_id)
        if session_id is None:
            return None
        session = await self.sessions.get(session_id)
        if session is None or session.state is State.ENDED:
            await self.backend.set_user_session(user_id, None)
            return None
        return session

    async def _visible(self, user_id: str, session_id: str) -> Session:
        session = await self.sessions.get(session_id)
        if session is None:
            raise ProtocolError(ErrorCode.SESSION_NOT_FOUND, f"there is no session {session_id!r}")
        if user_id not in session.participants:
            raise ProtocolError(ErrorCode.NOT_PARTICIPANT, f"you are not part of session {session_id!r}")
        return session

    async def _own(self, expert_id: str, session_id: str, expert_only: bool) -> Session:
        session = await self._visible(expert_id, session_id)
        if expert_only and session.expert_id != expert_id:
            raise ProtocolError(ErrorCode.NOT_PARTICIPANT, f"session {session_id!r} is not addressed to you")
        return session

    async def _pick(self, skill: str, client_id: str) -> str:
        """The online expert with ``skill`` and the shortest queue (busy ones count one extra)."""
        best: tuple[int, int, str] | None = None
        for rank, expert_id in enumerate(await self.directory.find_available(skill)):
            if expert_id == client_id:
                continue
            availability = await self.presence.availability(expert_id)
            if availability not in (Availability.ONLINE, Availability.BUSY):
                continue
            load = len(await self.backend.queue(expert_id)) + (availability is Availability.BUSY)
            if best is None or (load, rank) < best[:2]:
                best = (load, rank, expert_id)
        if best is None:
            raise ProtocolError(ErrorCode.NO_EXPERT_AVAILABLE, f"no expert with the skill {skill!r} is available now")
        return best[2]

    async def _waiting(self, expert_id: str) -> list[Session]:
        """The expert's queue in order, dropping entries whose session is gone or no longer waiting."""
        waiting = []
        for session_id in await self.backend.queue(expert_id):
            session = await self.sessions.get(session_id)
            if session is None or session.state not in WAITING:
                await self.backend.queue_remove(expert_id, session_id)
                continue
            waiting.append(session)
        return waiting

    # --- under the expert's lock --------------------------------------------------------------

    async def _end(
        self,
        session: Session,
        reason: EndReason,
        *,
        by: str = "",
        text: str = "",
        origin: Origin = NO_ORIGIN,
        advance: bool = True,
    ) -> Session:
        self.timers.cancel(("ring", session.id))
        self.timers.cancel(("connect", session.id))
        session = await self.sessions.transition(
            session, State.ENDED, reason.value, origin=origin, ended_by=by, message=text, deadline=0.0
        )
        await self.backend.queue_remove(session.expert_id, session.id)
        for user in session.participants:
            if await self.backend.user_session(user) == session.id:
                await self.backend.set_user_session(user, None)
        if advance:
            await self._advance(session.expert_id)
        return session

    async def _advance(self, expert_id: str) -> None:
        """Tell everyone waiting where they stand, then ring the head of the queue if the expert
        is free: a new request hears ``requested``, ``queue.position``, ``ringing``, in that
        order (docs/protocol.md). Last, the expert gets the whole queue."""
        waiting = await self._waiting(expert_id)
        for index, session in enumerate(waiting):
            position = index + 1
            if session.position != position:
                waiting[index] = await self.sessions.save(session, position=position)
                await self.backend.deliver(
                    session.client_id,
                    message(
                        "queue.position",
                        session_id=session.id,
                        expert_id=expert_id,
                        position=position,
                        length=len(waiting),
                    ),
                )
        if waiting and waiting[0].state is State.REQUESTED and not any(s.state is State.RINGING for s in waiting):
            if await self.presence.availability(expert_id) is Availability.ONLINE:
                timeout = self.settings.ring_timeout
                waiting[0] = await self.sessions.transition(
                    waiting[0], State.RINGING, "rung", deadline=self.clock() + timeout
                )
                self.timers.start(("ring", waiting[0].id), timeout, self._ring_expired, waiting[0].id)
        await self.backend.deliver(expert_id, queue_update(expert_id, waiting))

    async def _ring_expired(self, session_id: str) -> None:
        session = await self.sessions.get(session_id)
        if session is None:
            return
        async with self.backend.lock(f"expert:{session.expert_id}"):
            session = await self.sessions.get(session_id)
            if session is not None and session.state is State.RINGING:
                await self._end(session, EndReason.RING_TIMEOUT)

    def on_transition(self, transition: Transition) -> None:
        """The paused-session limit follows every transition this node makes."""
        if transition.state is State.PAUSED:
            self._arm_paused(transition.session)
        else:
            self.timers.cancel(("paused", transition.session_id))

    def _arm_paused(self, session: Session) -> None:
        deadline = session.deadline or session.updated_at + self.settings.paused_timeout
        self.timers.start(("paused", session.id), deadline - self.clock(), self._paused_expired, session.id)

    async def _paused_expired(self, session_id: str) -> None:
        session = await self.sessions.get(session_id)
        if session is None:
            return
        async with self.backend.lock(f"expert:{session.expert_id}"):
            session = await self.sessions.get(session_id)
            if session is not None and session.state is State.PAUSED and session.deadline <= self.clock():
                await self._end(session, EndReason.PAUSED_TIMEOUT)

    async def _connect_expired(self, session_id: str) -> None:
        session = await self.sessions.get(session_id)
        if session is None:
            return
        async with self.backend.lock(f"expert:{session.expert_id}"):
            session = await self.sessions.get(session_id)
            if session is not None and session.state in (State.ACCEPTED, State.CONNECTING):
                await self._end(session, EndReason.NO_SHOW)


def queue_update(expert_id: str, waiting: list[Session]) -> dict[str, Any]:
    return message(
        "queue.update",
        expert_id=expert_id,
        waiting=[
            {
                "session_id": s.id,
                "client_id": s.client_id,
                "client_name": s.client_name,
                "note": s.note,
                "skill": s.skill,
                "position": position,
                "since": s.created_at,
            }
            for position, s in enumerate(waiting, 1)
        ],
    )


def ring_message(session: Session, now: float) -> dict[str, Any]:
    return message("ring", session=session.public(), expires_at=session.deadline, timeout=max(0.0, session.deadline - now))
