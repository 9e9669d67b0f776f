"""A media server process that records, for the crash test: ``python -m tests.recording_child DIR``.

It opens a room, publishes counter frames and beeps with aiortc over 127.0.0.1, starts recording
into DIR and prints one JSON line (recording id, start time) once frames are being written; then
runs until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from sfu.api import OpenRoom, RecordingStarted, StartRecording
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.recording_clients import RecordedPublisher


async def main(directory: str) -> None:
    plane = LocalMediaPlane(MediaOptions(loopback=True, recordings_dir=directory))
    await plane.request(OpenRoom("room-1"))
    publisher = RecordedPublisher(plane, "room-1", "alice")
    await publisher.start()
    await asyncio.sleep(1.5)
    started = await plane.request(StartRecording("room-1"))
    assert isinstance(started, RecordingStarted)
    print(json.dumps({"recording_id": started.recording_id, "started_at": started.started_at,
                      "now": time.time()}), flush=True)
    while True:
        await asyncio.sleep(1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
