"""SIGKILL the process running the Meter mid-session, start it again: no unit lost, none twice."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signalling.core.database import Database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def runner(data_dir: Path, t0: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.meter_runner", str(data_dir), "s", repr(t0)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def charged_units(db: Path) -> list[int]:
    try:
        with sqlite3.connect(db) as conn:
            return [r[0] for r in conn.execute(
                "SELECT unit_index FROM ledger_postings WHERE session_id = 's' ORDER BY unit_index")]
    except sqlite3.OperationalError:
        return []


def test_sigkill_mid_session_then_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db_path = tmp_path / Database.FILENAME
    t0 = time.time() + 1.0
    first = runner(tmp_path, t0)
    deadline = time.time() + 30
    while len(charged_units(db_path)) < 3 and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    killed_at = time.time()
    first.wait()
    at_kill = charged_units(db_path)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT ended_at FROM billing_sessions").fetchone()[0] is None
    assert 3 <= len(at_kill) < 6, f"killed too late to mean anything: {at_kill}"

    time.sleep(1.0)  # down across a unit boundary: that time must not be billed
    second = runner(tmp_path, t0)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0 and out.strip() == b"done", err.decode()[-2000:]

    with sqlite3.connect(db_path) as conn:
        intervals = conn.execute("SELECT start, end FROM billing_intervals ORDER BY idx").fetchall()
        events = [json.loads(b) for (b,) in conn.execute("SELECT body FROM metering_outbox ORDER BY seq")]
        unbalanced = conn.execute(
            "SELECT count(*) FROM (SELECT posting_id FROM ledger_entries GROUP BY posting_id HAVING sum(amount) != 0)"
        ).fetchone()[0]
    # The outage is a gap in the timeline: paused at or before the kill, live again after the restart.
    assert any(a[1] <= killed_at and b[0] >= killed_at + 1.0 for a, b in zip(intervals, intervals[1:]))
    live = sum(end - start for start, end in intervals)
    started_units = math.ceil(live)  # 1 s units: unit n started once live time passed n seconds
    # Every unit the timeline started is charged, exactly once, and nothing else.
    assert charged_units(db_path) == list(range(started_units))
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    assert [i for i in ids if ":unit:" in i] == [f"s:unit:{n}" for n in range(started_units)]
    assert [e["data"]["reason"] for e in events if e["type"].endswith(".paused")] == ["media", "meter_restart"]
    ended = events[-1]
    assert ended["id"] == "s:ended" and ended["data"]["units"] == started_units
    assert ended["data"]["total"] == 100 * started_units
    assert abs(ended["data"]["live_seconds"] - live) < 1e-6
    assert unbalanced == 0
