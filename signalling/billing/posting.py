"""Ledger postings: immutable, balanced, in minor units (see ``ledger.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .money import Money

CHARGE = "charge"
REFUND = "refund"
PLATFORM_ACCOUNT = "platform"


class LedgerConflict(Exception):
    """A posting id that exists with different content."""

    code = "ledger_conflict"


def client_account(client_id: str) -> str:
    return f"client:{client_id}"


def expert_account(expert_id: str) -> str:
    return f"expert:{expert_id}"


@dataclass(frozen=True)
class Posting:
    id: str
    session_id: str
    kind: str
    unit_index: int | None
    expert_id: str
    client_id: str
    gross: Money
    fee: Money
    payout: Money
    at: float
    memo: str = ""

    def __post_init__(self) -> None:
        if self.kind not in (CHARGE, REFUND):
            raise ValueError(f"unknown posting kind {self.kind!r}")
        currencies = {self.gross.currency, self.fee.currency, self.payout.currency}
        if len(currencies) != 1:
            raise ValueError("a posting has one currency")
        if min(self.gross.amount, self.fee.amount, self.payout.amount) < 0:
            raise ValueError("posting amounts are non-negative; the kind gives the direction")
        if self.fee.amount + self.payout.amount != self.gross.amount:
            raise ValueError("fee + payout must equal gross")

    @property
    def currency(self) -> str:
        return self.gross.currency

    def entries(self) -> list[tuple[str, str, int]]:
        """(leg, account, signed amount); they sum to zero. An entry's id is ``<posting id>:<leg>``."""
        sign = -1 if self.kind == CHARGE else 1
        return [
            ("client", client_account(self.client_id), sign * self.gross.amount),
            ("platform", PLATFORM_ACCOUNT, -sign * self.fee.amount),
            ("expert", expert_account(self.expert_id), -sign * self.payout.amount),
        ]

    def row(self) -> tuple[Any, ...]:
        return (
            self.id, self.session_id, self.kind, self.unit_index, self.expert_id, self.client_id,
            self.currency, self.gross.amount, self.fee.amount, self.payout.amount, self.at, self.memo,
        )

    @staticmethod
    def from_row(row: Any) -> "Posting":
        c = row["currency"]
        return Posting(
            id=row["id"], session_id=row["session_id"], kind=row["kind"], unit_index=row["unit_index"],
            expert_id=row["expert_id"], client_id=row["client_id"], gross=Money(row["gross"], c),
            fee=Money(row["fee"], c), payout=Money(row["payout"], c), at=row["at"], memo=row["memo"],
        )

    def same_effect(self, other: "Posting") -> bool:
        """Equal in everything that moves money; the time and memo of a replay may differ."""
        return self.row()[:10] == other.row()[:10]


@dataclass(frozen=True)
class SessionTotals:
    currency: str | None
    units: int
    last_unit: int | None
    gross: int
    fee: int
    payout: int
    refunded: bool
