"""A media server killed mid-recording leaves a file that plays up to about the kill, and the next
start finalizes it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av

from sfu.api import RecordingFile, RecoverRecordings
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.media_clients import EventHub, read_counter


def last_decoded(path: Path) -> tuple[float, int]:
    """(time of the last decodable video frame, frames decoded) of a file, cut off or not."""
    last, count = 0.0, 0
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                assert frame.time is not None
                read_counter(frame)
                last, count = frame.time, count + 1
        except av.FFmpegError:
            pass  # the cut-off end
    return last, count


async def test_a_killed_recording_plays_to_near_the_kill_and_is_finalized_at_start(
        tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.recording_child", str(directory)],
        stdout=subprocess.PIPE, cwd=Path(__file__).parents[2],  # the repository
    )
    try:
        assert child.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
        started = json.loads(line)
        await asyncio.sleep(4.0)
        killed_at = time.time()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    (folder,) = directory.iterdir()
    assert folder.name == started["recording_id"]
    (path,) = [p for p in folder.iterdir() if p.suffix == ".webm"]
    assert (path.parent / (path.name + ".recording")).exists()
    last, count = last_decoded(path)
    assert count > 0
    assert last >= killed_at - started["started_at"] - 2.0, (last, killed_at - started["started_at"])

    plane = LocalMediaPlane(MediaOptions(loopback=True, recordings_dir=str(directory)))
    hub = EventHub(plane)
    try:
        await plane.request(RecoverRecordings())
    finally:
        await plane.close()
    (event,) = hub.of(RecordingFile)
    assert event.recovered and event.recording_id == started["recording_id"]
    assert event.participant_id == "alice" and event.file == f"{folder.name}/{path.name}"
    assert not (path.parent / (path.name + ".recording")).exists()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert event.size == path.stat().st_size
    with av.open(str(path)) as container:  # finalized: the container knows its duration
        assert container.duration is not None
        assert abs(container.duration / 1e6 - event.duration) < 0.2
    assert abs(event.duration - last) < 1.0
    recovered_last, recovered_count = last_decoded(path)
    assert recovered_count >= count - 1
