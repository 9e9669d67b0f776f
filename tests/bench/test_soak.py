"""``expertcall bench soak`` end to end, tiny: a publisher reconnecting with padding-only RTX on
a lossy path, subscribers coming and going; every figure present, the server's log clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from signalling.app.cli import main

pytestmark = pytest.mark.integration


def test_tiny_soak_reports_freezes_errors_and_memory(tmp_path: Path) -> None:
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    result = CliRunner().invoke(main, [
        "bench", "soak", "--subscribers", "2", "--duration", "12", "--reconnect", "5",
        "--json", str(out), "--plot", str(png),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert png.stat().st_size > 1000
    assert report["publisher_reconnects"] >= 2 and report["padding_rtx_sent"] > 0
    assert report["injected"]["publisher_dropped"] > 0
    assert report["joins"] >= 2 and report["client_errors"] == []
    assert len(report["memory"]) >= 2 and report["memory"][0]["rss_kb"] > 0
    assert {"freezes_over_1s", "longest_freeze_s", "first_frame_s"} <= report.keys()
    # the publisher's reconnects and padding-only probes cost no subscriber an exception
    assert report["server_log"]["tracebacks"] == 0, report["server_log"]
