"""The reference the SFU is measured against: a plain aiortc relay built on ``MediaRelay``.

``MediaRelayPlane`` speaks the same ``sfu.api`` contract as the SFU, so the same control plane
(WHIP/WHEP) and the same bench clients drive both. It does what an aiortc application does
without packet-level forwarding: each published track is decoded once, and every subscriber's
sender encodes it again. ``python -m bench.mediarelay --port P --secret S`` serves it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.exceptions import (
    InternalError,
    InvalidAccessError,
    InvalidStateError,
    OperationError,
)

from sfu.api import (
    AddIceCandidate,
    Answer,
    CloseRoom,
    EventHandler,
    GetStats,
    Leave,
    MediaError,
    Message,
    Offer,
    Ok,
    OpenRoom,
    RecoverRecordings,
    RequestKeyframe,
    Stats,
    TransportClosed,
)

from .loopback import no_ice_servers, use_loopback_ice

log = logging.getLogger(__name__)


@dataclass
class _Participant:
    connections: dict[str, RTCPeerConnection] = field(default_factory=dict)
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    sinks: list[MediaBlackhole] = field(default_factory=list)


@dataclass
class _Room:
    participants: dict[str, _Participant] = field(default_factory=dict)

    def published(self, kind: str) -> MediaStreamTrack | None:
        for participant in self.participants.values():
            for track in participant.tracks:
                if track.kind == kind and track.readyState == "live":
                    return track
        return None


class MediaRelayPlane:
    """Decode once per published track, encode once per subscriber (aiortc's MediaRelay)."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._relay = MediaRelay()
        self._handlers: list[EventHandler] = []

    def on_event(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    async def request(self, message: Message) -> Message:
        if isinstance(message, OpenRoom):
            self._rooms.setdefault(message.room_id, _Room())
            return Ok()
        if isinstance(message, CloseRoom):
            room = self._rooms.pop(message.room_id, None)
            for participant_id in list(room.participants if room else ()):
                await self._leave(room, message.room_id, participant_id, None)  # type: ignore[arg-type]
            return Ok()
        if isinstance(message, Offer):
            return await self._offer(message)
        if isinstance(message, Leave):
            room = self._room(message.room_id)
            await self._leave(room, message.room_id, message.participant_id, message.transport)
            return Ok()
        if isinstance(message, (AddIceCandidate, RequestKeyframe, RecoverRecordings)):
            return Ok()  # RecoverRecordings: it never records, so it left no file unfinished
        if isinstance(message, GetStats):
            return Stats(message.room_id, [])
        raise MediaError("unsupported", f"the reference relay does not handle {message.kind}")

    async def close(self) -> None:
        for room_id in list(self._rooms):
            await self.request(CloseRoom(room_id))

    def _room(self, room_id: str) -> _Room:
        room = self._rooms.get(room_id)
        if room is None:
            raise MediaError("unknown_room", f"no room {room_id}")
        return room

    async def _offer(self, offer: Offer) -> Answer:
        room = self._room(offer.room_id)
        participant = room.participants.setdefault(offer.participant_id, _Participant())
        if offer.transport in participant.connections:
            raise MediaError("unsupported", "the reference relay does not renegotiate")
        pc = RTCPeerConnection(no_ice_servers())
        participant.connections[offer.transport] = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            participant.tracks.append(track)
            # Drain the decoded frames even while nobody watches, as a relay must.
            sink = MediaBlackhole()
            sink.addTrack(self._relay.subscribe(track, buffered=False))
            participant.sinks.append(sink)
            asyncio.ensure_future(sink.start())

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._leave(room, offer.room_id, offer.participant_id, offer.transport)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            if offer.transport == "subscribe":
                for transceiver in pc.getTransceivers():
                    source = room.published(transceiver.kind)
                    if source is not None:
                        # Buffered: the decoder hands frames over in bursts, and an unbuffered
                        # proxy would drop some, flattering the relay with a lower frame rate.
                        pc.addTrack(self._relay.subscribe(source, buffered=True))
            await pc.setLocalDescription(await pc.createAnswer())
        except OperationError as exc:
            await self._leave(room, offer.room_id, offer.participant_id, offer.transport)
            raise MediaError("unsupported_codec", str(exc)) from None
        except (ValueError, InternalError, InvalidAccessError, InvalidStateError) as exc:
            await self._leave(room, offer.room_id, offer.participant_id, offer.transport)
            raise MediaError("bad_sdp", f"the offer could not be applied: {exc}") from None
        if offer.replaces:  # the old publisher goes; its viewers are not moved (no renegotiation)
            await self._leave(room, offer.room_id, offer.replaces, None)
        return Answer(pc.localDescription.sdp)

    async def _leave(self, room: _Room, room_id: str, participant_id: str, transport: str | None) -> None:
        participant = room.participants.get(participant_id)
        if participant is None:
            return
        kinds = [transport] if transport else list(participant.connections)
        for kind in kinds:
            pc = participant.connections.pop(kind, None)
            if pc is None:
                continue
            if kind == "publish":
                for sink in participant.sinks:
                    await sink.stop()
                for track in participant.tracks:
                    track.stop()
                participant.sinks.clear()
                participant.tracks.clear()
            await pc.close()
            await self._emit(TransportClosed(room_id, participant_id, kind, "left"))  # type: ignore[arg-type]
        if not participant.connections:
            room.participants.pop(participant_id, None)

    async def _emit(self, event: Message) -> None:
        for handler in self._handlers:
            result = handler(event)
            if result is not None:
                await result


def main() -> None:
    parser = argparse.ArgumentParser(description="The MediaRelay reference server for the media bench")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()

    from signalling.app.factory import create_app
    from signalling.core.event_loop import install_event_loop
    from signalling.core.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    use_loopback_ice()
    install_event_loop()
    settings = Settings(port=args.port, secret=args.secret, data_dir=args.data_dir,
                        media_loopback=True, demo=False)
    app = create_app(settings, media=lambda _: MediaRelayPlane())
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, shutdown_timeout=5)


if __name__ == "__main__":
    main()
