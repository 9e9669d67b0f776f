"""The bridge between the signalling protocol and the media plane (``sfu.api.MediaPlane``).

A session's room is opened on the node that accepted it (``Session.media_node``), in that node's
media plane; media messages from a participant whose socket is on another node are forwarded there
as a ``media`` envelope, and answers travel back through the backend like any other message. The
room is the session id and each participant is their user id, so a participant who resumes after
a dropped socket is the same participant: a new offer on an existing transport is an ICE restart.

Media plane events drive the session: ``MediaState`` moves it through connecting/live/paused,
``ServerOffer`` becomes a ``media.offer`` to the participant, ``RoomClosed`` ends the session, and
``RoomRestarted`` (the SFU worker hosting the room died, the room is open again elsewhere) starts
its media over as a node's death does: paused if it was live, participants told to start media again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sfu.api import (
    AddIceCandidate,
    Answer,
    AnswerToServerOffer,
    CloseRoom,
    MediaError,
    MediaPlane,
    MediaQuality,
    MediaState,
    Message,
    Offer,
    OpenRoom,
    RoomClosed,
    RoomRestarted,
    ServerOffer,
    Subscribe,
)

from ..backends.base import Backend
from ..core.protocol import ErrorCode, ProtocolError, error, message
from ..core.tasks import cancel_and_wait
from .queueing import ExpertQueues
from .sessions import IN_PROGRESS, EndReason, Session, State, Transition

log = logging.getLogger(__name__)

MEDIA_TYPES = frozenset({"media.offer", "media.answer", "media.ice"})


class MediaBridge:
    def __init__(self, node_id: str, backend: Backend, queues: ExpertQueues, plane: MediaPlane | None) -> None:
        self.node_id = node_id
        self.backend = backend
        self.queues = queues
        self.plane = plane
        # Events are handled by one task, in order, outside the media plane's call stack: handling
        # one takes the expert's lock, which the request that caused it may be holding.
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        if plane is not None:
            plane.on_event(self.on_event)

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name=f"media-events-{self.node_id}")

    async def close(self) -> None:
        if self._worker is not None:
            await cancel_and_wait(self._worker)
            self._worker = None

    async def handle(self, user_id: str, msg: dict[str, Any]) -> None:
        """A media message from a participant whose socket is on this node."""
        session = await self.queues.visible(user_id, msg["session_id"])
        self._check(session)
        if session.media_node and session.media_node != self.node_id:
            if await self.backend.node_alive(session.media_node):
                await self.backend.send_to_node(session.media_node, {"op": "media", "user_id": user_id, "message": msg})
                return
            # The node hosting the room is gone: host it here; media starts over.
            session = await self.adopt(session.id) or session
            self._check(session)
        await self.perform(user_id, msg, session)

    async def on_envelope(self, envelope: dict[str, Any]) -> None:
        """A media message forwarded by another node, or a room to close here."""
        if envelope.get("op") == "close_room":
            await self._close_room(envelope["room_id"], envelope.get("reason", "ended"))
            return
        user_id, msg = envelope["user_id"], envelope["message"]
        try:
            session = await self.queues.visible(user_id, msg["session_id"])
            self._check(session)
            await self.perform(user_id, msg, session)
        except ProtocolError as exc:
            await self.backend.deliver(user_id, error(exc.code, exc.message, msg.get("id")))

    async def perform(self, user_id: str, msg: dict[str, Any], session: Session) -> None:
        assert self.plane is not None
        ref = msg.get("id")
        type_, transport, room = msg["type"], msg["transport"], session.id
        if "chat" in msg and transport != "publish":
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "chat: only a publish offer says whether "
                                "the subscribe transport opens chat")
        try:
            if type_ == "media.offer":
                await self.queues.media_started(session.id)
                reply = await self.plane.request(Offer(room, user_id, transport, msg["sdp"]))
                if not isinstance(reply, Answer):
                    raise MediaError("media_failed", f"the media plane answered {reply.kind!r} to an offer")
                out = message("media.answer", ref, session_id=room, transport=transport, sdp=reply.sdp)
                if transport == "publish":
                    # docs/media-api.md: the control plane opens the participant's subscribe
                    # transport, and replaces it when a resume restarts publish from a new
                    # connection; the SFU's offer follows as a ServerOffer (a media.offer).
                    # Each publish offer says whether it opens chat (schema: a boolean).
                    await self.backend.deliver(user_id, out)
                    await self.plane.request(Subscribe(room, user_id, msg.get("chat", True)))
                    return
            elif type_ == "media.answer":
                await self.plane.request(AnswerToServerOffer(room, user_id, transport, msg["sdp"], msg["offer_id"]))
                out = message("ack", ref)
            else:
                await self.plane.request(AddIceCandidate(room, user_id, transport, msg["candidate"]))
                out = message("ack", ref)
        except MediaError as exc:
            out = error(exc.code, exc.message, ref)
        await self.backend.deliver(user_id, out)

    def _check(self, session: Session) -> None:
        if session.state not in IN_PROGRESS:
            raise ProtocolError(ErrorCode.INVALID_STATE, f"session {session.id} is {session.state.value}: no media yet")
        if self.plane is None:
            raise ProtocolError(ErrorCode.MEDIA_UNAVAILABLE, "this server has no media plane")

    # --- events from the media plane ----------------------------------------------------------

    def on_event(self, event: Message) -> None:
        self._events.put_nowait(event)

    async def _work(self) -> None:
        while True:
            await self._handle_event(await self._events.get())

    async def _handle_event(self, event: Message) -> None:
        try:
            if isinstance(event, MediaState):
                await self.queues.media_state(event.room_id, event.participant_id, event.flowing)
            elif isinstance(event, ServerOffer):
                await self.backend.deliver(
                    event.participant_id,
                    message(
                        "media.offer",
                        session_id=event.room_id,
                        transport=event.transport,
                        sdp=event.sdp,
                        offer_id=event.offer_id,
                        # sfu.api.ServerOffer: a transport's offers count from 1.
                        new_connection=event.offer_id == 1,
                    ),
                )
            elif isinstance(event, MediaQuality):
                # the subscriber whose video paused or resumed, and the publisher it watches
                quality = message(
                    "media.quality", session_id=event.room_id, subscriber=event.participant_id,
                    publisher=event.publisher_id, track_id=event.track_id,
                    video_paused=event.video_paused, reason=event.reason,
                    estimate=event.estimate, bitrate=event.bitrate,
                    fraction_lost=event.fraction_lost,
                )
                for user in dict.fromkeys((event.participant_id, event.publisher_id)):
                    await self.backend.deliver(user, quality)
            elif isinstance(event, RoomClosed):
                await self.queues.end(event.room_id, EndReason.ERROR)
            elif isinstance(event, RoomRestarted):
                await self.restarted(event.room_id)
        except Exception:
            # The media plane's event loop must never see signalling's failures.
            log.exception("failed to handle media event %s", event.kind)

    # --- rooms follow the session -------------------------------------------------------------

    async def on_transition(self, transition: Transition) -> None:
        session = transition.session
        if self.plane is None:
            return
        if transition.state is State.ACCEPTED and session.media_node == self.node_id:
            await self.open_room(session)
        elif transition.state is State.ENDED and transition.previous in IN_PROGRESS:
            if session.media_node == self.node_id:
                await self._close_room(session.id, session.reason)
            elif session.media_node:
                await self.backend.send_to_node(
                    session.media_node, {"op": "close_room", "room_id": session.id, "reason": session.reason}
                )

    async def adopt(self, session_id: str) -> Session | None:
        """Host the room of a session whose media node restarted or died; its media starts over,
        so a live session pauses until both sides flow again."""
        sessions = self.queues.sessions
        current = await sessions.get(session_id)
        if current is None:
            return None
        async with self.backend.lock(f"expert:{current.expert_id}"):
            session = await sessions.get(session_id)
            if session is None or session.state not in IN_PROGRESS:
                return session
            if session.media_node != self.node_id and session.media_node and await self.backend.node_alive(session.media_node):
                return session  # another node adopted it meanwhile
            session = await self._start_over(session)
            if self.plane is not None:
                await self.open_room(session)
            return session

    async def restarted(self, session_id: str) -> None:
        """The media plane opened the session's room again, empty (its worker process died): the
        session's media starts over; participants whose sockets are open hear it now."""
        sessions = self.queues.sessions
        current = await sessions.get(session_id)
        if current is None:
            return
        async with self.backend.lock(f"expert:{current.expert_id}"):
            session = await sessions.get(session_id)
            if session is None or session.state not in IN_PROGRESS or session.media_node != self.node_id:
                return
            previous = session.state
            session = await self._start_over(session)
            if previous is not State.LIVE and previous is not State.ACCEPTED:
                # No transition tells them (a live session's pause does): the same state again,
                # with the reason, asks them to publish and subscribe again.
                for user_id in session.participants:
                    await self.backend.deliver(user_id, message(
                        "session.state", session=session.public(), previous=previous.value))

    async def _start_over(self, session: Session) -> Session:
        """Nobody's media flows any more: a live session pauses (unbilled until both flow again)."""
        sessions = self.queues.sessions
        if session.state is State.LIVE:
            return await sessions.transition(
                session, State.PAUSED, "media_restarted", flowing=[], media_node=self.node_id,
                deadline=self.queues.clock() + self.queues.settings.paused_timeout,
            )
        # accepted: no media started yet, nothing to start over
        changes = {} if session.state is State.ACCEPTED else {"reason": "media_restarted"}
        return await sessions.save(session, flowing=[], media_node=self.node_id, **changes)

    async def open_room(self, session: Session) -> None:
        assert self.plane is not None
        try:
            await self.plane.request(
                OpenRoom(session.id, {"expert_id": session.expert_id, "client_id": session.client_id})
            )
        except MediaError as exc:
            log.warning("could not open the room of session %s: %s %s", session.id, exc.code, exc.message)
            await self.backend.deliver(session.expert_id, error(exc.code, exc.message))
            await self.backend.deliver(session.client_id, error(exc.code, exc.message))

    async def _close_room(self, room_id: str, reason: str) -> None:
        if self.plane is None:
            return
        try:
            await self.plane.request(CloseRoom(room_id, reason or "ended"))
        except MediaError as exc:
            log.warning("could not close the room of session %s: %s", room_id, exc.message)
