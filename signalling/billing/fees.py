"""Per-expert platform fees: an admin may give one expert a fee other than the server's default.

The override applies to sessions accepted after it is set (a session's policy is fixed when
metering opens, so a running call never changes price split mid-way).
"""

from __future__ import annotations

import time

from ..database import Database
from .meter import BillingError

SCHEMA = """
CREATE TABLE IF NOT EXISTS expert_fees (
    expert_id TEXT PRIMARY KEY,
    fee_bps INTEGER NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    set_by TEXT NOT NULL,
    set_at REAL NOT NULL
);
"""


class PlatformFees:
    def __init__(self, db: Database, default_bps: int) -> None:
        self.db = db
        self.default_bps = default_bps
        db.migrate(SCHEMA)

    def override(self, expert_id: str) -> int | None:
        row = self.db.fetchone("SELECT fee_bps FROM expert_fees WHERE expert_id = ?", (expert_id,))
        return None if row is None else int(row["fee_bps"])

    def fee_bps(self, expert_id: str) -> int:
        override = self.override(expert_id)
        return self.default_bps if override is None else override

    def set(self, expert_id: str, fee_bps: int | None, by: str) -> None:
        """Set (or, with None, remove) an expert's override."""
        if fee_bps is None:
            self.db.execute("DELETE FROM expert_fees WHERE expert_id = ?", (expert_id,))
            return
        if type(fee_bps) is not int or not 0 <= fee_bps <= 10_000:
            raise BillingError("bad_request", "platform_fee_bps must be an integer from 0 to 10000 (or null)")
        self.db.execute(
            "INSERT INTO expert_fees (expert_id, fee_bps, set_by, set_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (expert_id) DO UPDATE SET fee_bps = excluded.fee_bps, set_by = excluded.set_by, "
            "set_at = excluded.set_at",
            (expert_id, fee_bps, by, time.time()),
        )
