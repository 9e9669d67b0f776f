"""A room's recorder: one more consumer of each producer, whose "subscriber" is a file.

mediasoup's and LiveKit's egress model: recording a track is consuming it. Each recorded track
gets an ordinary ``Consumer`` (so it starts on a keyframe, re-bases across a publisher's
reconnect, and its NACKs take the usual path to the publisher) whose packets go, instead of to a
socket, through a small jitter window and a depacketizer into whole encoded frames. Nothing is
decoded or encoded. The frames go to a ``RecordingWriter`` thread, so the packet path never waits
on the disk; a disk that falls behind loses the recording (``RecordingFailed``), not the call. A
room that is not recording has no recorder: it costs nothing per packet.

One file per participant, not one per session: each file is an ordinary audio+video file any
player opens (a player shows one video track of a multi-track file, and the two sides may even use
different codecs, WebM for one and Matroska for the other); and a container's tracks are fixed
when its header is written, so a participant who starts publishing (or adds a track) later starts
a file of its own rather than being impossible to add. Every file's clock is the recording's:
time 0 is ``started_at`` in all of them, so the files of one recording play side by side in sync.

Timing: a frame's time comes from its RTP timestamp through the sender reports (so the audio and
video of one participant stay aligned as their sender captured them), offset to this machine's
clock by the smallest delay seen. Where the mapping and the frames' arrivals disagree by more
than ``MAX_SKEW``, the frames wait for the sender's next report: one that keeps the mapping says
they were only late (a loaded machine), one that moves it that the timestamps did not count a
pause (some senders' do not advance while nothing is sent), and the new mapping places them.
Without a report for ``HOLD`` seconds of arrivals, the arrivals anchor the frames (the least
delayed of the held ones, less how far the track arrived behind the participant's others while
the reports placed it: an encoder's lag must not shift it against the audio). A shorter
disagreement that the next frames catch up on was a late delivery (a busy machine, a burst after
a stall): the timestamps stand. Frames wait (in memory, ``HOLD`` at most) while that is unclear.
So a pause leaves a gap in the file, and what follows plays in sync.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfu.api import Message, RecordingFailed, RecordingFile, RecordingStopped
from sfu.consumer import Consumer
from sfu.depacketizer import Depacketizer, MalformedPayload, depacketizer_for
from sfu.forwarder import ExtensionLayout
from sfu.jitter import JitterWindow
from sfu.producer import Producer
from sfu.recording_writer import FileResult, RecordingWriter, TrackSpec, container_format

logger = logging.getLogger(__name__)

RECORDABLE = ("vp8", "h264", "opus")
MAX_SKEW = 0.3  # seconds between a frame's mapped time and its arrival that make us wonder...
# ...until a sender report made since settles it, or for this many seconds of arrivals at
# most, after which the arrivals are believed (senders report every 0.5-1.5 s: aiortc, browsers'
# video; browsers' audio only every 5 s)
HOLD = 2.0
MAX_HELD = 120  # frames held meanwhile, at most
HEADER_WAIT = 3.0  # seconds a file waits for its video's first keyframe before it opens without
MAX_PENDING = 400  # frames held while a file waits for its header
NTP_UNIX = 2_208_988_800
_TS = struct.Struct("!I")
_SR = struct.Struct("!QI")


def new_recording_id() -> str:
    return uuid.uuid4().hex


@dataclass
class _Clock:
    """Where a participant's sender clock sits against ours: the smallest (arrival - sender time)
    seen, i.e. the least-delayed frame's view."""

    offset: float | None = None

    def note(self, delay: float) -> None:
        if self.offset is None or delay < self.offset:
            self.offset = delay


