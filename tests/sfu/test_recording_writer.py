"""The writer thread: a disk that does not keep up loses the file, never blocks the caller."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sfu.recording_writer import FileResult, RecordingWriter, TrackSpec, container_format


def test_a_stuck_disk_gives_the_file_up_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "001.webm"
    os.mkfifo(path)  # opening it for writing blocks until a reader comes: a disk that hangs
    results: list[FileResult] = []
    finished = threading.Event()

    def done(result: FileResult) -> None:
        results.append(result)
        finished.set()

    writer = RecordingWriter(path, [TrackSpec("audio", "opus")], done, max_queued=10)
    accepted = [writer.write(0, i * 20, b"\xf8\xff\xfe", True) for i in range(12)]
    assert accepted == [True] * 10 + [False, False]
    assert writer.failed == "disk_too_slow"
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the disk comes back
    try:
        assert finished.wait(10)
    finally:
        os.close(reader)
    writer.join(5)
    (result,) = results
    assert result.error == "disk_too_slow"
    assert not path.exists()  # the given-up file is gone, with its marker
    assert not (tmp_path / "001.webm.recording").exists()


def test_a_write_error_is_reported_as_such(tmp_path: Path) -> None:
    results: list[FileResult] = []
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    writer = RecordingWriter(blocker / "001.webm", [TrackSpec("audio", "opus")], results.append)
    writer.close()
    writer.join(10)
    (result,) = results
    assert result.error.startswith("write_error")


def test_the_container_follows_the_codecs() -> None:
    assert container_format([TrackSpec("video", "vp8"), TrackSpec("audio", "opus")]) \
        == ("webm", ".webm")
    assert container_format([TrackSpec("video", "h264"), TrackSpec("audio", "opus")]) \
        == ("matroska", ".mkv")
