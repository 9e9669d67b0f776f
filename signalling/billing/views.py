"""What billing shows of one session: ``GET /api/billing/sessions/{id}`` and ``billing.cost``.

Read from the billing store, never from a Meter's memory, so that every node answers alike
whichever node meters the call (the Meter commits before it tells anyone, so the store is never
behind what a participant has heard).
"""

from __future__ import annotations

from typing import Any

from .meter import Meter
from .store import StoredSession


async def session_view(meter: Meter, stored: StoredSession) -> dict[str, Any]:
    """The documented shape of ``GET /api/billing/sessions/{id}`` (docs/billing.md)."""
    cost = meter.cost_of(stored)
    totals = await meter.ledger.session_totals(stored.session_id)
    return {
        "session_id": stored.session_id,
        "expert_id": stored.expert_id,
        "client_id": stored.client_id,
        "open": stored.ended_at is None,
        "price": cost.price.to_dict(),
        "currency": cost.price.currency,
        "units": totals.units,
        "total": totals.gross,
        "fee": totals.fee,
        "payout": totals.payout,
        "live": cost.live,
        "live_seconds": round(cost.live_seconds, 3),
        "budget_cap": cost.budget_cap.to_dict() if cost.budget_cap is not None else None,
        "next_charge_at": cost.next_charge_at,
        "started_at": stored.started_at,
        "ended_at": stored.ended_at,
        "end_reason": stored.end_reason,
        "refunded": totals.refunded,
    }