class TrackRecorder:
    """One producer's track on its way into a participant's file."""

    def __init__(self, producer: Producer, segment: Segment, index: int) -> None:
        self.producer = producer
        self.kind = producer.kind
        self.codec = producer.codec.name
        self.index = index
        self._segment = segment
        self._depacketizer: Depacketizer = depacketizer_for(self.codec)
        self._clock_rate = producer.codec.clock_rate
        self.consumer = Consumer(
            f"recorder:{producer.id}", producer, "recorder",
            ssrc=random.getrandbits(32), rtx_ssrc=random.getrandbits(32),
            send_rtp=self._packet, send_rtcp=self._rtcp,
        )
        self.consumer.on_close.append(self._consumer_closed)
        self._window = JitterWindow(self._release, self.consumer.retransmit)
        self._parts: list[bytes] = []
        self._frame_ts = -1
        self._broken = False
        self._need_keyframe = self.kind == "video"
        self.picture: tuple[int, int] | None = None
        # timing (see the module docstring)
        self._ts_ext = -1  # the newest timestamp, unwrapped
        # The sender's clock at RTP time 0 of this stream, the least any report implied: a
        # report pairs "now" with the last timestamp sent, so a sender that is late (a busy
        # encoder) only ever makes it later, never earlier.
        self._sr_base: float | None = None
        self._anchor: tuple[float, int] | None = None  # (arrival, unwrapped RTP)
        # this track's smallest delay from its sender's clock to our arrival, while mapped
        # through the reports: how much later than the participant's other tracks it arrives
        self._delay: float | None = None
        # publisher reports made before the frame with this (unwrapped) timestamp was sent are
        # not believed: set where the timestamps turned out not to count a pause
        self._stale_ts = -1
        self._replaying = False  # the producer's cached run is being handed over
        # frames whose timestamp and arrival disagree, waiting for what that means:
        # (unwrapped timestamp, arrival, frame, keyframe)
        self._held: list[tuple[int, float, bytes, bool]] = []
        self._last_pts = -1
        self.frames = 0
        self.dropped = 0

    def start(self) -> None:
        consumer = self.consumer
        self.producer.add_consumer(consumer)
        consumer.configure(self.producer.codec.payload_type, None, ExtensionLayout())
        # A consumer starts on the producer's cached run since its newest keyframe when there is
        # one: captured before the recording began (before both sides consented), so it is
        # dropped, and the file starts on a fresh keyframe: the consumer waits for one as after a
        # publisher's reconnect, and it is asked for as for a joiner (soon, and again while none
        # comes), not behind the subscribers' keyframe throttle.
        self._replaying = True
        try:
            consumer.resume()
        finally:
            self._replaying = False
        if self.kind == "video":
            self._need_keyframe = True
            consumer.restart()
            self.producer.request_join_keyframe()

    def close(self) -> None:
        self._window.flush()
        if self._held:
            self._release_held(reanchor=False)
        self.consumer.close("recording_stopped")

    def _consumer_closed(self, consumer: Consumer, reason: str) -> None:
        if reason == "producer_closed":
            self._window.flush()
            if self._held:
                self._release_held(reanchor=False)
            self._segment.track_ended(self)

    # --- from the consumer: the per-packet path ----------------------------------------------

    def _packet(self, packet: bytes) -> bool:
        self._window.push(packet[2] << 8 | packet[3], packet, int(time.time() * 1000))
        return True

    def _rtcp(self, data: bytes) -> bool:
        if len(data) >= 20 and data[1] == 200:  # our consumer's sender report
            self._sender_clock(*_SR.unpack_from(data, 8))
        return True

    def _sender_clock(self, ntp: int, rtp_ts: int) -> None:
        """Our consumer's NTP↔RTP mapping, unless it extrapolates from a publisher's report
        older than our last re-anchoring (one sent during a pause maps what follows wrongly)."""
        if self._believed() and self._ts_ext >= 0:
            base = ntp / 2**32 - NTP_UNIX - self._unwrap(rtp_ts) / self._clock_rate
            if self._sr_base is None or base < self._sr_base:
                self._sr_base = base

    def _believed(self) -> bool:
        """Was the publisher's last report (which our consumer's mapping extrapolates from)
        made after the frames since the last re-anchoring were sent? Its RTP time says so, not
        when it arrived: RTCP overtaken by RTP on a busy machine arrives late."""
        producer = self.producer
        if not producer.sr_ntp:
            return self._stale_ts < 0
        return self._unwrap(self.consumer.outgoing_timestamp(producer.sr_rtp)) >= self._stale_ts

    def _unwrap(self, ts: int) -> int:
        if self._ts_ext < 0:
            return ts
        delta = (ts - self._ts_ext) & 0xFFFFFFFF
        return self._ts_ext + (delta - 0x100000000 if delta >= 0x80000000 else delta)

    def _release(self, packet: bytes, hole: bool) -> None:
        ts = _TS.unpack_from(packet, 4)[0]
        if hole:
            self._lost()
        if ts != self._frame_ts:
            if self._parts:  # the previous frame never saw its marker
                self._lost()
            self._frame_ts = ts
            self._ts_ext = self._unwrap(ts)
        end = len(packet) - (packet[-1] if packet[0] & 0x20 else 0)
        payload = packet[12:end]
        if not payload:
            return  # padding only
        depacketizer = self._depacketizer
        if not self._parts and not depacketizer.frame_start(payload):
            self._broken = True
        try:
            self._parts.append(depacketizer.unwrap(payload))
        except MalformedPayload:
            self._broken = True
        if packet[1] & 0x80 or self.kind == "audio":
            self._finish()

    def _lost(self) -> None:
        """Packets of this stream are gone for good: drop the frame in progress, and for video
        every frame until the next keyframe (they would refer to what was lost)."""
        self._parts = []
        self._broken = False
        self.dropped += 1
        if self.kind == "video" and not self._need_keyframe:
            self._need_keyframe = True
            self.consumer.keyframe_requested()

    def _finish(self) -> None:
        parts, broken = self._parts, self._broken
        self._parts = []
        self._broken = False
        if self._replaying:
            return
        if broken:
            self._lost()
            return
        frame = parts[0] if len(parts) == 1 else b"".join(parts)
        keyframe = self._depacketizer.is_keyframe(frame)
        if self._need_keyframe:
            if not keyframe:
                self.dropped += 1
                return
            self._need_keyframe = False
        if keyframe and self.kind == "video":
            frame = self._depacketizer.with_parameters(frame)
            self.picture = self.picture or self._depacketizer.picture_size(frame)
        self._timed(frame, keyframe)

    def _timed(self, frame: bytes, keyframe: bool) -> None:
        """Give the frame its capture time and pass it on; or hold it while its timestamp and
        its arrival disagree, until that turns out to be a late delivery (the next frames catch
        up, or a new sender report keeps the mapping: the timestamps were right) or a pause the
        timestamps did not count (a new report moves the mapping; or none comes and the
        disagreement lasts ``HOLD`` of arrivals: the arrivals are right)."""
        arrival = time.time()
        ts = self._ts_ext
        held = self._held
        at = self._mapped(ts, arrival)
        if at is None:
            self._anchor = (arrival, ts)
            at = arrival
        elif abs(at - arrival) > MAX_SKEW:
            held.append((ts, arrival, frame, keyframe))
            if self._settled_by_report(held[0][0]):
                self._release_held(reanchor=False)
            elif arrival - held[0][1] >= HOLD or len(held) > MAX_HELD:
                self._release_held(reanchor=True)
            return
        if held:
            self._release_held(reanchor=False)
        self._segment.frame(self, at, frame, keyframe)

    def _settled_by_report(self, first_ts: int) -> bool:
        """Has the publisher reported since it sent the first held frame (timestamp
        ``first_ts``)? Then its mapping says what the held frames are: the
        same as ours, they were late; another, the timestamps did not count a pause, and that
        mapping stands from now on. (A report that arrives after the frame but was made before
        it, as RTCP overtaken by RTP on a busy machine, says nothing about it.)"""
        producer = self.producer
        if not producer.sr_ntp or self._unwrap(self.consumer.outgoing_timestamp(producer.sr_rtp)) < first_ts:
            return False
        ntp, rtp_ts = self.consumer.report_clock()
        base = ntp / 2**32 - NTP_UNIX - self._unwrap(rtp_ts) / self._clock_rate
        if self._sr_base is None or abs(base - self._sr_base) > MAX_SKEW:
            self._sr_base = base
            self._anchor = None
            self._stale_ts = first_ts
        return True

    def _release_held(self, reanchor: bool) -> None:
        held, self._held = self._held, []
        if reanchor:
            # The held frames' arrivals, as they imply the first one's: the least delayed of
            # them (one late delivery on a busy machine must not move them all), less what this
            # track arrives behind the participant's others (an encoder's lag), so that they
            # play in sync with the tracks the reports still place.
            first_ts = held[0][0]
            implied = min(arrival - (ts - first_ts) / self._clock_rate for ts, arrival, _, _ in held)
            offset = self._segment.clock.offset
            behind = self._delay - offset if self._delay is not None and offset is not None else 0.0
            self._anchor = (implied - behind, first_ts)
            self._sr_base = None
            self._stale_ts = first_ts
        for ts, arrival, frame, keyframe in held:
            at = self._mapped(ts, arrival)
            self._segment.frame(self, arrival if at is None else at, frame, keyframe)

    def _mapped(self, ts: int, arrival: float) -> float | None:
        """The wall-clock time (Unix seconds, our clock) the frame with timestamp ``ts`` was
        captured at: through the sender reports when there are any, else from the anchor."""
        if self._sr_base is None and self._anchor is None:
            # The first frame: our consumer's mapping places it at once (from the publisher's
            # own report when there is one), rather than a second later on the router's tick.
            # (Not through a report: the consumer sends none before its first packet is
            # counted, and a one-packet frame is complete before that.)
            self._sender_clock(*self.consumer.report_clock())
        base = self._sr_base
        if base is not None:
            sent = base + ts / self._clock_rate
            clock = self._segment.clock
            clock.note(arrival - sent)
            if self._delay is None or arrival - sent < self._delay:
                self._delay = arrival - sent
            return sent + (clock.offset or 0.0)
        if self._anchor is not None:
            return self._anchor[0] + (ts - self._anchor[1]) / self._clock_rate
        return None

    def pts_ms(self, at: float, started_at: float) -> int:
        """Milliseconds into the recording, rising strictly (a muxer's rule) per track."""
        pts = max(int((at - started_at) * 1000), self._last_pts + 1, 0)
        self._last_pts = pts
        return pts

    def spec(self) -> TrackSpec:
        width, height = self.picture or (0, 0)
        return TrackSpec(self.kind, self.codec, width, height, self._clock_rate)


