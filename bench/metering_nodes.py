"""``expertcall bench metering --database postgresql://… --nodes N``: metering on N node processes.

Each node is a process of its own with its own Meter, connection pool and Redis relay, writing
to the one PostgreSQL database (``python -m bench.metering_nodes node ...``); the sessions are
split between them (every session has exactly one meter, as in a cluster). The relays share the
outbox (one at a time, the store's advisory lock) and publish to one stream; the reference
consumer is a process of its own. Reported: unit lateness over every node (p50/p99/max, all and
steady state), units per second, and the exactly-once check: the ledger's units, the outbox's
events and the consumer's count agree, and no unit id was charged twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from signalling.billing.meter import Meter, UnitCharged
from signalling.billing.money import Money
from signalling.billing.posting import CHARGE
from signalling.billing.pricing import BillingPolicy, Price
from signalling.billing.relay import RedisRelay
from signalling.billing.session_billing import claim_nothing
from signalling.billing.store import BillingStore
from signalling.billing.store_postgres import PostgresBillingStore
from signalling.core.event_loop import install_event_loop
from signalling.core.postgres import connect

from . import redis_client
from .metering_report import by_second, consumed, summary

ROOT = Path(__file__).resolve().parent.parent


async def run_events(store: BillingStore, after: int, run_id: str) -> int:
    """The outbox rows of this run's sessions past cursor ``after``. Counted, not taken as
    ``last_seq() - after``: PostgreSQL's identity skips values (an insert that meets ON CONFLICT
    DO NOTHING, a rolled-back transaction), and other writers to the database add rows."""
    n = 0
    while page := await store.events_after(after, 1000):
        n += sum(1 for row in page if row.id.startswith(f"{run_id}-"))
        after = page[-1].seq
    return n


async def node(args: dict[str, Any]) -> dict[str, Any]:
    """One node: meter ``args["count"]`` sessions from ``args["first"]``, return its samples."""
    charged: list[tuple[float, float]] = []
    ending = False

    def on_unit(unit: UnitCharged) -> None:
        if not ending:
            charged.append((unit.at, time.time() - unit.at))

    pool = await connect(args["database"], max_size=4)
    store = await PostgresBillingStore.open(pool)
    meter = Meter(store, node_id=args["node_id"], on_unit=on_unit)
    # As the application's nodes do: claim nothing at start. Without a claim a Meter takes over
    # every open session in the database: the other node's live ones when this process comes up
    # after start_at, and an earlier run's leftovers on both nodes at once.
    await meter.start(claim_nothing)
    redis = redis_client.connect(args["redis"])  # (run() checked that it answers)
    relay = RedisRelay(meter.outbox, redis, args["stream"], batch=2000, poll_seconds=0.05)
    relay.start()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    policy = BillingPolicy(unit_seconds=args["unit_seconds"])
    price = Price.per_minute(Money(25, "USD"))
    run, first, count, ramp = args["run"], args["first"], args["count"], args["ramp"]
    await asyncio.sleep(max(0.0, args["start_at"] - time.time()))
    started = time.time()
    slices = max(1, int(ramp * 20))
    for k in range(slices):
        for i in range(first + k * count // slices, first + (k + 1) * count // slices):
            now = time.time()
            sid = f"{run}-{i}"
            await meter.started(sid, f"e{i % 100}", f"c{i}", price, policy, at=now, fence=1)
            await meter.media_live(sid, at=now)
        await asyncio.sleep(max(0.0, started + (k + 1) * ramp / slices - time.time()))
    ramp_done = time.time()  # later than start_at + ramp when the node could not open them that fast
    ramp_end = max(args["start_at"] + ramp, ramp_done)
    await asyncio.sleep(max(0.0, ramp_end + args["duration"] - time.time()))
    ending = True
    for i in range(first, first + count):
        await meter.ended(f"{run}-{i}", reason="hangup")
    await meter.close()
    await relay.close(flush_timeout=120)
    await redis.aclose()
    await pool.close()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "node_id": args["node_id"],
        "ramp_done": ramp_done,
        "steady_end": ramp_end + args["duration"],
        "charged": charged,
        "cpu_seconds": round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 2),
        "published": relay.published,
    }


async def run(
    *, sessions: int, duration: float, unit_seconds: int, redis_url: str, database: str, nodes: int,
    ramp_seconds: float | None = None,
) -> dict[str, Any]:
    ramp = ramp_seconds if ramp_seconds is not None else max(float(unit_seconds), sessions / 1000)
    redis = await redis_client.connected(redis_url)
    workdir = Path(tempfile.mkdtemp(prefix="expertcall-bench-metering-nodes-"))
    run_id = f"bench{uuid.uuid4().hex[:8]}"
    stream = f"bench:{run_id}:metering"
    # The tables, before the nodes race to make them.
    pool = await connect(database, max_size=2)
    store = await PostgresBillingStore.open(pool)
    seq_before = await store.last_seq()
    consumer_db = workdir / "consumer.sqlite3"
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signalling.app.cli", "billing", "consume", "--group", "bench", "--redis", redis_url,
        "--db", str(consumer_db), "--stream", stream, "--name", "bench-1", "--batch", "2000",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    start_at = time.time() + 3.0  # every node connected and ready before the first session
    children = []
    for n in range(nodes):
        args = {
            "node_id": f"bench-node-{n + 1}", "database": database, "redis": redis_url, "stream": stream,
            "run": run_id, "first": n * sessions // nodes, "count": (n + 1) * sessions // nodes - n * sessions // nodes,
            "ramp": ramp, "duration": duration, "unit_seconds": unit_seconds, "start_at": start_at,
        }
        out = workdir / f"node-{n + 1}.json"
        children.append((out, await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.metering_nodes", json.dumps(args), str(out), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )))
    counted_at_ramp = counted_at_end = 0
    await asyncio.sleep(max(0.0, start_at + ramp - time.time()))
    counted_at_ramp = consumed(consumer_db, f"{run_id}-")
    await asyncio.sleep(duration)
    counted_at_end = consumed(consumer_db, f"{run_id}-")
    results = []
    for out, child in children:
        _, err = await child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"bench node failed: {err.decode()[-2000:]}")
        results.append(json.loads(out.read_text()))
    # This run's events on both sides: the relays also publish whatever else the outbox held.
    total_events = await run_events(store, seq_before, run_id)
    deadline = time.time() + 120
    while consumed(consumer_db, f"{run_id}-") < total_events and time.time() < deadline:
        await asyncio.sleep(0.2)
    consumer.send_signal(signal.SIGTERM)
    await consumer.communicate()
    # what the ledger charged this run's sessions, through the billing store's own interface
    charges = [p for i in range(sessions) for p in await store.postings(f"{run_id}-{i}") if p.kind == CHARGE]
    ledger_units, distinct_units = len(charges), len({p.id for p in charges})
    counted = consumed(consumer_db, f"{run_id}-")
    await pool.close()
    await redis.delete(stream)
    await redis.aclose()
    charged = [tuple(c) for r in results for c in r["charged"]]
    # The steady state: every session open on every node (a node that opened its sessions slower
    # than the ramp asked starts its steady state when it is done) until the first node ends.
    ramp_end = max(start_at + ramp, *(r["ramp_done"] for r in results))
    steady_end = min(r["steady_end"] for r in results)
    steady = [late for due, late in charged if ramp_end <= due < steady_end]
    return {
        "bench": "metering",
        "database": "postgresql",
        "nodes": nodes,
        "sessions": sessions,
        "duration_s": duration,
        "unit_seconds": unit_seconds,
        "ramp_s": ramp,
        "ramp_achieved_s": round(ramp_end - start_at, 2),
        "steady_s": round(steady_end - ramp_end, 2),
        "units_charged_by_timer": len(charged),
        "ledger_units": ledger_units,
        "units_doubled": ledger_units - distinct_units,
        "lateness_all": summary([late for _, late in charged]),
        "lateness_steady": summary(steady),
        "lateness_max_ms_by_second": by_second([(d, late) for d, late in charged], start_at),
        "units_per_second_steady": round(len(steady) / max(1e-9, steady_end - ramp_end), 1),
        "consumer_events_per_second": round((counted_at_end - counted_at_ramp) / duration, 1),
        "consumer": {
            "events_in_outbox": total_events,
            "events_counted": counted,
            "exactly_once": counted == total_events and ledger_units == distinct_units,
        },
        "per_node": [{"node_id": r["node_id"], "units": len(r["charged"]), "cpu_seconds": r["cpu_seconds"],
                      "published": r["published"]} for r in results],
        "load_average": os.getloadavg(),
    }


if __name__ == "__main__":
    install_event_loop()
    result = asyncio.run(node(json.loads(sys.argv[1])))
    Path(sys.argv[2]).write_text(json.dumps(result))
