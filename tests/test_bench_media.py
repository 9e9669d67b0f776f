"""``expertcall bench media`` end to end: a tiny run against the SFU and the MediaRelay reference.

Behaviour, not speed: every figure is present and plausible; how fast is for the bench itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bench.media import pid_listening_on, process_cpu_seconds
from bench.report import summarise
from signalling.cli import main


def test_tiny_run_reports_every_figure_for_both_targets(tmp_path: Path) -> None:
    out, png = tmp_path / "media.json", tmp_path / "media.png"
    result = CliRunner().invoke(main, [
        "bench", "media", "--publishers", "1", "--subscribers", "2", "--duration", "3",
        "--reference", "mediarelay", "--audio", "--json", str(out), "--plot", str(png),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert png.stat().st_size > 1000
    assert [r["target"] for r in report["runs"]] == ["sfu", "mediarelay"]
    for run in report["runs"]:
        assert run["subscribers"] == run["connected"] == 2
        assert 2.5 < run["window_seconds"] < 10
        assert run["server_cpu_seconds_per_second"] > 0
        assert run["forwarded_packets_per_second"] > 0
        assert run["cpu_us_per_forwarded_packet"] > 0
        assert run["cpu_per_subscriber_stream"] > 0
        assert 0 < run["fps"]["min"] <= run["fps"]["max"] <= 31
        assert 100 < run["bitrate_kbps"]["p50"] < 3000
        assert 0 <= run["packet_loss_pct"] < 50
        ttff = run["time_to_first_frame_ms"]
        assert ttff["missing"] == 0 and 0 < ttff["p50"] <= ttff["p95"] < 10_000
        assert len(run["per_subscriber"]) == 2
        assert run["publisher_stats"][0]["frames_sent"] > 60
    sfu = report["runs"][0]
    # The SFU forwards the publisher's own frames, whose PictureIDs carry the send time.
    latency = sfu["added_latency_ms"]
    assert latency["samples"] > 0 and 0 <= latency["p50"] <= latency["p99"] < 1000
    assert float(report["reference"]["ratio_per_subscriber_stream"]["2"]) > 0
    assert "costs" in result.output


def test_summary_counts_loss_from_sequence_gaps() -> None:
    def counters(at: float, packets: int, expected: int, frames: int) -> dict[str, float]:
        return {"at": at, "packets": packets, "bytes": packets * 1000, "expected": expected,
                "frames": frames, "keyframes": 1, "audio_packets": 0}

    subscriber = {"ok": True, "error": "", "time_to_first_frame": 0.1, "latencies": [0.001, 0.002],
                  "before": counters(0, 0, 0, 0), "after": counters(2, 98, 100, 60)}
    run = summarise("sfu", 1, [subscriber], cpu_seconds=0.5, window=2.0, publisher_stats=[], fps=30)
    assert run["packet_loss_pct"] == 2.0
    assert run["fps"]["p50"] == 30.0
    assert run["cpu_us_per_forwarded_packet"] == round(0.5e6 / 98, 2)
    assert not run["clean"]  # 2 % loss is over the 1 % a clean run allows


def test_server_cpu_and_pid_are_read_from_proc() -> None:
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert pid_listening_on(s.getsockname()[1]) == os.getpid()
    assert process_cpu_seconds(os.getpid()) > 0