@dataclass
class _Pending:
    track: TrackRecorder
    at: float
    data: bytes
    keyframe: bool


class Segment:
    """One participant's file: its tracks, held until each has what the header needs (video:
    a first keyframe, for the picture size), then streamed to a writer thread."""

    def __init__(self, recorder: Recorder, participant_id: str, number: int) -> None:
        self.recorder = recorder
        self.participant_id = participant_id
        self.number = number
        self.clock = _Clock()
        self.tracks: list[TrackRecorder] = []
        self.writer: RecordingWriter | None = None
        self.closed = False
        self._pending: list[_Pending] = []
        self._ready: set[TrackRecorder] = set()
        self._written: list[TrackRecorder] = []  # the file's tracks, in its order
        self._timer: asyncio.TimerHandle | None = None
        self._given_up = False

    def start(self, producers: list[Producer]) -> None:
        self._timer = asyncio.get_running_loop().call_later(HEADER_WAIT, self._open)
        tracks = [TrackRecorder(producer, self, i) for i, producer in enumerate(producers)]
        self.tracks.extend(tracks)
        for track in tracks:  # only now: a cached keyframe replayed must not open the file alone
            track.start()

    @property
    def accepts_tracks(self) -> bool:
        """Until its header is written, a file can take another track."""
        return self.writer is None and not self.closed

    def add(self, producer: Producer) -> None:
        track = TrackRecorder(producer, self, len(self.tracks))
        self.tracks.append(track)
        track.start()

    def frame(self, track: TrackRecorder, at: float, data: bytes, keyframe: bool) -> None:
        if self._given_up:
            return
        writer = self.writer
        if writer is not None:
            if track in self._written:
                index = self._written.index(track)
                if not writer.write(index, track.pts_ms(at, self.recorder.started_at), data,
                                    keyframe):
                    self._give_up(writer.failed)
            return
        if self.closed:
            return
        self._ready.add(track)
        self._pending.append(_Pending(track, at, data, keyframe))
        if len(self._ready) == len(self.tracks) or len(self._pending) > MAX_PENDING:
            self._open()

    def _open(self) -> None:
        if self.writer is not None or self.closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._written = [t for t in self.tracks if t in self._ready]
        if not self._written:
            # Nothing arrived at all: wait on, the file opens with the first frames.
            self._timer = asyncio.get_running_loop().call_later(HEADER_WAIT, self._open)
            return
        specs = [t.spec() for t in self._written]
        _, extension = container_format(specs)
        path = self.recorder.directory / f"{self.number:03d}{extension}"
        loop = asyncio.get_running_loop()

        def done(result: FileResult) -> None:  # on the writer's thread
            loop.call_soon_threadsafe(self._done, result)

        self.writer = RecordingWriter(path, specs, done,
                                      metadata=self.recorder.describe(self.participant_id))
        pending, self._pending = self._pending, []
        for item in pending:
            self.frame(item.track, item.at, item.data, item.keyframe)

    def track_ended(self, track: TrackRecorder) -> None:
        if track in self.tracks:
            self.tracks.remove(track)
        if not self.tracks:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for track in self.tracks:
            track.close()
        if self.writer is None and self._pending:
            self.closed = False  # let what arrived still make a file
            self._open()
            self.closed = True
        if self.writer is not None:
            self.writer.close()
        else:
            self.recorder.segment_done(self)

    def _give_up(self, reason: str) -> None:
        self._given_up = True
        logger.warning("recording %s: %s's file given up (%s)", self.recorder.id,
                       self.participant_id, reason)
        for track in self.tracks:
            track.close()
        self.tracks = []

    def _done(self, result: FileResult) -> None:
        self.recorder.file_done(self, result)


