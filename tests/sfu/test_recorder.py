"""Recording through the SFU: aiortc publishes known frames, the file holds exactly them.

The recorder remuxes what the SFU forwards (no decoding); these tests decode the file afterwards
with PyAV and compare it with what the publisher captured, frame by frame and beep by beep.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sfu.api import (
    CloseRoom,
    MediaError,
    OpenRoom,
    RecordingFile,
    RecordingStarted,
    RecordingStopped,
    StartRecording,
    StopRecording,
)
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.media_clients import EventHub
from tests.recording_clients import RecordedPublisher, read_file

pytestmark = pytest.mark.integration


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[LocalMediaPlane]:
    plane = LocalMediaPlane(MediaOptions(loopback=True, recordings_dir=str(tmp_path / "rec")))
    yield plane
    await plane.close()


async def wait_for(hub: EventHub, kind: type, count: int = 1, timeout: float = 20) -> list:
    deadline = time.monotonic() + timeout
    while len(hub.of(kind)) < count:
        assert time.monotonic() < deadline, f"no {kind.__name__} event"
        await asyncio.sleep(0.05)
    return hub.of(kind)


async def record(plane: LocalMediaPlane, hub: EventHub, publisher: RecordedPublisher,
                 seconds: float, pause: tuple[float, float] | None = None
                 ) -> tuple[RecordingStarted, float, RecordingFile]:
    await asyncio.sleep(1.5)  # media flowing, sender reports sent, as in a call under way
    started = await plane.request(StartRecording(publisher.room_id))
    assert isinstance(started, RecordingStarted)
    if pause is None:
        await asyncio.sleep(seconds)
    else:
        at, length = pause
        await asyncio.sleep(at)
        publisher.video.pause(length)
        await asyncio.sleep(seconds - at)
    await plane.request(StopRecording(publisher.room_id))
    stopped_at = time.time()
    (done,) = await wait_for(hub, RecordingStopped)
    assert done.recording_id == started.recording_id
    (file,) = hub.of(RecordingFile)
    return started, stopped_at, file


def check_sync(publisher: RecordedPublisher, started: RecordingStarted,
               frames: list[tuple[float, int]], beeps: list[float]) -> None:
    """Every frame and beep sits in the file where it was captured, give or take one common
    delay; video and audio within 100 ms of each other. (Frames captured before the recording
    started, which a late encoder still sends after it, cannot go before time 0: the file starts
    with them.)"""
    captured = publisher.video.captured
    video_delays = [started.started_at + t - captured[c] for t, c in frames[5:]
                    if captured[c] >= started.started_at]
    audio_delays = []
    for beep in beeps:
        nearest = min(publisher.audio.beeps, key=lambda c: abs(started.started_at + beep - c))
        audio_delays.append(started.started_at + beep - nearest)
    assert audio_delays, "no beep found in the file"
    video = statistics.median(video_delays)
    audio = statistics.median(audio_delays)
    assert abs(video - audio) < 0.1, (video, audio)
    spread = [d for d in video_delays if abs(d - audio) >= 0.1]
    assert not spread, f"{len(spread)} frames out of sync with the audio: {spread[:5]}"
    assert all(abs(d - audio) < 0.1 for d in audio_delays), audio_delays


@pytest.mark.parametrize("late", [0.0, 0.2], ids=["prompt", "late-encoder"])
async def test_a_recording_holds_the_frames_sent_in_sync(plane: LocalMediaPlane, tmp_path: Path,
                                                          late: float) -> None:
    """``late``: the video reaches the encoder 200 ms after capture, as on a loaded machine
    (load 9-18 on two cores): the sender reports still say when each frame was captured (as a
    browser's do), so the file keeps it in sync with the audio."""
    hub = EventHub(plane)
    await plane.request(OpenRoom("room-1"))
    publisher = RecordedPublisher(plane, "room-1", "alice", late=late)
    try:
        await publisher.start()
        started, stopped_at, file = await record(plane, hub, publisher, 4.0)
    finally:
        await publisher.close()
        await plane.request(CloseRoom("room-1"))
    path = tmp_path / "rec" / file.file
    assert file.participant_id == "alice" and path.suffix == ".webm"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert file.size == path.stat().st_size
    contents = read_file(str(path))
    assert (contents.video_codec, contents.audio_codec) == ("vp8", "opus")
    wall = stopped_at - started.started_at
    assert abs(contents.duration - wall) < 0.5, (contents.duration, wall)
    assert abs(file.duration - contents.duration) < 0.1
    counters = [c for _, c in contents.frames]
    # every frame from the first recorded one on, in order, none missing, none repeated
    assert counters == list(range(counters[0], counters[0] + len(counters))), counters
    assert len(counters) >= 4.0 * 30 * 0.9
    assert contents.audio_frames >= 4.0 * 50 * 0.9
    check_sync(publisher, started, contents.frames, contents.beeps)


@pytest.mark.parametrize(("counter_timestamps", "late"), [(False, 0.0), (True, 0.0), (True, 0.2)],
                         ids=["browser-like", "aiortc-like", "aiortc-like-late-encoder"])
async def test_a_pause_leaves_a_gap_that_plays_in_sync(plane: LocalMediaPlane, tmp_path: Path,
                                                       counter_timestamps: bool, late: float) -> None:
    """Whether the sender's timestamps run on through the pause (a browser's capture clock) or
    stop with it (aiortc's tracks, whose sender reports then mislead until the next one), where
    the frames after the pause can only be placed by their arrivals: also when the video
    arrives 200 ms behind the audio, as from an encoder running late on a loaded machine."""
    hub = EventHub(plane)
    await plane.request(OpenRoom("room-1"))
    publisher = RecordedPublisher(plane, "room-1", "alice", counter_timestamps=counter_timestamps,
                                  late=late)
    try:
        await publisher.start()
        started, stopped_at, file = await record(plane, hub, publisher, 6.0, pause=(2.0, 2.0))
    finally:
        await publisher.close()
        await plane.request(CloseRoom("room-1"))
    contents = read_file(str(tmp_path / "rec" / file.file))
    times = [t for t, _ in contents.frames]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) > 1.7, "the camera's pause is not in the file"
    counters = [c for _, c in contents.frames]
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    check_sync(publisher, started, contents.frames, contents.beeps)


