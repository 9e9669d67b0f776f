"""The media plane's contract: serialisable requests from the control plane, events back.

The control plane (signalling, billing) never touches an SFU object: it sends the requests below
and listens to the events. Every message is a frozen dataclass of plain values that survives
``to_dict``/``from_dict`` (and so JSON or msgpack), so that the SFU can run in this process today
and as one worker process per core, or on another machine, later — with the same messages.

A participant reaches the SFU over two peer connections ("transports"), as LiveKit does:
``publish`` (the client offers its tracks, the SFU answers) and ``subscribe`` (opened with
``Subscribe``: the SFU offers the other participants' tracks, the client answers). Keeping the directions apart means the SFU can
renegotiate a subscriber whenever someone publishes without ever racing the client's own offer.
WHIP uses a publish transport, WHEP a subscribe transport whose offer comes from the client.

See docs/media-api.md for the sequence of messages in a call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Literal, Protocol

TransportKind = Literal["publish", "subscribe"]


class MediaError(Exception):
    """A request the media plane refused. ``code`` is stable and reaches clients as is."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_REGISTRY: dict[str, type["Message"]] = {}


@dataclass(frozen=True)
class Message:
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _REGISTRY[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["kind"] = self.kind
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Message":
        data = dict(data)
        cls = _REGISTRY.get(data.pop("kind", ""))
        if cls is None:
            raise MediaError("bad_message", f"unknown media message kind {data.get('kind')!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:  # a required field is missing
            raise MediaError("bad_message", f"{cls.kind}: {exc}") from exc


# --- requests (control plane -> media plane) ------------------------------------------------


@dataclass(frozen=True)
class OpenRoom(Message):
    """Create the room for a session; idempotent. Replies ``Ok``."""

    kind: ClassVar[str] = "open_room"
    room_id: str
    app_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CloseRoom(Message):
    """Close a room and everything in it; idempotent. Replies ``Ok``."""

    kind: ClassVar[str] = "close_room"
    room_id: str
    reason: str = "closed"


@dataclass(frozen=True)
class Offer(Message):
    """A client's SDP offer for one of its transports. Replies ``Answer``.

    On a publish transport it carries the client's tracks; on a subscribe transport (WHEP) it asks
    for the room's tracks. An offer on a transport that exists is a renegotiation or an ICE
    restart (resume after a network drop).

    ``replaces``: on a publish transport, the participant whose publishing this one takes over
    (a WHIP encoder that reconnected without DELETE). Once the offer is answered that
    participant leaves, and each client-offered (WHEP) m-line that showed one of its tracks
    shows this participant's track of the same kind instead, from a keyframe.
    """

    kind: ClassVar[str] = "offer"
    room_id: str
    participant_id: str
    transport: TransportKind
    sdp: str
    replaces: str = ""


@dataclass(frozen=True)
class Subscribe(Message):
    """Open the participant's subscribe transport; the SFU's offer (every other participant's
    tracks, plus a "chat" data channel when ``chat``) follows as a ``ServerOffer`` event. Sent
    again after a resume, it replaces the transport (a fresh ICE/DTLS session) and states
    ``chat`` anew. Replies ``Ok``.

    ``chat=False``: a client that never chats gets no data channel, so the connection needs no
    SCTP association and its DTLS state is freed once media flows (``Transport.release_dtls``).
    With no track to offer yet, the ``ServerOffer`` then waits for the first one."""

    kind: ClassVar[str] = "subscribe"
    room_id: str
    participant_id: str
    chat: bool = True


@dataclass(frozen=True)
class AnswerToServerOffer(Message):
    """The client's SDP answer to a ``ServerOffer`` event. Replies ``Ok``."""

    kind: ClassVar[str] = "answer_to_server_offer"
    room_id: str
    participant_id: str
    transport: TransportKind
    sdp: str
    offer_id: int


@dataclass(frozen=True)
class AddIceCandidate(Message):
    """A trickled remote candidate (``candidate`` as in RTCIceCandidateInit, None = end). Replies ``Ok``."""

    kind: ClassVar[str] = "add_ice_candidate"
    room_id: str
    participant_id: str
    transport: TransportKind
    candidate: dict[str, Any] | None


@dataclass(frozen=True)
class RequestKeyframe(Message):
    """Ask every publisher in the room for a keyframe (after a resume, say). Replies ``Ok``."""

    kind: ClassVar[str] = "request_keyframe"
    room_id: str
    participant_id: str


@dataclass(frozen=True)
class Leave(Message):
    """Close a participant's transports (or one of them). Replies ``Ok``."""

    kind: ClassVar[str] = "leave"
    room_id: str
    participant_id: str
    transport: TransportKind | None = None


@dataclass(frozen=True)
class GetStats(Message):
    """Per-track statistics of a room. Replies ``Stats``."""

    kind: ClassVar[str] = "get_stats"
    room_id: str


@dataclass(frozen=True)
class StartRecording(Message):
    """Record every track of the room from now on (and tracks published later), one file per
    participant under the media plane's recordings directory; the control plane has checked
    consent. The recording's id (and so its files' place) is the media plane's choice. Replies
    ``RecordingStarted``; refused with ``recording_disabled`` (no directory configured) or
    ``already_recording``."""

    kind: ClassVar[str] = "start_recording"
    room_id: str


@dataclass(frozen=True)
class StopRecording(Message):
    """Stop the room's recording, if any; its files are finalized off the packet path and
    announced with ``RecordingFile`` events, then ``RecordingStopped``. Replies ``Ok``."""

    kind: ClassVar[str] = "stop_recording"
    room_id: str
    reason: str = "stopped"


@dataclass(frozen=True)
class RecoverRecordings(Message):
    """Finalize the files a killed process left unfinished (once, at start-up); each is announced
    as a ``RecordingFile`` with ``recovered`` set. Replies ``Ok``."""

    kind: ClassVar[str] = "recover_recordings"


REQUESTS: frozenset[type[Message]] = frozenset({
    OpenRoom, CloseRoom, Offer, Subscribe, AnswerToServerOffer, AddIceCandidate, RequestKeyframe, Leave,
    GetStats, StartRecording, StopRecording, RecoverRecordings,
})


# --- replies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ok(Message):
    kind: ClassVar[str] = "ok"


@dataclass(frozen=True)
class Answer(Message):
    kind: ClassVar[str] = "answer"
    sdp: str


@dataclass(frozen=True)
class Stats(Message):
    """``tracks``: one dict per track with participant_id, kind, direction, bitrate, packets,
    packets_lost, jitter, rtt (seconds, where known)."""

    kind: ClassVar[str] = "stats"
    room_id: str
    tracks: list[dict[str, Any]]


@dataclass(frozen=True)
class RecordingStarted(Message):
    """``started_at`` (Unix time) is time 0 of every file of the recording."""

    kind: ClassVar[str] = "recording_started"
    room_id: str
    recording_id: str
    started_at: float


# --- events (media plane -> control plane) --------------------------------------------------


@dataclass(frozen=True)
class ServerOffer(Message):
    """The SFU (re)negotiates a subscribe transport; answer with ``AnswerToServerOffer``.

    ``offer_id`` counts from 1 on each transport: 1 is the first offer of a new transport (a new
    ICE/DTLS connection, as after a ``Subscribe`` that replaced the old one), higher ids
    renegotiate the transport that exists. The signalling protocol tells clients so."""

    kind: ClassVar[str] = "server_offer"
    room_id: str
    participant_id: str
    transport: TransportKind
    sdp: str
    offer_id: int


@dataclass(frozen=True)
class MediaState(Message):
    """Whether a participant's published media is flowing, debounced.

    ``flowing`` turns true when ICE/DTLS is connected and RTP arrives, false when it stops
    (no RTP for the debounce time, ICE failed or the transport closed). ``at`` is a Unix time.
    """

    kind: ClassVar[str] = "media_state"
    room_id: str
    participant_id: str
    flowing: bool
    at: float
    reason: str = ""


@dataclass(frozen=True)
class ActiveSpeaker(Message):
    """The loudest participant changed (RFC 6464 audio levels); ``level`` in -dBov, 0 is loudest."""

    kind: ClassVar[str] = "active_speaker"
    room_id: str
    participant_id: str
    level: int


@dataclass(frozen=True)
class MediaQuality(Message):
    """A subscriber's video of one track was paused for congestion, or resumed (sfu/congestion.py).

    ``participant_id`` is the subscriber, ``publisher_id`` the participant whose ``track_id`` it
    is: both are told. ``estimate`` is the subscriber's share of its bandwidth estimate and
    ``bitrate`` the stream's (bps); ``fraction_lost`` is from its receiver reports (of 256).
    """

    kind: ClassVar[str] = "media_quality"
    room_id: str
    participant_id: str
    publisher_id: str
    track_id: str
    video_paused: bool
    reason: str  # "congestion" or "recovered"
    estimate: int
    bitrate: int
    fraction_lost: int


@dataclass(frozen=True)
class TransportClosed(Message):
    kind: ClassVar[str] = "transport_closed"
    room_id: str
    participant_id: str
    transport: TransportKind
    reason: str


@dataclass(frozen=True)
class RoomClosed(Message):
    kind: ClassVar[str] = "room_closed"
    room_id: str
    reason: str


@dataclass(frozen=True)
class RoomRestarted(Message):
    """The room's media started over: the process hosting it died and the room is open again,
    empty, with the same ``app_data``, elsewhere. Every transport of it is gone (no
    ``TransportClosed`` follows for them) and no ``MediaState`` will say so: participants publish
    and subscribe again from new connections, as after a resume."""

    kind: ClassVar[str] = "room_restarted"
    room_id: str
    reason: str


@dataclass(frozen=True)
class RecordingFile(Message):
    """A finished recording file: one participant's tracks. ``file`` is relative to the
    recordings directory; ``duration`` in seconds; ``sha256`` of the whole file."""

    kind: ClassVar[str] = "recording_file"
    room_id: str
    recording_id: str
    participant_id: str
    file: str
    size: int
    duration: float
    sha256: str
    started_at: float
    recovered: bool = False


@dataclass(frozen=True)
class RecordingFailed(Message):
    """A participant's file was given up (``disk_too_slow``, ``write_error: ...``) and removed;
    the call goes on."""

    kind: ClassVar[str] = "recording_failed"
    room_id: str
    recording_id: str
    participant_id: str
    reason: str


@dataclass(frozen=True)
class RecordingStopped(Message):
    """Every file of the recording is finished (or failed): no more events for it follow."""

    kind: ClassVar[str] = "recording_stopped"
    room_id: str
    recording_id: str
    reason: str


EventHandler = Callable[[Message], Awaitable[None] | None]


class MediaPlane(Protocol):
    """What the control plane holds: one of these, local or remote."""

    async def request(self, message: Message) -> Message:
        """Carry out one request; raises ``MediaError`` when it is refused."""
        ...

    def on_event(self, handler: EventHandler) -> None:
        """Call ``handler`` with every event (``ServerOffer``, ``MediaState``, ...)."""
        ...

    async def close(self) -> None: ...
