"""``expertcall billing reconcile``: the ledger against what a consumer of the feed counted.

The ledger (every node's, in the billing store) says, per expert and currency, how many units
were charged and what they add up to, net of refunds; the reference consumer (``consumer.py``)
keeps the same totals from the events it counted, each once. They must agree, and the set of
unit events the consumer counted must be the set of units the ledger holds: a difference is a
unit lost or doubled on the way, or an event the relay has not published yet (``unrelayed``).
"""

from __future__ import annotations

from typing import Any

from .feed_reader import FeedReaderStore
from .outbox import TYPE_PREFIX
from .store import BillingStore

UNIT_TYPE = TYPE_PREFIX + "unit"
MAX_LISTED = 100


async def reconcile(store: BillingStore, consumer: FeedReaderStore) -> dict[str, Any]:
    ledger = await store.unit_totals()
    counted = consumer.totals()
    differences = []
    for expert_id, currency in sorted(set(ledger) | set(counted)):
        mine = ledger.get((expert_id, currency), {})
        theirs = counted.get((expert_id, currency), {})
        for field in ("units", "gross", "fee", "payout"):
            a, b = mine.get(field, 0), theirs.get(field, 0)
            if a != b:
                differences.append({"expert_id": expert_id, "currency": currency, "field": field,
                                    "ledger": a, "consumer": b})
    ledger_units: set[str] = set()
    cursor = 0
    while rows := await store.events_after(cursor, 5000):
        ledger_units.update(r.id for r in rows if r.type == UNIT_TYPE)
        cursor = rows[-1].seq
    consumed_units = consumer.event_ids(UNIT_TYPE)
    missing = sorted(ledger_units - consumed_units)
    unknown = sorted(consumed_units - ledger_units)
    return {
        "ok": not differences and not missing and not unknown,
        "ledger_units": len(ledger_units),
        "consumer_units": len(consumed_units),
        "unrelayed": await store.count_unrelayed(),
        "differences": differences,
        "missing_from_consumer": missing[:MAX_LISTED],
        "missing_count": len(missing),
        "unknown_to_ledger": unknown[:MAX_LISTED],
        "unknown_count": len(unknown),
    }
