"""A process that meters one scripted session in real time, for the SIGKILL test.

``python -m tests.meter_runner DATA_DIR SESSION_ID T0``: per_minute at 1.00 USD per 1 s unit,
live from T0, paused at T0+1.5, live again at T0+2, ended at T0+12 (room for a restart that is slow to start on a busy machine). Started again after a crash,
it lets the Meter recover the session (paused where the dead meter last beat), resumes it as the
session layer would on seeing media flow, and applies only the steps it had not applied before.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from signalling.billing.meter import Meter
from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price
from signalling.billing.store_sqlite import SqliteBillingStore
from signalling.core.database import Database

STEPS = ((0.0, "live"), (1.5, "pause"), (2.0, "live"), (12.0, "end"))


async def main(data_dir: Path, sid: str, t0: float) -> None:
    db = Database.in_dir(data_dir)
    store = SqliteBillingStore(db)
    meter = Meter(store, heartbeat_seconds=0.2)
    await meter.start()
    applied_until = float("-inf")
    if meter.is_open(sid):
        if not meter.running_cost(sid).live and time.time() < t0 + STEPS[-1][0]:
            # Recovery paused the session at the crash; the media (another process) still flows.
            await meter.media_live(sid, at=time.time())
        for start, end in meter.running_cost(sid).timeline:
            applied_until = max(applied_until, start, end or start)
    elif await store.session(sid) is None:
        await meter.started(sid, "e", "c", Price.per_minute(Money(100, "USD")), BillingPolicy(unit_seconds=1), at=t0)
    else:
        return
    for offset, action in STEPS:
        at = t0 + offset
        if at <= applied_until:
            continue
        await asyncio.sleep(max(0.0, at - time.time()))
        if action == "live":
            await meter.media_live(sid, at=at)
        elif action == "pause":
            await meter.media_paused(sid, at=at)
        else:
            await meter.ended(sid, at=at, reason="hangup")
    await meter.close()
    db.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])))
