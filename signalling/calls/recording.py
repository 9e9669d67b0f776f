"""Recording a session, only with both participants' consent: the ``recording.*`` messages.

The state lives on the session (``Session.recording``), so every node, and the snapshot in a
``welcome``, show it::

    off --recording.request (A: A's consent)--> requested --recording.consent (B, accept)--> on
                                                   |   (B asking too counts as consent)     |
                 off <-- consent (B, refuse) / recording.stop (A or B) --+------------------+

Either participant stops it at any time; ending the session stops it. A session whose client (or
expert) is a minor — the token's ``minor`` claim, kept on the session by the client's request —
is never recorded: the request and the consent are both refused. Every change goes to both
participants as ``recording.state``.

The recorder runs in the media plane of the session's node (``StartRecording``/``StopRecording``
of sfu.api). A message that reaches another node is forwarded there (envelope op
``recording``), as media messages are. What recordings leave behind (the index, the events, the
files) is ``RecordingArchive``'s, which billing provides (billing/recording_archive.py): calls
never import billing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from sfu.api import (
    MediaError,
    MediaPlane,
    Message,
    RecordingFailed,
    RecordingFile,
    RecordingStarted,
    RecordingStopped,
    RecoverRecordings,
    StartRecording,
    StopRecording,
)

from ..core import keys
from ..core.protocol import ErrorCode, ProtocolError, error, message
from ..core.tasks import cancel_and_wait
from .node import MEDIA_PLANE, SIGNALLING
from .sessions import IN_PROGRESS, Session, State, Transition

if TYPE_CHECKING:
    from .node import SignallingNode

log = logging.getLogger(__name__)

RECORDING_REFUSED = "recording_refused"


class RecordingArchive(Protocol):
    """What happens to a recording beyond the call (the index, events, files)."""

    async def started(self, session: Session, recording_id: str, started_at: float) -> None: ...

    async def file_ready(self, session: Session | None, event: RecordingFile) -> None: ...

    async def stopped(self, session: Session | None, event: RecordingStopped) -> None: ...


class RecordingControl:
    def __init__(self, node: SignallingNode, plane: MediaPlane | None,
                 archive: RecordingArchive | None = None) -> None:
        self.node = node
        self.plane = plane
        self.archive = archive
        # Media events are handled in order by one task, outside the media plane's call stack
        # (handling one takes the expert's lock, which the request that caused it may hold).
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker: asyncio.Task[None] | None = None
        if plane is not None:
            plane.on_event(self._on_event)
        node.envelope_handlers["recording"] = self.on_envelope
        node.sessions.add_listener(self.on_transition)

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name=f"recording-events-{self.node.node_id}")

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks, self._worker)
        self._worker = None

    # --- messages from participants -----------------------------------------------------------

    async def handle(self, user_id: str, minor: bool, msg: dict[str, Any]) -> None:
        """A ``recording.*`` message from a socket on this node (``minor``: its token's claim)."""
        node = self.node
        session = await node.queues.visible(user_id, msg["session_id"])
        owner = session.media_node
        if owner and owner != node.node_id and await node.backend.node_alive(owner):
            await node.backend.send_to_node(owner, {
                "op": "recording", "user_id": user_id, "minor": minor, "message": msg,
            })
            return
        await self.perform(user_id, minor, msg)

    async def on_envelope(self, envelope: dict[str, Any]) -> None:
        user_id, msg = envelope["user_id"], envelope["message"]
        try:
            await self.perform(user_id, bool(envelope.get("minor")), msg)
        except (ProtocolError, MediaError) as exc:
            await self.node.backend.deliver(user_id, error(exc.code, exc.message, msg.get("id")))

    async def perform(self, user_id: str, minor: bool, msg: dict[str, Any]) -> None:
        """One ``recording.*`` message, on the node that hosts the session's room."""
        node = self.node
        session = await node.queues.visible(user_id, msg["session_id"])
        async with node.backend.lock(f"expert:{session.expert_id}"):
            session = await node.queues.visible(user_id, msg["session_id"])
            if session.state not in IN_PROGRESS:
                raise ProtocolError(ErrorCode.INVALID_STATE,
                                    f"session {session.id} is {session.state.value}: nothing to record")
            current = session.recording or {"state": "off"}
            kind = msg["type"]
            if kind == "recording.stop":
                update = await self._stop(session, current, user_id)
            elif kind == "recording.request" or msg.get("accept"):
                if minor or session.client_minor:
                    raise ProtocolError(RECORDING_REFUSED, "a session with a minor is never recorded")
                update = await self._agree(session, current, user_id, kind == "recording.consent")
            else:
                if current["state"] != "requested" or user_id in current["consented"]:
                    raise ProtocolError(ErrorCode.INVALID_STATE, "there is no request for you to answer")
                update = _state("off", "declined", user_id)
            session = await node.sessions.save(session, recording=update)
        await self._announce(session, user_id, msg.get("id"))

    async def _agree(self, session: Session, current: dict[str, Any], user_id: str,
                     answering: bool) -> dict[str, Any]:
        state = current["state"]
        if state == "on":
            raise ProtocolError(ErrorCode.INVALID_STATE, "the session is being recorded already")
        if state == "requested" and user_id in current["consented"]:
            raise ProtocolError(ErrorCode.INVALID_STATE, "you asked already: the other side answers")
        if state == "off":
            if answering:
                raise ProtocolError(ErrorCode.INVALID_STATE, "there is no request for you to answer")
            return {**_state("requested", "requested", user_id), "requested_by": user_id,
                    "consented": [user_id]}
        # Both agreed: the media plane starts recording now.
        if self.plane is None:
            raise ProtocolError(ErrorCode.MEDIA_UNAVAILABLE, "this server has no media plane")
        reply = await self.plane.request(StartRecording(session.id))
        if not isinstance(reply, RecordingStarted):
            raise MediaError("media_failed", f"the media plane answered {reply.kind!r}")
        if self.archive is not None:
            await self.archive.started(session, reply.recording_id, reply.started_at)
        log.info("session %s: recording %s started with both consents", session.id,
                 reply.recording_id)
        return {**_state("on", "consented", user_id), "requested_by": current["requested_by"],
                "consented": [current["requested_by"], user_id],
                "recording_id": reply.recording_id, "since": reply.started_at}

    async def _stop(self, session: Session, current: dict[str, Any],
                    user_id: str) -> dict[str, Any]:
        if current["state"] == "off":
            raise ProtocolError(ErrorCode.INVALID_STATE, "the session is not being recorded")
        if current["state"] == "on" and self.plane is not None:
            await self.plane.request(StopRecording(session.id, f"stopped_by:{user_id}"))
        return _state("off", "stopped", user_id)

    async def _announce(self, session: Session, origin: str, ref: Any) -> None:
        for user in session.participants:
            await self.node.backend.deliver(user, message(
                "recording.state", ref if user == origin else None,
                session_id=session.id, recording=session.recording,
            ))

    # --- the session ends, the media plane reports ----------------------------------------------

    def on_transition(self, transition: Transition) -> None:
        session = transition.session
        if transition.state is State.ENDED and session.recording.get("state", "off") != "off":
            # The room's close stops the recorder; the state follows outside the transition
            # (whose caller holds the expert's lock).
            self._spawn(self._turn_off(session.id, "session_ended", None))

    def _on_event(self, event: Message) -> None:
        if isinstance(event, (RecordingFile, RecordingFailed, RecordingStopped)):
            self._events.put_nowait(event)

    async def _work(self) -> None:
        while True:
            event = await self._events.get()
            try:
                await self._handle_event(event)
            except Exception:
                log.exception("failed to handle recording event %s", event.kind)

    async def _handle_event(self, event: Message) -> None:
        session = await self.node.sessions.get(getattr(event, "room_id", ""))
        if isinstance(event, RecordingFile):
            if self.archive is not None:
                await self.archive.file_ready(session, event)
        elif isinstance(event, RecordingFailed):
            log.warning("session %s: recording %s of %s failed: %s", event.room_id,
                        event.recording_id, event.participant_id, event.reason)
            # A recording with a side missing is not what both agreed to: stop it all.
            if self.plane is not None:
                with contextlib.suppress(MediaError):
                    await self.plane.request(StopRecording(event.room_id, "recording_failed"))
            await self._turn_off(event.room_id, "recording_failed", event.recording_id)
        elif isinstance(event, RecordingStopped):
            if self.archive is not None:
                await self.archive.stopped(session, event)
            await self._turn_off(event.room_id, event.reason, event.recording_id)

    async def _turn_off(self, session_id: str, reason: str, recording_id: str | None) -> None:
        """The recording is over without anyone asking (the session ended, a file failed)."""
        node = self.node
        session = await node.sessions.get(session_id)
        if session is None:
            return
        async with node.backend.lock(f"expert:{session.expert_id}"):
            session = await node.sessions.get(session_id)
            if session is None or session.recording.get("state", "off") == "off":
                return
            if recording_id is not None and session.recording.get("recording_id") != recording_id:
                return  # an earlier recording of the session, already off
            session = await node.sessions.save(session, recording=_state("off", reason, ""))
        await self._announce(session, "", None)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _state(state: str, reason: str, by: str) -> dict[str, Any]:
    return {"state": state, "consented": [], "since": time.time(), "reason": reason, "by": by}


def setup(app: web.Application) -> None:
    """Register after the signalling node, and after billing's archive (both must have started)."""
    app.cleanup_ctx.append(recording_ctx)


async def recording_ctx(app: web.Application) -> AsyncIterator[None]:
    plane = app.get(MEDIA_PLANE)
    control = RecordingControl(app[SIGNALLING], plane, app.get(RECORDING_ARCHIVE))
    app[RECORDING_CONTROL] = control
    control.start()
    if plane is not None and app[keys.SETTINGS].recording_enabled:
        # Files a killed process left unfinished are made whole, indexed and announced.
        await plane.request(RecoverRecordings())
    try:
        yield
    finally:
        await control.close()


RECORDING_CONTROL: web.AppKey[RecordingControl] = web.AppKey("recording_control")
# Set by billing (billing/recording_archive.py) before the control starts; none: nothing is kept.
RECORDING_ARCHIVE: web.AppKey[RecordingArchive] = web.AppKey("recording_archive")
