"""Billing's storage: every table billing keeps, behind one async interface with two backends.

``BillingStore`` owns the metered sessions and their live intervals, the meters' heartbeats, the
double-entry ledger, the metering outbox (with its relay and webhook cursors) and the per-expert
fee overrides. ``SqliteBillingStore`` (``store_sqlite.py``) keeps them in the node's embedded
SQLite file, for one node; ``PostgresBillingStore`` (``store_postgres.py``) in a PostgreSQL
database that every node shares. Nothing outside this package runs SQL on these tables: other code
asks ``Meter``, ``Ledger``, ``Outbox`` and ``PlatformFees``, which ask the store.
``tests/signalling/billing/test_store.py`` is one contract suite run against both.

Writes the Meter makes come as one ``WriteBatch`` committed in one transaction: the sessions it
opens, the live intervals it opens and closes, the sessions it ends, budget changes, ledger
postings and the CloudEvents that describe them. Every session a batch touches carries the
fencing token of the meter that wrote it; the store refuses (``StaleOwner``) a batch with a token
older than one it has seen for that session, so that a meter that lost its lease (paused,
partitioned, restarted) cannot write after the new owner took over.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import Any, AsyncContextManager

from .posting import Posting, SessionTotals


class StaleOwner(Exception):
    """A write for a session whose fencing token has moved on: another meter owns it now."""

    code = "stale_owner"

    def __init__(self, session_ids: list[str]) -> None:
        super().__init__(f"fenced off: another meter owns {', '.join(sorted(session_ids))}")
        self.session_ids = session_ids


# The billing_sessions columns a meter writes when it opens a session.
OPENED_COLUMNS = "session_id, expert_id, client_id, price, policy, budget_cap, started_at, owner, fence"


@dataclass(frozen=True)
class SessionOpened:
    """A metered session's terms as a meter opens it: what a ``StoredSession`` starts from."""

    session_id: str
    expert_id: str
    client_id: str
    price: dict[str, Any]
    policy: dict[str, Any]
    budget_cap: int | None
    started_at: float
    owner: str

    def row(self, fence: int) -> tuple[Any, ...]:
        """Its values for ``OPENED_COLUMNS``, written by ``fence``."""
        return (self.session_id, self.expert_id, self.client_id, json.dumps(self.price),
                json.dumps(self.policy), self.budget_cap, self.started_at, self.owner, fence)


@dataclass
class WriteBatch:
    opened: list[SessionOpened] = field(default_factory=list)
    intervals_opened: list[tuple[str, int, float]] = field(default_factory=list)  # session, idx, start
    intervals_closed: list[tuple[str, int, float]] = field(default_factory=list)  # session, idx, end
    ended: list[tuple[str, float, str]] = field(default_factory=list)  # session, at, reason
    budgets: list[tuple[str, int | None]] = field(default_factory=list)
    postings: list[Posting] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    # session -> the fencing token of the meter writing it (every session the batch touches)
    fences: dict[str, int] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (
            self.opened or self.intervals_opened or self.intervals_closed or self.ended or self.budgets
            or self.postings or self.events
        )

    def touched(self) -> set[str]:
        return (
            {o.session_id for o in self.opened} | {i[0] for i in self.intervals_opened}
            | {i[0] for i in self.intervals_closed} | {e[0] for e in self.ended} | {b[0] for b in self.budgets}
            | {p.session_id for p in self.postings} | {str(e["subject"]) for e in self.events}
        )


SIDES = ("client", "expert")


def side_column(side: str) -> str:
    """The billing_sessions column naming a participant on ``side`` (never text from a request)."""
    if side not in SIDES:
        raise ValueError(f"side is one of {SIDES}")
    return f"{side}_id"


