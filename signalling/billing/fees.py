"""Per-expert platform fees: an admin may give one expert a fee other than the server's default.

The override is part of the quote (``quote.py``): it applies to sessions requested or booked after
it is set, so a running call never changes its price split mid-way. Overrides are kept in the
billing store, so every node applies the same one.
"""

from __future__ import annotations

import time

from .meter import BillingError
from .store import BillingStore


class PlatformFees:
    def __init__(self, store: BillingStore, default_bps: int) -> None:
        self.store = store
        self.default_bps = default_bps

    async def override(self, expert_id: str) -> int | None:
        return await self.store.fee_override(expert_id)

    async def fee_bps(self, expert_id: str) -> int:
        override = await self.override(expert_id)
        return self.default_bps if override is None else override

    async def set(self, expert_id: str, fee_bps: int | None, by: str) -> None:
        """Set (or, with None, remove) an expert's override."""
        if fee_bps is not None and (type(fee_bps) is not int or not 0 <= fee_bps <= 10_000):
            raise BillingError("bad_request", "platform_fee_bps must be an integer from 0 to 10000 (or null)")
        await self.store.set_fee_override(expert_id, fee_bps, by, time.time())
