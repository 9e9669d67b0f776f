"""A publisher for recording tests whose media can be checked in the file afterwards.

Video frames carry a drawn counter (tests/media_clients) and the wall time each was captured is
kept; audio is silence with a 100 ms beep once a second, the wall time of each beep kept. So a
file's frames can be read back (which counters, at what time) and its audio and video compared
against what was captured when. ``pause_video`` stops the camera for a while, as a participant
turning it off.

A frame's capture time is when it was due (30 a second, from the track's start), a beep's when
its first sample was due (48000 a second): what a camera's and a microphone's clocks say, and
what the RTP timestamps say, however late this process's event loop gets to them on a busy
machine. Video timestamps follow the wall clock across a pause (as a browser's do) or, with
``counter_timestamps``, do not advance while paused (as aiortc's own tracks).

The sender reports are on the same capture clock (``CaptureClock``), as a browser's are: aiortc's
own pair a frame's RTP timestamp with the time its last packet was *sent*, so on a loaded machine
(an encoder thread or event loop running late) they claimed each stream was captured later than it
was, each by its own lag, and the recorder, which aligns audio and video by those reports, put
them up to a few hundred milliseconds apart: the sync tests failed under load, not the recorder.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender

from bench import client_hooks
from sfu.api import MediaPlane
from tests.media_clients import FPS, VIDEO_CLOCK, client_pc, draw_counter, prefer_codec, publish_offer, read_counter

BEEP_SECONDS = 0.1


class CaptureClock:
    """Makes a track's sender report the capture time of the last frame it sent, not its send
    time. ``sent`` is called first thing in the track's ``recv``, before any await: aiortc asks
    for the next frame right after the last one's packets went out and set its own pair, with no
    await in between (tests/bench/test_client_hooks.py), so no report goes out with that pair."""

    def __init__(self) -> None:
        self.sender: RTCRtpSender | None = None
        self.handed: float | None = None  # capture time (Unix) of the frame handed over last
        self._sent_ts: int | None = None

    def sent(self) -> None:
        """The frame handed over last has gone out (unless its encoder dropped it)."""
        sender = self.sender
        if sender is None or self.handed is None:
            return
        ts = client_hooks.last_sent_timestamp(sender)
        if ts != self._sent_ts:
            self._sent_ts = ts
            client_hooks.set_report_clock(sender, client_hooks.ntp_of(self.handed), ts)


class ClockedCounterTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, counter_timestamps: bool = False, late: float = 0.0) -> None:
        super().__init__()
        self.late = late  # seconds from a frame's capture to the encoder (a busy machine's lag)
        self.counter = 0
        self.captured: dict[int, float] = {}  # counter -> wall time it was due
        self.counter_timestamps = counter_timestamps
        self._start = 0.0  # monotonic
        self._wall = 0.0  # the wall clock at _start
        self._due = 0.0
        self._pause_until = 0.0
        self.clock = CaptureClock()

    def pause(self, seconds: float) -> None:
        self._pause_until = time.monotonic() + seconds

    async def recv(self) -> av.VideoFrame:
        self.clock.sent()
        now = time.monotonic()
        if not self._start:
            self._start = self._due = now
            self._wall = time.time()
        self._due = max(self._due, self._pause_until)
        due = self._due
        await asyncio.sleep(max(0.0, due + self.late - now))
        self._due += 1 / FPS
        frame = av.VideoFrame.from_ndarray(draw_counter(self.counter % 4096), format="rgb24")
        if self.counter_timestamps:
            frame.pts = self.counter * VIDEO_CLOCK // FPS
        else:
            frame.pts = round((due - self._start) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.captured[self.counter] = self._wall + (due - self._start)
        self.clock.handed = self.captured[self.counter]
        self.counter += 1
        return frame


class BeepTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.samples = 0
        self.beeps: list[float] = []  # wall time each beep's first sample was due
        self._start = 0.0
        self._wall = 0.0
        self.clock = CaptureClock()

    async def recv(self) -> av.AudioFrame:
        self.clock.sent()
        if not self._start:
            self._start = time.monotonic()
            self._wall = time.time()
        await asyncio.sleep(max(0.0, self._start + self.samples / 48000 - time.monotonic()))
        position = (self.samples / 48000) % 1.0
        beeping = 0.5 <= position < 0.5 + BEEP_SECONDS
        if beeping and position < 0.5 + 0.02:
            self.beeps.append(self._wall + self.samples / 48000)
        t = (np.arange(960) + self.samples) / 48000
        amplitude = 0.8 if beeping else 0.0
        pcm = (np.sin(2 * math.pi * 440 * t) * 32767 * amplitude).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.samples
        frame.time_base = fractions.Fraction(1, 48000)
        self.clock.handed = self._wall + self.samples / 48000
        self.samples += 960
        return frame


@dataclass
class RecordedPublisher:
    plane: MediaPlane
    room_id: str
    participant_id: str
    video_codec: str = "video/VP8"
    counter_timestamps: bool = False
    late: float = 0.0  # video frames reach the encoder this long after their capture
    pc: RTCPeerConnection = field(default_factory=client_pc)

    async def start(self) -> None:
        self.video = ClockedCounterTrack(self.counter_timestamps, self.late)
        self.audio = BeepTrack()
        video = self.pc.addTransceiver(self.video, direction="sendonly")
        prefer_codec(video, self.video_codec)
        self.video.clock.sender = video.sender
        self.audio.clock.sender = self.pc.addTransceiver(self.audio, direction="sendonly").sender
        await publish_offer(self.plane, self.pc, self.room_id, self.participant_id)

    async def close(self) -> None:
        await self.pc.close()


@dataclass
class FileContents:
    """What a recording file holds, read back with PyAV."""

    video_codec: str
    audio_codec: str
    duration: float  # seconds, the container's
    frames: list[tuple[float, int]]  # (seconds into the file, counter)
    beeps: list[float]  # seconds into the file where a beep starts
    audio_frames: int


def read_file(path: str) -> FileContents:
    with av.open(path) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        duration = (container.duration or 0) / 1_000_000
        frames = []
        for frame in container.decode(video):
            assert frame.time is not None
            frames.append((frame.time, read_counter(frame)))
    with av.open(path) as container:
        beeps = []
        audio_frames = 0
        loud_before = False
        for aframe in container.decode(container.streams.audio[0]):
            audio_frames += 1
            samples = aframe.to_ndarray().astype(np.float64)
            loud = float(np.sqrt(np.mean(samples**2))) > 0.05 * (32767 if samples.max() > 2 else 1)
            if loud and not loud_before:
                assert aframe.time is not None
                # the onset within the frame: the first sample above a tenth of the peak
                row = np.abs(samples[0])
                first = int(np.argmax(row > row.max() / 10))
                beeps.append(aframe.time + first / aframe.sample_rate)
            loud_before = loud
    return FileContents(video.codec_context.name, audio.codec_context.name, duration, frames,
                        beeps, audio_frames)