@dataclass(frozen=True)
class StoredSession(SessionOpened):
    """A metered session as stored: its terms, its timeline and what the ledger charged it."""

    ended_at: float | None
    end_reason: str | None
    fence: int
    intervals: tuple[tuple[float, float | None], ...]
    units: int
    gross: int
    last_unit_at: float | None

    @property
    def currency(self) -> str:
        return str(self.price["currency"])

    @property
    def live_seconds(self) -> float:
        return sum(end - start for start, end in self.intervals if end is not None)


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    id: str
    type: str
    body: str

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class BillingStore(abc.ABC):
    """See the module docstring. Every method may be called from the event loop."""

    kind: str  # "sqlite" or "postgresql"

    @abc.abstractmethod
    async def close(self) -> None: ...

    # --- the meter ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def commit(self, batch: WriteBatch) -> list[bool]:
        """Write ``batch`` in one transaction; for each posting, True if new, False if a replay.
        Raises ``LedgerConflict`` (a posting id exists with other content) or ``StaleOwner``;
        then nothing of the batch is written."""

    @abc.abstractmethod
    async def session(self, session_id: str) -> StoredSession | None: ...

    @abc.abstractmethod
    async def session_ended(self, session_id: str) -> bool | None:
        """Whether a metered session has ended (None: never metered); one cheap lookup."""

    @abc.abstractmethod
    async def open_sessions(self) -> list[StoredSession]:
        """Every session whose metering has not ended, oldest first."""

    @abc.abstractmethod
    async def sessions_of(self, side: str, user_id: str, start: float, end: float, limit: int) -> list[StoredSession]:
        """The sessions ``user_id`` took part in as ``side`` ("client" or "expert") that started in
        [start, end), newest first, at most ``limit``: a client's history, an expert's earnings."""

    @abc.abstractmethod
    async def beat(self, node_id: str, at: float) -> None:
        """The meter of ``node_id`` is alive at ``at``."""

    @abc.abstractmethod
    async def last_beat(self, node_id: str) -> float | None: ...

    # --- the ledger -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def posting(self, posting_id: str) -> Posting | None: ...

    @abc.abstractmethod
    async def postings(self, session_id: str) -> list[Posting]:
        """A session's postings in the order they were made."""

    @abc.abstractmethod
    async def session_totals(self, session_id: str) -> SessionTotals: ...

    @abc.abstractmethod
    async def balance(self, account: str, currency: str) -> int: ...

    @abc.abstractmethod
    async def unbalanced_postings(self) -> list[str]:
        """Posting ids whose entries do not sum to zero (an audit query; always empty)."""

    @abc.abstractmethod
    async def statement_rows(self, expert_id: str, start: float, end: float) -> list[dict[str, Any]]:
        """Per (session, kind) in [start, end): session_id, client_id, currency, kind, n, gross,
        fee, payout, first_at, last_at; ordered by first_at."""

    @abc.abstractmethod
    async def export_rows(self, start: float, end: float) -> list[dict[str, Any]]:
        """Every entry posted in [start, end), in posting order (``ledger.EXPORT_FIELDS``, ``at`` a float)."""

    @abc.abstractmethod
    async def unit_totals(self) -> dict[tuple[str, str], dict[str, int]]:
        """(expert, currency) -> units, gross, fee, payout net of refunds: what a consumer of the
        feed should have counted (``expertcall billing reconcile``)."""

    # --- the outbox -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def events_after(self, cursor: int, limit: int) -> list[OutboxRow]:
        """Events with a cursor above ``cursor``, in order. Cursors grow in commit order."""

    @abc.abstractmethod
    async def last_seq(self) -> int: ...

    @abc.abstractmethod
    async def count_unrelayed(self) -> int: ...

    @abc.abstractmethod
    def relay_batch(self, limit: int) -> AsyncContextManager[list[OutboxRow] | None]:
        """The oldest events not yet relayed, for one relay at a time across every node sharing
        the store (another node's relay holding it: None, not an empty list, which would say
        that nothing is left). They are marked relayed when the block exits without an exception."""

    @abc.abstractmethod
    def exclusive(self, name: str) -> AsyncContextManager[bool]:
        """Hold ``name`` for as long as the block runs, across every node sharing the store; the
        block gets False (and should not do the work) while another node holds it."""

    @abc.abstractmethod
    async def webhook_cursor(self, url: str) -> int: ...

    @abc.abstractmethod
    async def set_webhook_cursor(self, url: str, seq: int) -> None: ...

    # --- fees -----------------------------------------------------------------------------------

    @abc.abstractmethod
    async def fee_override(self, expert_id: str) -> int | None: ...

    @abc.abstractmethod
    async def set_fee_override(self, expert_id: str, fee_bps: int | None, by: str, at: float) -> None: ...


def stored_session(row: Any, intervals: list[tuple[float, float | None]], totals: Any) -> StoredSession:
    """A ``StoredSession`` from a billing_sessions row, its intervals and (units, gross, last_at)."""
    return StoredSession(
        session_id=row["session_id"],
        expert_id=row["expert_id"],
        client_id=row["client_id"],
        price=json.loads(row["price"]),
        policy=json.loads(row["policy"]),
        budget_cap=row["budget_cap"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"],
        owner=row["owner"],
        fence=row["fence"],
        intervals=tuple(intervals),
        units=int(totals[0]),
        gross=int(totals[1]),
        last_unit_at=totals[2],
    )
