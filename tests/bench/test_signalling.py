"""``expertcall bench signalling`` end to end at a tiny size: behaviour, not speed.

Every figure is present and plausible and no step failed; how fast is for the bench itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.signalling import latency, split
from signalling.app.cli import main

pytestmark = pytest.mark.integration


def assert_latency(figure: dict[str, Any], count: int) -> None:
    assert figure["count"] == count
    assert 0 < figure["p50_ms"] <= figure["p99_ms"] <= figure["max_ms"] < 30_000


def test_tiny_run_pairs_every_pair_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "signalling.json"
    result = CliRunner().invoke(main, [
        "bench", "signalling", "--pairs", "3", "--rounds", "2", "--idle", "4", "--idle-hold", "1",
        "--backend", "memory", "--workers", "2", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert report["config"]["pairs"] == 3 and report["config"]["backend"] == "memory"

    pairing = report["pairing"]
    assert pairing["pairings"] == pairing["pairings_expected"] == 6
    assert_latency(pairing["connect_hello_ms"], 6)  # an expert and a client per pair
    assert_latency(pairing["request_to_ring_ms"], 6)
    assert_latency(pairing["ring_to_accepted_ms"], 6)
    assert pairing["pairings_per_second"] > 0
    assert 0 < pairing["server_cpu_seconds_per_second"] < 4
    assert 20 < pairing["server_rss_mb"] < 2000

    idle = report["idle"]
    assert idle["connections"] == 4
    assert_latency(idle["connect_hello_ms"], 4)
    assert idle["server_rss_after_mb"] > 0 and idle["rss_per_connection_kb"] is not None
    assert idle["hold_seconds"] >= 1 and idle["server_cpu_seconds_per_second"] >= 0

    [server] = report["servers"]
    assert server["rss_peak_mb"] >= server["rss_mb"] > 20 and server["cpu_seconds"] > 0
    assert len(report["load_average"]["before"]) == 3
    assert "pairings: 6/6" in result.stderr  # the progress line


def test_two_nodes_need_redis() -> None:
    result = CliRunner().invoke(main, ["bench", "signalling", "--pairs", "1", "--nodes", "2"])
    assert result.exit_code != 0 and "--backend redis" in result.output


def test_split_shares_work_evenly_and_drops_empty_shares() -> None:
    assert split(5, 2) == [(0, 2), (2, 3)]
    assert split(1, 3) == [(0, 1)]
    assert sum(count for _, count in split(2000, 3)) == 2000


def test_latency_percentiles_in_milliseconds() -> None:
    figure = latency([i / 1000 for i in range(1, 101)])
    assert figure == {"count": 100, "p50_ms": 51.0, "p99_ms": 100.0, "max_ms": 100.0}
    assert latency([])["p50_ms"] is None
