"""LocalMediaPlane: the MediaPlane protocol served by routers in this process.

The control plane holds one of these (built from plain MediaOptions), sends it the requests of
sfu.api and listens to its events. Nothing here knows about users, tokens or money.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sfu import aiortc_hooks
from sfu.api import (
    AddIceCandidate,
    Answer,
    AnswerToServerOffer,
    CloseRoom,
    EventHandler,
    GetStats,
    Leave,
    MediaError,
    Message,
    Offer,
    Ok,
    OpenRoom,
    RecordingStarted,
    RecoverRecordings,
    RequestKeyframe,
    StartRecording,
    Stats,
    StopRecording,
    Subscribe,
    TransportClosed,
)
from sfu.events import EventFanout
from sfu.gc_policy import CollectAfterDepartures
from sfu.options import MediaOptions
from sfu.recorder import Recorder, new_recording_id
from sfu.recording_recovery import recover
from sfu.router import Router
from sfu.udp_mux import UdpMux

logger = logging.getLogger(__name__)


class LocalMediaPlane:
    def __init__(self, options: MediaOptions | None = None) -> None:
        self.options = options or MediaOptions()
        self.rooms: dict[str, Router] = {}
        # every connection of this plane on one UDP socket per address, unless asked otherwise
        self.mux = None if self.options.per_connection_sockets else UdpMux(self.options.media_port)
        self.collector = CollectAfterDepartures(self._open_transports)
        self._events = EventFanout()
        self._closed = False
        self._dispatch: dict[type[Message], Callable[[Any], Awaitable[Message]]] = {
            OpenRoom: self._open_room,
            CloseRoom: self._close_room,
            Offer: self._offer,
            Subscribe: self._subscribe,
            AnswerToServerOffer: self._answer,
            AddIceCandidate: self._candidate,
            RequestKeyframe: self._keyframe,
            Leave: self._leave,
            GetStats: self._stats,
            StartRecording: self._start_recording,
            StopRecording: self._stop_recording,
            RecoverRecordings: self._recover_recordings,
        }

    def start(self) -> None:
        """Bind a fixed media port, then take this process's media settings, before the first
        room: receivers build their bitrate estimators lazily (``aiortc_hooks``), and full garbage
        collections wait for departures (``gc_policy``; ``close`` gives the threshold back).
        Building a plane changes nothing outside it.

        Raises ``MediaError("media_unavailable")`` naming the port when it is taken (and changes
        nothing then): a start that fails, rather than every call's media failing later."""
        if self.mux is not None and self.mux.port:
            try:
                self.mux.bind(self.options.network().addresses())
            except OSError as exc:
                raise MediaError("media_unavailable", str(exc.strerror)) from exc
        aiortc_hooks.lazy_bitrate_estimators()
        aiortc_hooks.lazy_track_queues()
        self.collector.install()

    def on_event(self, handler: EventHandler) -> None:
        self._events.add(handler)

    async def request(self, message: Message) -> Message:
        if self._closed:
            raise MediaError("closed", "the media plane is shut down")
        handler = self._dispatch.get(type(message))
        if handler is None:
            raise MediaError("bad_message", f"{type(message).__name__} is not a request")
        return await handler(message)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for router in list(self.rooms.values()):
            await router.close("shutdown")
        self.rooms.clear()
        if self.mux is not None:
            self.mux.close()
        self.collector.uninstall()
        self._events.close()

    def _open_transports(self) -> int:
        return sum(len(p.transports()) for r in self.rooms.values() for p in r.participants.values())

    # --- events ------------------------------------------------------------------------------

    def _emit(self, event: Message) -> None:
        if isinstance(event, TransportClosed):
            self.collector.transport_closed()
        self._events.emit(event)

    # --- requests ----------------------------------------------------------------------------

    def _room(self, room_id: str) -> Router:
        router = self.rooms.get(room_id) if isinstance(room_id, str) else None
        if router is None:
            raise MediaError("unknown_room", f"no open room {room_id!r}")
        return router

    async def _open_room(self, message: OpenRoom) -> Message:
        if not isinstance(message.room_id, str) or not message.room_id:
            raise MediaError("bad_room", "room_id must be a non-empty string")
        if not isinstance(message.app_data, dict):
            raise MediaError("bad_message", "app_data must be an object")
        self.collector.start()
        if message.room_id not in self.rooms:
            self.rooms[message.room_id] = Router(
                message.room_id, self.options, self._emit, dict(message.app_data), self.mux
            )
            logger.info("room %s opened", message.room_id)
        return Ok()

    async def _close_room(self, message: CloseRoom) -> Message:
        router = self.rooms.pop(message.room_id, None) if isinstance(message.room_id, str) else None
        if router is not None:
            await router.close(message.reason)
            logger.info("room %s closed (%s)", message.room_id, message.reason)
        return Ok()

    async def _offer(self, message: Offer) -> Message:
        router = self._room(message.room_id)
        transport = router.transport(message.participant_id, message.transport)
        answer = Answer(await transport.handle_offer(message.sdp))
        if message.replaces and message.transport == "publish":
            await router.hand_over(message.replaces, message.participant_id)
        return answer

    async def _subscribe(self, message: Subscribe) -> Message:
        if not isinstance(message.chat, bool):
            raise MediaError("bad_message", "chat must be true or false")
        await self._room(message.room_id).subscribe(message.participant_id, message.chat)
        return Ok()

    async def _answer(self, message: AnswerToServerOffer) -> Message:
        router = self._room(message.room_id)
        transport = router.existing_transport(message.participant_id, message.transport)
        await router.answer(transport, message.sdp, message.offer_id)
        return Ok()

    async def _candidate(self, message: AddIceCandidate) -> Message:
        router = self._room(message.room_id)
        transport = router.existing_transport(message.participant_id, message.transport)
        await transport.add_candidate(message.candidate)
        return Ok()

    async def _keyframe(self, message: RequestKeyframe) -> Message:
        router = self._room(message.room_id)
        for producer in router.producers_for(message.participant_id):
            producer.request_keyframe()
        return Ok()

    async def _leave(self, message: Leave) -> Message:
        await self._room(message.room_id).leave(message.participant_id, message.transport)
        return Ok()

    async def _stats(self, message: GetStats) -> Message:
        return Stats(message.room_id, self._room(message.room_id).stats())

    async def _start_recording(self, message: StartRecording) -> Message:
        router = self._room(message.room_id)
        if not self.options.recordings_dir:
            raise MediaError("recording_disabled", "this media node has no recordings directory")
        if router.recorder is not None and not router.recorder.stopping:
            raise MediaError("already_recording", f"room {message.room_id} is being recorded")
        recording_id = new_recording_id()
        recorder = Recorder(message.room_id, recording_id,
                            Path(self.options.recordings_dir) / recording_id, self._emit)
        router.recorder = recorder
        recorder.add_producers(list(router.producers.values()))
        logger.info("room %s: recording %s started", message.room_id, recording_id)
        return RecordingStarted(message.room_id, recording_id, recorder.started_at)

    async def _stop_recording(self, message: StopRecording) -> Message:
        router = self._room(message.room_id)
        if router.recorder is not None:
            router.recorder.stop(message.reason)
            logger.info("room %s: recording %s stopped (%s)", message.room_id,
                        router.recorder.id, message.reason)
        return Ok()

    async def _recover_recordings(self, message: RecoverRecordings) -> Message:
        if self.options.recordings_dir:
            root = Path(self.options.recordings_dir)
            for event in await asyncio.get_running_loop().run_in_executor(None, recover, root):
                self._emit(event)
        return Ok()
