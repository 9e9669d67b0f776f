"""One recording file, written by a thread of its own: encoded frames in, Matroska out, no codec.

The event loop hands frames over with ``write`` (an append to a bounded queue, never a wait); the
thread muxes them with PyAV into WebM (VP8/Opus) or Matroska (anything with H.264). When the
queue is full the disk is not keeping up: the file is given up (``failed``), never the call.

Crash safety: clusters close every ``CLUSTER_MS`` and are written to the file as they close, and
the muxer holds no packet back for interleaving longer than ``INTERLEAVE_US``; so a process that
dies leaves a file that plays up to about a second before the end. Beside the file, a
``.recording`` marker (JSON: what the file is) exists while it is being written: a marker found at
start-up means the file was never finalized, and ``recover`` remuxes it (cues, duration) then.
"""

from __future__ import annotations

import collections
import fractions
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)

CLUSTER_MS = 500
INTERLEAVE_US = 500_000
MS = fractions.Fraction(1, 1000)
MARKER_SUFFIX = ".recording"
_CLOSE = None  # the sentinel that ends the queue


@dataclass(frozen=True)
class TrackSpec:
    """What the container header says of one track."""

    kind: str  # "audio" | "video"
    codec: str  # "vp8" | "h264" | "opus"
    width: int = 0
    height: int = 0
    sample_rate: int = 48000

    def __post_init__(self) -> None:
        if self.codec not in ("vp8", "h264", "opus"):
            raise ValueError(f"cannot record {self.codec}")


@dataclass(frozen=True)
class FileResult:
    """A finished file (``error`` empty) or one given up (``error`` says why; no file left)."""

    path: Path
    size: int = 0
    duration: float = 0.0  # seconds, from the first frame to the end of the last
    sha256: str = ""
    frames: int = 0
    error: str = ""


def container_format(tracks: list[TrackSpec]) -> tuple[str, str]:
    """(libavformat muxer, file extension): WebM when every codec is WebM's, else Matroska."""
    if all(t.codec in ("vp8", "opus") for t in tracks):
        return "webm", ".webm"
    return "matroska", ".mkv"


def format_for(path: Path) -> str:
    """The muxer a recording file was written with, from its name."""
    return "webm" if path.suffix == ".webm" else "matroska"


def marker_path(path: Path) -> Path:
    return path.with_name(path.name + MARKER_SUFFIX)


class RecordingWriter:
    def __init__(self, path: Path, tracks: list[TrackSpec], done: Callable[[FileResult], None],
                 *, metadata: dict[str, Any] | None = None, max_queued: int = 1500) -> None:
        if not tracks:
            raise ValueError("a recording file needs at least one track")
        self.path = path
        self.tracks = tracks
        self.max_queued = max_queued  # frames: ~15 s of 30 fps video plus 50 fps audio
        self.failed = ""
        self._done = done  # called once, on the writer's thread
        self._metadata = metadata or {}
        self._queue: collections.deque[tuple[int, int, bytes, bool] | None] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"recording {path.name}",
                                        daemon=True)
        self._thread.start()

    # --- the event loop's side ---------------------------------------------------------------

    def write(self, track: int, pts_ms: int, data: bytes, keyframe: bool) -> bool:
        """Queue one frame; False (and the file given up) when the disk is too far behind."""
        if self.failed or self._closing:
            return False
        if len(self._queue) >= self.max_queued:
            self.failed = "disk_too_slow"
            self.close()
            return False
        self._queue.append((track, pts_ms, data, keyframe))
        if len(self._queue) == 1:
            with self._wake:
                self._wake.notify()
        return True

    def close(self) -> None:
        """Finish the file (or, failed, remove it); ``done`` follows from the thread."""
        if self._closing:
            return
        self._closing = True
        self._queue.append(_CLOSE)
        with self._wake:
            self._wake.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            result = self._write_file()
        except Exception as exc:  # a full disk, a broken file system: the call goes on
            logger.exception("recording %s failed", self.path)
            _remove(self.path)
            result = FileResult(self.path, error=f"write_error: {exc}")
        _remove(marker_path(self.path))
        self._done(result)

    def _next_batch(self) -> list[tuple[int, int, bytes, bool] | None]:
        with self._wake:
            while not self._queue:
                self._wake.wait()
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        return batch

    def _write_file(self) -> FileResult:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker = marker_path(self.path)
        _create_private(marker)
        marker.write_text(json.dumps({**self._metadata, "file": self.path.name}))
        _create_private(self.path)
        fmt, _ = container_format(self.tracks)
        container = av.open(str(self.path), "w", format=fmt, options={
            "cluster_time_limit": str(CLUSTER_MS), "max_interleave_delta": str(INTERLEAVE_US),
            "flush_packets": "1",  # each closed cluster reaches the file at once
        })
        try:
            streams = [_add_stream(container, spec) for spec in self.tracks]
            first = last = None
            frames = 0
            while True:
                for item in self._next_batch():
                    if item is None or self.failed:
                        container.close()
                        if self.failed:
                            _remove(self.path)
                            return FileResult(self.path, error=self.failed)
                        end = (last or 0) - (first or 0)
                        return _finished(self.path, end / 1000, frames)
                    track, pts, data, keyframe = item
                    packet = av.Packet(data)
                    packet.stream = streams[track]
                    packet.time_base = MS
                    packet.pts = packet.dts = pts
                    packet.is_keyframe = keyframe
                    container.mux(packet)
                    frames += 1
                    first = pts if first is None else min(first, pts)
                    frame_end = pts + (20 if self.tracks[track].kind == "audio" else 33)
                    last = frame_end if last is None else max(last, frame_end)
        except BaseException:
            container.close()
            raise


def _add_stream(container: Any, spec: TrackSpec) -> Any:
    if spec.kind == "video":
        # H.264 needs no extradata: the muxer builds CodecPrivate (avcC) from the SPS and PPS in
        # the first frame, which is always a keyframe that carries them.
        stream = container.add_mux_stream(spec.codec, width=spec.width, height=spec.height)
    else:
        # WebM wants an OpusHead as CodecPrivate, and PyAV can set no extradata on a mux-only
        # stream: libopus, opened but never given a frame, writes a valid one (stereo, 48 kHz,
        # as RFC 7587 signals every Opus stream; a mono packet decodes in it all the same).
        stream = container.add_stream("libopus", rate=spec.sample_rate, layout="stereo")
    stream.time_base = MS
    return stream


def _finished(path: Path, duration: float, frames: int) -> FileResult:
    return FileResult(path, path.stat().st_size, round(duration, 3), file_digest(path), frames)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _create_private(path: Path) -> None:
    """Create (or empty) ``path`` readable by this user only, before anything writes to it."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))


def _remove(path: Path) -> None:
    """Remove what may not exist, or may not be reachable (the failure being reported)."""
    try:
        path.unlink()
    except OSError:
        pass
