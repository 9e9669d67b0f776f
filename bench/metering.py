"""``expertcall bench metering``: N concurrent metered sessions through the whole billing path.

Sessions open over a ramp (at least one unit, and at most 1000 sessions a second, so that their
units do not all fall due at once), run ``duration`` seconds more (the steady state), then end.
Every unit goes through the Meter's timer heap, the ledger and the outbox (one SQLite transaction
per tick), the Redis relay (XADD) and the reference consumer (XREADGROUP, its own SQLite, XACK).
The meter, ledger, outbox and relay share this process and
event loop, as on a single node; the consumer is its own process, as a billing system would be.

Reported: unit lateness (callback time minus the instant the unit became due) as p50/p99/max,
for all units and for the steady state after the ramp; events per second through the stream and
the consumer during the steady state; and whether the consumer counted each event exactly once.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click

from signalling.billing.checkpointer import WalCheckpointer
from signalling.billing.ledger import client_account
from signalling.billing.meter import Meter, UnitCharged
from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price
from signalling.billing.relay import RedisRelay
from signalling.billing.store_sqlite import SqliteBillingStore
from signalling.core.database import Database
from signalling.core.event_loop import install_event_loop

from . import metering_nodes, redis_client
from .metering_report import by_second, consumed, summary

ROOT = Path(__file__).resolve().parent.parent


async def run(
    *, sessions: int, duration: float, unit_seconds: int, redis_url: str, ramp_seconds: float | None = None
) -> dict[str, Any]:
    # A node does not see 10,000 sessions start in the same second: open them at up to 1000/s.
    ramp = ramp_seconds if ramp_seconds is not None else max(float(unit_seconds), sessions / 1000)
    redis = await redis_client.connected(redis_url) if redis_url else None
    workdir = Path(tempfile.mkdtemp(prefix="expertcall-bench-metering-"))
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    charged: list[tuple[float, float]] = []  # (due, lateness)

    ending = False
    charged_at_end = 0

    def on_unit(unit: UnitCharged) -> None:
        nonlocal charged_at_end
        if ending:
            charged_at_end += 1  # settled by ended(), not by the timer: no lateness to measure
            return
        now = time.time()
        charged.append((unit.at, now - unit.at))

    lags: list[float] = []
    probing = True

    async def probe_loop_lag() -> None:
        # How late the event loop runs a 10 ms sleep: separates a busy loop from a slow meter.
        while probing:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - before - 0.01)

    probe = asyncio.get_running_loop().create_task(probe_loop_lag())
    db = Database.in_dir(workdir)
    checkpointer = WalCheckpointer(db)
    checkpointer.start()
    meter = Meter(SqliteBillingStore(db), on_unit=on_unit)
    await meter.start()
    relay = consumer = None
    stream = f"bench:{uuid.uuid4().hex}:metering"
    consumer_db = workdir / "consumer.sqlite3"
    if redis:
        relay = RedisRelay(meter.outbox, redis, stream, batch=2000, poll_seconds=0.05)
        relay.start()
        consumer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signalling.app.cli", "billing", "consume", "--group", "bench", "--redis", redis_url,
            "--db", str(consumer_db), "--stream", stream, "--name", "bench-1", "--batch", "2000",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )

    policy = BillingPolicy(unit_seconds=unit_seconds)
    price = Price.per_minute(Money(25, "USD"))
    started = time.time()
    slices = max(1, int(ramp * 20))
    for k in range(slices):
        for i in range(k * sessions // slices, (k + 1) * sessions // slices):
            now = time.time()
            await meter.started(f"b{i}", f"e{i % 100}", f"c{i}", price, policy, at=now)
            await meter.media_live(f"b{i}", at=now)
            if i % 50 == 49:
                await asyncio.sleep(0)  # sessions open on separate requests: let the timers in
        await asyncio.sleep(max(0.0, started + (k + 1) * ramp / slices - time.time()))
    ramp_end = time.time()
    published_at_ramp = relay.published if relay else 0
    counted_at_ramp = consumed(consumer_db)
    await asyncio.sleep(duration)
    steady_end = time.time()
    published_steady = (relay.published if relay else 0) - published_at_ramp
    counted_steady = consumed(consumer_db) - counted_at_ramp

    probing = False
    ending = True
    await probe
    for i in range(sessions):
        await meter.ended(f"b{i}", reason="hangup")
        if i % 100 == 99:
            await asyncio.sleep(0)
    await meter.close()
    await checkpointer.close()
    total_events = await meter.outbox.last_seq()
    consumer_report: dict[str, Any] = {}
    if relay and consumer and redis:
        await relay.close(flush_timeout=120)
        deadline = time.time() + 120
        while consumed(consumer_db) < total_events and time.time() < deadline and consumer.returncode is None:
            await asyncio.sleep(0.2)
        if consumer.returncode is None:
            consumer.send_signal(signal.SIGTERM)
        out, err = await consumer.communicate()
        with sqlite3.connect(consumer_db) as conn:
            gross = conn.execute("SELECT coalesce(sum(gross), 0) FROM expert_totals").fetchone()[0]
        debited = -sum([(await meter.ledger.balance(client_account(f"c{i}"), "USD")).amount for i in range(sessions)])
        counted = consumed(consumer_db)
        consumer_report = {
            "process": "expertcall billing consume",
            "exit": consumer.returncode,
            "summary": json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else err.decode()[-500:],
            "events_in_outbox": total_events,
            "events_counted": counted,
            "exactly_once": counted == total_events and gross == debited,
        }
        await redis.delete(stream)
        await redis.aclose()

    usage = resource.getrusage(resource.RUSAGE_SELF)
    window = max(1e-9, steady_end - ramp_end)
    steady = [late for due, late in charged if ramp_end <= due < steady_end]
    report = {
        "bench": "metering",
        "sessions": sessions,
        "duration_s": duration,
        "unit_seconds": unit_seconds,
        "ramp_s": round(ramp_end - started, 3),
        "units_charged_by_timer": len(charged),
        "units_settled_at_end": charged_at_end,
        "ledger_units": sum(t["units"] for t in (await meter.store.unit_totals()).values()),
        "lateness_all": summary([late for _, late in charged]),
        "lateness_steady": summary(steady),
        "lateness_max_ms_by_second": by_second(charged, started),
        "event_loop_lag": summary(lags),
        "units_per_second_steady": round(len(steady) / window, 1),
        "stream_events_per_second": round(published_steady / window, 1) if relay else None,
        "consumer_events_per_second": round(counted_steady / window, 1) if consumer else None,
        "consumer": consumer_report,
        "cpu_seconds_node": round(usage.ru_utime + usage.ru_stime - usage_before.ru_utime - usage_before.ru_stime, 2),
        "event_loop": type(asyncio.get_running_loop()).__module__,
    }
    db.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return report


@click.command()
@click.option("--sessions", type=int, default=1000, show_default=True, help="Concurrent metered sessions.")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds to run once every session is open.")
@click.option("--ramp-seconds", type=float, default=None, help="Seconds over which sessions open (default: max(unit, sessions/1000)).")
@click.option("--unit-seconds", type=int, default=1, show_default=True, help="Billing unit.")
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True, help="Redis for the stream; '' to skip it.")
@click.option("--database", default=None, help="postgresql:// URL: meter into a shared PostgreSQL (default: SQLite in a temp dir).")
@click.option("--nodes", type=int, default=1, show_default=True, help="Node processes sharing the sessions (needs --database).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the report here.")
def metering(
    sessions: int, duration: float, ramp_seconds: float | None, unit_seconds: int, redis_url: str,
    database: str | None, nodes: int, json_path: str | None,
) -> None:
    """N metered sessions through the meter, ledger, outbox, Redis stream and consumer."""
    if nodes < 1 or (nodes > 1 and not database):
        raise click.UsageError("--nodes above 1 needs --database postgresql://...")
    if database and not redis_url:
        raise click.UsageError("--database needs --redis (each node relays the shared outbox)")
    install_event_loop()
    if database:
        report = asyncio.run(metering_nodes.run(
            sessions=sessions, duration=duration, unit_seconds=unit_seconds, redis_url=redis_url,
            database=database, nodes=nodes, ramp_seconds=ramp_seconds,
        ))
    else:
        report = asyncio.run(run(
            sessions=sessions, duration=duration, unit_seconds=unit_seconds, redis_url=redis_url,
            ramp_seconds=ramp_seconds,
        ))
    text = json.dumps(report, indent=1)
    click.echo(text)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")