async def test_h264_goes_into_matroska(plane: LocalMediaPlane, tmp_path: Path) -> None:
    hub = EventHub(plane)
    await plane.request(OpenRoom("room-1"))
    publisher = RecordedPublisher(plane, "room-1", "alice", video_codec="video/H264")
    try:
        await publisher.start()
        started, stopped_at, file = await record(plane, hub, publisher, 3.0)
    finally:
        await publisher.close()
        await plane.request(CloseRoom("room-1"))
    assert file.file.endswith(".mkv")
    contents = read_file(str(tmp_path / "rec" / file.file))
    assert (contents.video_codec, contents.audio_codec) == ("h264", "opus")
    counters = [c for _, c in contents.frames]
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    assert len(counters) >= 3.0 * 30 * 0.8


async def test_recording_needs_a_directory_and_is_not_started_twice(tmp_path: Path) -> None:
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    try:
        await plane.request(OpenRoom("room-1"))
        with pytest.raises(MediaError) as refused:
            await plane.request(StartRecording("room-1"))
        assert refused.value.code == "recording_disabled"
    finally:
        await plane.close()
    plane = LocalMediaPlane(MediaOptions(loopback=True, recordings_dir=str(tmp_path)))
    try:
        await plane.request(OpenRoom("room-1"))
        await plane.request(StartRecording("room-1"))
        with pytest.raises(MediaError) as twice:
            await plane.request(StartRecording("room-1"))
        assert twice.value.code == "already_recording"
        with pytest.raises(MediaError) as unknown:
            await plane.request(StartRecording("room-2"))
        assert unknown.value.code == "unknown_room"
    finally:
        await plane.close()
