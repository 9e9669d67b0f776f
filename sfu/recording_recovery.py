"""Finalize the recording files a killed process left behind.

A file being written has a ``.recording`` marker beside it (see recording_writer). At start-up a
marker means the process died mid-file: the file plays up to about its last second, but has no
cues and no duration. It is remuxed (packets copied as they are, nothing decoded) into a complete
file that replaces it, and announced like any finished file, with ``recovered`` set.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import av

from sfu.api import RecordingFile
from sfu.recording_writer import MARKER_SUFFIX, file_digest, format_for

logger = logging.getLogger(__name__)


def recover(root: Path) -> list[RecordingFile]:
    """Every unfinished file under ``root`` made whole; blocking (run it off the event loop)."""
    found = []
    for marker in sorted(root.glob(f"*/*{MARKER_SUFFIX}")):
        path = marker.with_name(marker.name[: -len(MARKER_SUFFIX)])
        try:
            about = json.loads(marker.read_text())
            event = _recover_one(root, path, about)
        except (OSError, ValueError, KeyError, av.FFmpegError) as exc:
            logger.error("recording %s cannot be recovered (%s): left as it is", path, exc)
            event = None
        marker.unlink(missing_ok=True)
        if event is not None:
            found.append(event)
            logger.info("recording %s recovered: %.1f s", path, event.duration)
    return found


def _recover_one(root: Path, path: Path, about: dict[str, object]) -> RecordingFile | None:
    if not path.exists() or path.stat().st_size == 0:
        path.unlink(missing_ok=True)
        return None
    temporary = path.with_name(path.name + ".remux")
    fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.close(fd)
    first: int | None = None
    last = 0
    with av.open(str(path)) as source, \
            av.open(str(temporary), "w", format=format_for(path)) as target:
        streams = {s.index: target.add_stream_from_template(s) for s in source.streams}
        try:
            for packet in source.demux():
                if packet.dts is None or packet.pts is None:
                    continue  # the demuxer's end-of-stream marker
                assert packet.time_base is not None
                pts_ms = int(packet.pts * packet.time_base * 1000)
                end_ms = pts_ms + int((packet.duration or 0) * packet.time_base * 1000)
                first = pts_ms if first is None else min(first, pts_ms)
                last = max(last, end_ms)
                packet.stream = streams[packet.stream_index]
                target.mux(packet)
        except av.FFmpegError:
            pass  # the cut-off end of the file: everything before it is kept
    os.replace(temporary, path)
    size, digest = path.stat().st_size, file_digest(path)
    return RecordingFile(
        str(about["room_id"]), str(about["recording_id"]), str(about["participant_id"]),
        str(path.relative_to(root)), size, round((last - (first or 0)) / 1000, 3), digest,
        float(str(about["started_at"])), recovered=True,
    )