@dataclass
class Recorder:
    """The recording of one room: a segment per participant that publishes while it runs."""

    room_id: str
    id: str
    directory: Path
    emit: Callable[[Message], None]
    started_at: float = field(default_factory=time.time)
    stopping: bool = False
    reason: str = ""
    segments: dict[str, Segment] = field(default_factory=dict)
    _open_segments: set[Segment] = field(default_factory=set)
    _count: int = 0

    def describe(self, participant_id: str) -> dict[str, Any]:
        return {"room_id": self.room_id, "recording_id": self.id,
                "participant_id": participant_id, "started_at": self.started_at}

    def add_producers(self, producers: list[Producer]) -> None:
        """Record these producers: a participant already recording starts a new file with all
        its tracks (a container's tracks are fixed when it starts)."""
        if self.stopping:
            return
        by_participant: dict[str, list[Producer]] = {}
        for producer in producers:
            if producer.codec.name in RECORDABLE and not producer.closed:
                by_participant.setdefault(producer.participant_id, []).append(producer)
        for participant_id, added in by_participant.items():
            current = self.segments.get(participant_id)
            if current is not None and current.accepts_tracks:
                for producer in added:
                    current.add(producer)
                continue
            tracks = list(added)
            if current is not None:
                tracks = [t.producer for t in current.tracks if not t.producer.closed] + added
                current.close()
            self._count += 1
            segment = Segment(self, participant_id, self._count)
            self.segments[participant_id] = segment
            self._open_segments.add(segment)
            segment.start(tracks)

    def stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.reason = reason
        for segment in list(self.segments.values()):
            segment.close()
        self._maybe_stopped()

    def file_done(self, segment: Segment, result: FileResult) -> None:
        if result.error:
            self.emit(RecordingFailed(self.room_id, self.id, segment.participant_id,
                                      result.error))
        else:
            self.emit(RecordingFile(
                self.room_id, self.id, segment.participant_id,
                str(result.path.relative_to(self.directory.parent)), result.size,
                result.duration, result.sha256, self.started_at,
            ))
        self.segment_done(segment)

    def segment_done(self, segment: Segment) -> None:
        self._open_segments.discard(segment)
        if self.segments.get(segment.participant_id) is segment and not self.stopping:
            del self.segments[segment.participant_id]  # its file failed: that side stops here
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        if self.stopping and not self._open_segments:
            self.emit(RecordingStopped(self.room_id, self.id, self.reason))
