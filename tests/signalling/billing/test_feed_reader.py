"""The metering feed's reference reader, killed with SIGKILL and replaced, against a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signalling.billing.outbox import cloud_event, encode

from ...backends import REDIS_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
EVENTS = 12_000
DUPLICATES = 1_000  # re-published by a relay that crashed before marking them relayed


def consumer(db: Path, stream: str, name: str, claim_idle_ms: int = 30_000) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "signalling.app.cli", "billing", "consume", "--group", "g", "--redis", REDIS_URL,
         "--db", str(db), "--stream", stream, "--name", name, "--batch", "10", "--idle-exit", "2",
         "--claim-idle-ms", str(claim_idle_ms)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def counted(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM consumed_events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


async def test_killed_consumer_is_replaced_and_every_event_counts_once(tmp_path, redis, stream) -> None:  # type: ignore[no-untyped-def]
    events = [
        cloud_event(f"s{i % 97}:unit:{i}", "unit", f"s{i % 97}", 1.8e9 + i, {
            "expert_id": f"e{i % 7}", "client_id": "c", "currency": "USD", "unit_index": i,
            "amount": 100 + i % 13, "fee": 20, "payout": 80 + i % 13, "running_total": 0,
        })
        for i in range(EVENTS)
    ]
    for start in range(0, EVENTS, 1000):
        pipe = redis.pipeline(transaction=False)
        for e in events[start:start + 1000] + (events[start:start + DUPLICATES // 12] if start else []):
            pipe.xadd(stream, {"id": e["id"], "type": e["type"], "event": encode(e)})
        await pipe.execute()
    db = tmp_path / "consumer.sqlite3"

    first = consumer(db, stream, "c1")
    deadline = time.time() + 60
    while counted(db) < 500 and time.time() < deadline and first.poll() is None:
        await asyncio.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    at_kill = counted(db)
    assert 0 < at_kill < EVENTS, "the consumer must die mid-stream for this test to mean anything"

    # A different consumer takes over the dead one's pending entries (XAUTOCLAIM) and the rest.
    second = consumer(db, stream, "c2", claim_idle_ms=200)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err.decode()[-2000:]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM consumed_events").fetchone()[0] == EVENTS
        totals = dict(conn.execute("SELECT expert_id, gross FROM expert_totals").fetchall())
        assert conn.execute("SELECT count(*) FROM rejected_events").fetchone()[0] == 0
    expected: dict[str, int] = {}
    for e in events:
        expected[e["data"]["expert_id"]] = expected.get(e["data"]["expert_id"], 0) + e["data"]["amount"]
    assert totals == expected
    assert (await redis.xpending(stream, "g"))["pending"] == 0
