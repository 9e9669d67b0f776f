"""The Meter: turns a session's live time into ledger postings and metering events.

The session layer drives it with ``started``, ``media_live``, ``media_paused`` and ``ended`` (each
with the time ``at`` it happened) and hears back through three callbacks: ``on_unit``,
``on_budget_warning`` and ``on_budget_reached`` (it must then end the session with the reason
``budget_reached``). Billable time is live time only; every session keeps its timeline of live
intervals, persisted with the events that open and close them.

Charging rules (docs/billing.md):
- per_minute: unit n starts when live time passes ``grace + n * unit`` and is charged then, for the
  whole unit. So 0 s costs nothing, 1 s one unit, exactly one unit one unit, one unit + 1 s two.
  A pause stops the clock mid-unit and a resume continues the same unit.
- per_session: charged once live time reaches the minimum (a session that was never live, or
  live for less, is free). It is posted as unit 0.
- free: events only.

All sessions share one timer heap served by one task; each session has at most one live entry in
it (stale ones are skipped by a generation number), so many thousands of sessions cost a heap
operation per unit. Everything due at once is committed in one transaction of the
``BillingStore`` (SQLite for one node, PostgreSQL for many). The Meter's calls are coroutines
and run one at a time (a lock), so each commits in the order it was made.

Every session is metered by one Meter at a time, whose writes carry that session's fencing
token (``fence``): the store refuses a write with an older token than it has seen, and the Meter
then forgets the session (``on_lost``): another node's Meter owns it.

After a crash ``recover()`` (called by ``start()``) reloads the open sessions it may own and
their timelines from the store, counts the units already in the ledger and charges exactly the
ones due by the dead meter's last heartbeat (posting ids are deterministic, so none twice), then
pauses the sessions that were live there: an outage is never billed. ``adopt()`` does the same
for one session whose meter died on another node. The session layer resumes them with
``media_live`` once it sees media flowing again.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..core.errors import CodedError
from ..core.tasks import cancel_and_wait
from .ledger import CHARGE, REFUND, Ledger, Posting
from .money import Money
from .outbox import Outbox
from .pricing import BillingPolicy, Price, PriceKind, split, split_increment
from .store import BillingStore, SessionOpened, StaleOwner, StoredSession, WriteBatch

log = logging.getLogger(__name__)

Clock = Callable[[], float]


MAX_REASON = 64


class BillingError(CodedError):
    """A call the meter refuses. ``code`` is stable and may reach clients as is."""


@dataclass(frozen=True)
class UnitCharged:
    session_id: str
    expert_id: str
    client_id: str
    unit_index: int
    amount: Money
    running_total: Money
    budget_cap: Money | None
    at: float  # when the unit started (the instant it became due)
    charged_at: float  # when the meter charged it (at + timer lateness)


@dataclass(frozen=True)
class BudgetWarning:
    """The unit just charged is the last the budget pays for: the session ends one unit from now."""

    session_id: str
    expert_id: str
    client_id: str
    running_total: Money
    budget_cap: Money
    ends_at_live_seconds: int


@dataclass(frozen=True)
class BudgetReached:
    session_id: str
    expert_id: str
    client_id: str
    running_total: Money
    budget_cap: Money
    at: float


@dataclass(frozen=True)
class RunningCost:
    session_id: str
    price: Price
    units: int
    total: Money
    live: bool
    live_seconds: float
    budget_cap: Money | None
    next_charge_at: float | None
    timeline: tuple[tuple[float, float | None], ...]
    # The budget is used up: nothing more will be charged (the session should end).
    capped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "price": self.price.to_dict(),
            "units": self.units,
            "total": self.total.to_dict(),
            "live": self.live,
            "live_seconds": self.live_seconds,
            "budget_cap": self.budget_cap.to_dict() if self.budget_cap else None,
            "next_charge_at": self.next_charge_at,
        }


@dataclass(frozen=True)
class SessionSummary:
    session_id: str
    reason: str
    units: int
    total: Money
    live_seconds: float
    timeline: tuple[tuple[float, float | None], ...]
    fee: Money  # the platform's part of total (the ledger's fee rule on the whole total)
    payout: Money


@dataclass(frozen=True)
class Refund:
    session_id: str
    posting: Posting
    created: bool


@dataclass
class _Session:
    session_id: str
    expert_id: str
    client_id: str
    price: Price
    policy: BillingPolicy
    budget_cap: Money | None
    started_at: float
    intervals: list[list[Any]] = field(default_factory=list)  # [start, end | None]
    closed_live: float = 0.0
    units: int = 0
    total: Money = Money(0, "USD")
    warned: bool = False
    capped: bool = False
    generation: int = 0
    last_at: float = 0.0

    @property
    def live(self) -> bool:
        return bool(self.intervals) and self.intervals[-1][1] is None

    def live_seconds(self, at: float) -> float:
        if self.live:
            return self.closed_live + max(0.0, at - self.intervals[-1][0])
        return self.closed_live

    def wall_time_at(self, live_seconds: float) -> float | None:
        """When live time passed ``live_seconds`` (an instant inside an interval, never its end)."""
        acc = 0.0
        for start, end in self.intervals:
            length = (end - start) if end is not None else None
            if length is None or live_seconds < acc + length:
                return start + max(0.0, live_seconds - acc)
            acc += length
        return None

    def next_threshold(self) -> tuple[float, bool] | None:
        """Live seconds at which the next charge (or the budget end) falls due; True: strictly after."""
        kind = self.price.kind
        if kind is PriceKind.PER_MINUTE and not self.capped:
            return float(self.policy.grace_seconds + self.units * self.policy.unit_seconds), True
        if kind is PriceKind.PER_SESSION and self.units == 0:
            return float(self.policy.per_session_minimum_seconds), False
        return None

    def timeline(self) -> tuple[tuple[float, float | None], ...]:
        return tuple((s, e) for s, e in self.intervals)

    def same_terms(self, other: "_Session") -> bool:
        return (self.expert_id, self.client_id, self.price, self.policy, self.budget_cap) == (
            other.expert_id, other.client_id, other.price, other.policy, other.budget_cap,
        )


@dataclass
class _Batch:
    write: WriteBatch = field(default_factory=WriteBatch)
    notices: list[tuple[Callable[[Any], Any] | None, Any]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)

    @property
    def postings(self) -> list[Posting]:
        return self.write.postings

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.write.events


class Meter:
    def __init__(
        self,
        store: BillingStore,
        ledger: Ledger | None = None,
        outbox: Outbox | None = None,
        *,
        node_id: str = "",
        clock: Clock = time.time,
        refund_window_seconds: int = 72 * 3600,
        max_batch: int = 5000,
        tick_seconds: float = 0.05,
        heartbeat_seconds: float = 1.0,
        on_unit: Callable[[UnitCharged], Awaitable[None] | None] | None = None,
        on_budget_warning: Callable[[BudgetWarning], Awaitable[None] | None] | None = None,
        on_budget_reached: Callable[[BudgetReached], Awaitable[None] | None] | None = None,
        on_lost: Callable[[str], Awaitable[None] | None] | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger or Ledger(store)
        self.outbox = outbox or Outbox(store)
        # This node's name: its heartbeat and the owner recorded on the sessions it opens.
        self.node_id = node_id
        self.clock = clock
        self.refund_window_seconds = refund_window_seconds
        self.max_batch = max_batch
        # After a tick the timer task rests this long, so that units falling due meanwhile share
        # one transaction (a commit costs far more than a row), and so that the relay and the
        # session layer get the loop even when the meter is behind (tried without: the relay
        # starved). Units are at most this much later.
        self.tick_seconds = tick_seconds
        # The running meter records that it is alive this often: after a crash, live time is
        # billed up to the last heartbeat, never through the outage.
        self.heartbeat_seconds = heartbeat_seconds
        self._next_beat = 0.0
        # Callbacks run right after the commit that caused them; a coroutine result is scheduled
        # as a task (awaited by close()). They must not raise into the meter: errors are logged.
        self.on_unit = on_unit
        self.on_budget_warning = on_budget_warning
        self.on_budget_reached = on_budget_reached
        # Called with a session id when the store fenced this Meter off it (another owns it now).
        self.on_lost = on_lost
        self._sessions: dict[str, _Session] = {}
        # session -> the fencing token this Meter writes it with
        self._fences: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._wakeup: asyncio.Event | None = None
        # When the sleeping timer task wakes by itself (inf: not before an event; -inf: awake).
        self._sleeping_until = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Future[Any]] = set()
        self._closed = False
        self.units_charged = 0  # by this process, for /metrics

    # --- the session layer's calls -----------------------------------------------------------

    async def started(
        self,
        session_id: str,
        expert_id: str,
        client_id: str,
        price: Price,
        policy: BillingPolicy,
        budget_cap: Money | None = None,
        at: float | None = None,
        fence: int = 0,
    ) -> RunningCost:
        """Open metering for a session (not yet live). Idempotent for identical terms."""
        at = self.clock() if at is None else at
        for name, value in (("session_id", session_id), ("expert_id", expert_id), ("client_id", client_id)):
            if not isinstance(value, str) or not 0 < len(value) <= 128:
                raise BillingError("bad_request", f"{name} must be a 1-128 character string")
        if budget_cap is not None:
            if budget_cap.currency != price.currency:
                raise BillingError("currency_mismatch", "the budget cap must be in the price's currency")
            if price.kind is not PriceKind.FREE and budget_cap < price.amount:
                raise BillingError("budget_too_low", f"a budget of {budget_cap} does not cover one charge of {price.amount}")
        session = _Session(
            session_id, expert_id, client_id, price, policy, budget_cap, at,
            total=Money.zero(price.currency), last_at=at,
        )
        async with self._lock:
            existing = self._sessions.get(session_id)
            if existing is not None:
                if not existing.same_terms(session):
                    raise BillingError("session_exists", f"session {session_id} is metered with other terms")
                return self.running_cost(session_id)
            ended = await self.store.session_ended(session_id)
            if ended:
                raise BillingError("session_ended", f"session {session_id} has already ended")
            if ended is not None:
                raise BillingError("session_exists", f"session {session_id} is metered by another meter")
            batch = _Batch()
            batch.write.opened.append(SessionOpened(
                session_id, expert_id, client_id, price.to_dict(), policy.to_dict(),
                budget_cap.amount if budget_cap else None, at, self.node_id,
            ))
            batch.events.append(self._event(session, f"{session_id}:started", "started", at, {
                "price": price.to_dict(),
                "policy": policy.to_dict(),
                "budget_cap": budget_cap.amount if budget_cap else None,
            }))
            self._fences[session_id] = fence
            self._sessions[session_id] = session
            try:
                await self._commit(batch)
            except BaseException:
                self._sessions.pop(session_id, None)
                self._fences.pop(session_id, None)
                raise
            return self.running_cost(session_id)

    async def media_live(self, session_id: str, at: float | None = None) -> None:
        """Both sides' media flows: the clock (re)starts. A no-op while already live."""
        async with self._lock:
            s = self._open(session_id)
            if s.live:
                return
            at = self._clamp(s, at)
            idx = len(s.intervals)
            s.intervals.append([at, None])
            s.last_at = at
            batch = _Batch()
            batch.write.intervals_opened.append((session_id, idx, at))
            batch.events.append(self._event(s, f"{session_id}:resumed:{idx}", "resumed", at, {
                "interval": idx, "live_seconds": s.live_seconds(at), "units": s.units,
            }))
            self._advance(s, at, batch)
            await self._commit(batch)
            if session_id in self._sessions:
                self._schedule(s)

    async def media_paused(self, session_id: str, at: float | None = None) -> None:
        """Either side's media stopped (debounced): the clock stops mid-unit. A no-op while paused."""
        async with self._lock:
            s = self._open(session_id)
            if not s.live:
                return
            at = self._clamp(s, at)
            batch = _Batch()
            self._pause(s, at, batch, "media")
            await self._commit(batch)

    async def ended(self, session_id: str, at: float | None = None, reason: str = "hangup") -> SessionSummary:
        """Stop metering for good: charge what is due at ``at``, record the end. Idempotent."""
        if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON:
            raise BillingError("bad_request", f"the reason must be a 1-{MAX_REASON} character string")
        async with self._lock:
            s = self._sessions.get(session_id)
            if s is None:
                return await self._stored_summary(session_id)
            return await self._end(s, at, reason)

    async def _end(self, s: _Session, at: float | None, reason: str) -> SessionSummary:
        session_id = s.session_id
        at = self._clamp(s, at)
        batch = _Batch()
        self._advance(s, at, batch)
        if s.live:
            self._close_interval(s, at, batch)
        batch.write.ended.append((session_id, at, reason))
        totals = split(s.total, s.policy.platform_fee_bps)
        batch.events.append(self._event(s, f"{session_id}:ended", "ended", at, {
            "reason": reason,
            "units": s.units,
            "live_seconds": s.live_seconds(at),
            "total": s.total.amount,
            "fee": totals.fee.amount,
            "payout": totals.payout.amount,
            "timeline": [list(iv) for iv in s.timeline()],
        }))
        s.generation += 1
        await self._commit(batch)
        self._sessions.pop(session_id, None)
        self._fences.pop(session_id, None)
        return SessionSummary(
            session_id, reason, s.units, s.total, s.live_seconds(at), s.timeline(), totals.fee, totals.payout,
        )

    async def set_budget(self, session_id: str, budget_cap: Money | None, at: float | None = None) -> RunningCost:
        """Change the client's cap during the session (None: no cap). It cannot go below what was
        charged already, nor below one charge. A lower cap may warn or end the session at once;
        a higher one lifts a cap that was reached and warns again one unit before the new one."""
        async with self._lock:
            return await self._set_budget(session_id, budget_cap, at)

    async def _set_budget(self, session_id: str, budget_cap: Money | None, at: float | None) -> RunningCost:
        s = self._open(session_id)
        price = s.price
        if budget_cap is not None:
            if budget_cap.currency != price.currency:
                raise BillingError("currency_mismatch", "the budget cap must be in the price's currency")
            if price.kind is not PriceKind.FREE and budget_cap < price.amount:
                raise BillingError("budget_too_low", f"a budget of {budget_cap} does not cover one charge of {price.amount}")
            if budget_cap < s.total:
                raise BillingError("budget_below_spent", f"{s.total} has been charged already")
        at = self._clamp(s, at)
        s.budget_cap = budget_cap
        s.capped = False
        batch = _Batch()
        batch.write.budgets.append((session_id, budget_cap.amount if budget_cap else None))
        # As after a charge: warn (once) when the next unit would not fit under the cap.
        next_over_cap = budget_cap is not None and price.kind is PriceKind.PER_MINUTE and s.total + price.amount > budget_cap
        if next_over_cap and s.units and not s.warned:
            batch.notices.append((self.on_budget_warning, BudgetWarning(
                session_id, s.expert_id, s.client_id, s.total, budget_cap,  # type: ignore[arg-type]
                s.policy.grace_seconds + s.units * s.policy.unit_seconds,
            )))
        s.warned = next_over_cap and s.units > 0
        self._advance(s, at, batch)
        s.generation += 1
        await self._commit(batch)
        self._schedule(s)
        return self.running_cost(session_id)

    def running_cost(self, session_id: str) -> RunningCost:
        return self._cost(self._open(session_id))

    def _cost(self, s: _Session) -> RunningCost:
        now = self.clock()
        next_at = None
        threshold = s.next_threshold()
        if threshold is not None and s.live:
            next_at = s.wall_time_at(threshold[0])
        return RunningCost(
            s.session_id, s.price, s.units, s.total, s.live, s.live_seconds(max(now, s.last_at)),
            s.budget_cap, next_at, s.timeline(), s.capped,
        )

    def cost_of(self, stored: StoredSession) -> RunningCost:
        """The running cost of a session as the store has it (any node, metered here or not)."""
        s = self._load(stored)
        if stored.ended_at is not None:
            s.capped = True  # nothing more will be charged
        return self._cost(s)

    async def release(self, session_id: str) -> None:
        """Stop metering a session here without writing anything: another node meters it now."""
        async with self._lock:
            s = self._sessions.pop(session_id, None)
            self._fences.pop(session_id, None)
            if s is not None:
                s.generation += 1

    def is_open(self, session_id: str) -> bool:
        return session_id in self._sessions

    def open_sessions(self) -> list[str]:
        return list(self._sessions)

    async def record(self, session_id: str) -> StoredSession | None:
        """The session's metering record as last committed by any node; None if never metered."""
        return await self.store.session(session_id)

    async def unsettled(self) -> list[StoredSession]:
        """The records of every session metered and not yet ended, whichever node metered it."""
        return await self.store.open_sessions()

    async def refund(self, session_id: str, *, by: str, reason: str = "", at: float | None = None) -> Refund:
        """Reverse every charge of an ended session within the refund window. Idempotent, on any
        node: the posting id is the session's, so a second refund cannot be written."""
        at = self.clock() if at is None else at
        row = await self.store.session(session_id)
        if row is None:
            raise BillingError("unknown_session", f"no metered session {session_id}")
        if row.ended_at is None:
            raise BillingError("session_open", "a session can be refunded once it has ended")
        existing = await self.ledger.get(f"{session_id}:refund")
        if existing is not None:
            return Refund(session_id, existing, created=False)
        if at - row.ended_at > self.refund_window_seconds:
            raise BillingError("refund_window_closed", f"refunds close {self.refund_window_seconds} s after the session")
        totals = await self.ledger.session_totals(session_id)
        if not totals.gross or totals.currency is None:
            raise BillingError("nothing_to_refund", "the session was not charged")
        c = totals.currency
        posting = Posting(
            f"{session_id}:refund", session_id, REFUND, None, row.expert_id, row.client_id,
            Money(totals.gross, c), Money(totals.fee, c), Money(totals.payout, c), at,
            memo=json.dumps({"by": by, "reason": reason}),
        )
        event = self.outbox.event(f"{session_id}:refunded", "refunded", session_id, at, {
            "expert_id": row.expert_id, "client_id": row.client_id, "currency": c,
            "amount": totals.gross, "fee": totals.fee, "payout": totals.payout, "units": totals.units,
            "by": by, "reason": reason,
        })
        created = (await self.ledger.post_many([posting], [event]))[0]
        self.outbox.notify()
        if not created:  # another node refunded it meanwhile
            stored = await self.ledger.get(posting.id)
            assert stored is not None
            return Refund(session_id, stored, created=False)
        return Refund(session_id, posting, created=True)

    # --- running ---------------------------------------------------------------------------

    async def start(self, claim: "Claim | None" = None) -> list[str]:
        """Recover open sessions (those ``claim`` grants, see ``recover``), then serve the timers."""
        recovered = await self.recover(claim)
        if recovered:
            # Not before: a node restarting under the same name would overwrite the beat that
            # bounds what its previous incarnation's sessions are billed (adopt() reads it).
            await self._beat()
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="meter")
        return recovered

    async def recover(self, claim: "Claim | None" = None) -> list[str]:
        """Reload the open sessions a previous meter left, and meter them from now on.

        ``claim(stored)`` says whether this Meter may take a session over, with which fencing
        token (None: leave it, another node's Meter owns it). Without it, every open session is
        taken (one node: whatever is open was this node's).

        Nobody knows whether media flowed while no meter ran, so the client is not billed for it:
        a session that was live is billed up to the previous meter's last sign of life (its
        heartbeat, or its last record of the session), every unit started by then is charged
        (ids are deterministic: a unit committed before the crash is not charged twice), and the
        session is paused there with the reason ``meter_restart``. The session layer calls
        ``media_live`` when it sees both sides' media flowing again.
        """
        recovered = []
        async with self._lock:
            batch = _Batch()
            for stored in await self.store.open_sessions():
                if stored.session_id in self._sessions:
                    continue
                fence = stored.fence if claim is None else await claim(stored)
                if fence is None:
                    continue
                await self._take_over(stored, fence, batch)
                recovered.append(stored.session_id)
            await self._commit(batch)
        return recovered

    async def adopt(self, session_id: str, fence: int) -> bool:
        """Meter a session whose meter was on a node that died (the caller holds its lease with
        ``fence``): as ``recover`` does for one session. False when it is not open in the store."""
        async with self._lock:
            if session_id in self._sessions:
                self._fences[session_id] = max(fence, self._fences.get(session_id, 0))
                return True
            stored = await self.store.session(session_id)
            if stored is None or stored.ended_at is not None:
                return False
            batch = _Batch()
            await self._take_over(stored, fence, batch)
            await self._commit(batch)
            return session_id in self._sessions

    async def _take_over(self, stored: StoredSession, fence: int, batch: _Batch) -> None:
        s = self._load(stored)
        self._sessions[s.session_id] = s
        self._fences[s.session_id] = fence
        batch.touched.add(s.session_id)
        if s.live:
            beat = await self.store.last_beat(stored.owner)
            alive_until = max(beat if beat is not None else s.last_at, s.last_at)
            self._pause(s, alive_until, batch, "meter_restart")
        else:
            self._advance(s, s.last_at, batch)

    async def fire_due(self, now: float | None = None) -> int:
        """Charge everything due by ``now``; returns the number of units charged. The timer task
        calls this; tests with a manual clock call it directly."""
        async with self._lock:
            return await self._fire_due(now)

    async def _fire_due(self, now: float | None) -> int:
        now = self.clock() if now is None else now
        batch = _Batch()
        retry: list[_Session] = []
        while self._heap and self._heap[0][0] <= now and len(batch.postings) < self.max_batch:
            _, _, sid, gen = heapq.heappop(self._heap)
            s = self._sessions.get(sid)
            if s is None or s.generation != gen:
                continue
            charged = len(batch.postings)
            self._advance(s, now, batch)
            if len(batch.postings) == charged and not s.capped:
                # Due exactly now under a strict rule: look again on the next tick.
                retry.append(s)
            else:
                batch.touched.add(sid)
        try:
            await self._commit(batch)
        finally:
            for sid in batch.touched:
                if sid in self._sessions:
                    self._schedule(self._sessions[sid])
            for s in retry:
                if s.session_id in self._sessions:
                    self._schedule(s)
        return len(batch.postings)

    async def settle(self) -> None:
        """Wait until the callbacks of everything committed so far have run."""
        while self._callbacks:
            await asyncio.gather(*list(self._callbacks), return_exceptions=True)

    async def close(self) -> None:
        """Finish in-flight billing: stop the timer task, charge what is due now, await callbacks.
        Open sessions stay open in the store and are recovered by the next start()."""
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._task)
        try:
            await self.fire_due()
            await self._beat()
        except Exception:
            log.exception("the meter's last charges at close failed; the next start recovers them")
        if self._callbacks:
            await asyncio.gather(*self._callbacks, return_exceptions=True)

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            now = self.clock()
            # The heartbeat bounds what a restart bills: only open sessions need it, so a meter
            # with none neither writes nor wakes.
            if self._sessions and now >= self._next_beat:
                await self._beat(now)
            if self._heap and self._heap[0][0] <= now:
                try:
                    await self.fire_due()
                except Exception:
                    log.exception("metering tick failed; affected sessions reloaded from the store")
                await asyncio.sleep(self.tick_seconds)
                continue
            self._wakeup.clear()
            self._drop_stale_head()
            handle = None
            if self._sessions:
                wake_at = min(self._heap[0][0], self._next_beat) if self._heap else self._next_beat
                handle = loop.call_later(max(0.0, wake_at - self.clock()), self._wakeup.set)
                self._sleeping_until = wake_at
            else:
                self._sleeping_until = float("inf")
            await self._wakeup.wait()
            self._sleeping_until = float("-inf")
            if handle is not None:
                handle.cancel()

    def _drop_stale_head(self) -> None:
        """Pop entries of ended or rescheduled sessions off the top of the heap, so that the
        timer is set for a live entry (or not at all when there is none)."""
        if not self._sessions:
            self._heap.clear()
            return
        while self._heap:
            _, _, sid, gen = self._heap[0]
            s = self._sessions.get(sid)
            if s is not None and s.generation == gen:
                return
            heapq.heappop(self._heap)

    async def _beat(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        try:
            await self.store.beat(self.node_id, now)
        except Exception:
            log.exception("meter heartbeat not recorded")
        self._next_beat = now + self.heartbeat_seconds

    # --- internals ---------------------------------------------------------------------------

    def _open(self, session_id: str) -> _Session:
        s = self._sessions.get(session_id)
        if s is None:
            raise BillingError("unknown_session", f"session {session_id} is not being metered")
        return s

    def _clamp(self, s: _Session, at: float | None) -> float:
        """Events apply in order: a time before what the meter already recorded or charged for the
        session is taken as that time (charges are never retracted here; refunds correct)."""
        at = self.clock() if at is None else at
        return max(at, s.last_at)

    def _event(self, s: _Session, event_id: str, short_type: str, at: float, data: dict[str, Any]) -> dict[str, Any]:
        return self.outbox.event(event_id, short_type, s.session_id, at, {
            "expert_id": s.expert_id, "client_id": s.client_id, "currency": s.price.currency, **data,
        })

    def _pause(self, s: _Session, at: float, batch: _Batch, reason: str) -> None:
        self._advance(s, at, batch)
        self._close_interval(s, at, batch)
        idx = len(s.intervals) - 1
        batch.events.append(self._event(s, f"{s.session_id}:paused:{idx}", "paused", at, {
            "interval": idx, "live_seconds": s.live_seconds(at), "units": s.units, "reason": reason,
        }))

    def _close_interval(self, s: _Session, at: float, batch: _Batch) -> None:
        start = s.intervals[-1][0]
        s.intervals[-1][1] = at
        s.closed_live += at - start
        s.last_at = at
        s.generation += 1
        batch.write.intervals_closed.append((s.session_id, len(s.intervals) - 1, at))

    def _advance(self, s: _Session, now: float, batch: _Batch) -> None:
        """Charge every unit of ``s`` due by ``now``, in order, and raise budget notices."""
        live = s.live_seconds(now)
        charged_at = self.clock()
        while True:
            threshold = s.next_threshold()
            if threshold is None or not s.intervals:
                return
            limit, strict = threshold
            if live < limit or (strict and live == limit):
                return
            at = s.wall_time_at(limit)
            assert at is not None
            amount = s.price.amount
            cap = s.budget_cap
            if cap is not None and s.total + amount > cap:
                s.capped = True
                batch.notices.append((self.on_budget_reached, BudgetReached(
                    s.session_id, s.expert_id, s.client_id, s.total, cap, at,
                )))
                return
            index = s.units
            parts = split_increment(s.total, amount, s.policy.platform_fee_bps)
            s.units += 1
            s.total = s.total + amount
            s.last_at = max(s.last_at, at)
            batch.postings.append(Posting(
                f"{s.session_id}:unit:{index}", s.session_id, CHARGE, index, s.expert_id, s.client_id,
                parts.gross, parts.fee, parts.payout, at,
            ))
            batch.events.append(self._event(s, f"{s.session_id}:unit:{index}", "unit", at, {
                "unit_index": index,
                "price_kind": s.price.kind.value,
                "amount": amount.amount,
                "fee": parts.fee.amount,
                "payout": parts.payout.amount,
                "running_total": s.total.amount,
                "live_seconds": limit,
            }))
            batch.notices.append((self.on_unit, UnitCharged(
                s.session_id, s.expert_id, s.client_id, index, amount, s.total, cap, at, charged_at,
            )))
            if (
                cap is not None and s.price.kind is PriceKind.PER_MINUTE and not s.warned
                and s.total + amount > cap
            ):
                s.warned = True
                batch.notices.append((self.on_budget_warning, BudgetWarning(
                    s.session_id, s.expert_id, s.client_id, s.total, cap,
                    s.policy.grace_seconds + s.units * s.policy.unit_seconds,
                )))

    def _schedule(self, s: _Session) -> None:
        if not s.live or self._closed:
            return
        threshold = s.next_threshold()
        if threshold is None:
            return
        due = s.wall_time_at(threshold[0])
        if due is None:
            return
        s.generation += 1
        heapq.heappush(self._heap, (due, next(self._seq), s.session_id, s.generation))
        # Wake the timer task when this entry falls due before the time it sleeps until. (Not
        # "when it is at the head of the heap": an ended session's stale entry can sit there, and
        # a task sleeping without a timer, as it does while no session is open, never woke up.)
        if self._wakeup is not None and due < self._sleeping_until:
            self._wakeup.set()
        if len(self._heap) > 4 * len(self._sessions) + 1024:
            self._compact()

    def _compact(self) -> None:
        live = {(sid, s.generation) for sid, s in self._sessions.items()}
        self._heap = [e for e in self._heap if (e[2], e[3]) in live]
        heapq.heapify(self._heap)

    async def _commit(self, batch: _Batch) -> None:
        write = batch.write
        if write.empty():
            self._dispatch(batch)
            return
        write.fences = {sid: self._fences.get(sid, 0) for sid in write.touched()}
        try:
            await self.store.commit(write)
        except StaleOwner as exc:
            # Another node's Meter took these sessions over: forget them; the rest reload.
            for sid in exc.session_ids:
                self._forget(sid)
            for sid in write.touched() - set(exc.session_ids):
                await self._reload(sid)
            raise
        except BaseException:
            # Memory ran ahead of a transaction that did not commit: take the store's word for it.
            for sid in write.touched():
                await self._reload(sid)
            raise
        self.units_charged += len(write.postings)
        self.outbox.notify()
        self._dispatch(batch)

    def _forget(self, session_id: str) -> None:
        s = self._sessions.pop(session_id, None)
        self._fences.pop(session_id, None)
        if s is None:
            return
        s.generation += 1
        log.warning("session %s: fenced off by a newer meter; no longer metered here", session_id)
        if self.on_lost is not None:
            self._dispatch(_Batch(notices=[(self.on_lost, session_id)]))

    def _dispatch(self, batch: _Batch) -> None:
        for callback, notice in batch.notices:
            if callback is None:
                continue
            try:
                result = callback(notice)
            except Exception:
                log.exception("billing callback %r failed", callback)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._callbacks.add(task)
                task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("billing callback failed", exc_info=task.exception())

    async def _reload(self, session_id: str) -> None:
        s = self._sessions.pop(session_id, None)
        if s is None:
            return
        s.generation += 1
        stored = await self.store.session(session_id)
        if stored is not None and stored.ended_at is None:
            fresh = self._load(stored)
            self._sessions[session_id] = fresh
            self._schedule(fresh)
        else:
            self._fences.pop(session_id, None)

    def _load(self, stored: StoredSession) -> _Session:
        price = Price.from_dict(stored.price)
        policy = BillingPolicy.from_dict(stored.policy)
        cap = Money(stored.budget_cap, price.currency) if stored.budget_cap is not None else None
        s = _Session(
            stored.session_id, stored.expert_id, stored.client_id, price, policy, cap, stored.started_at,
            total=Money.zero(price.currency), last_at=stored.started_at,
        )
        for start, end in stored.intervals:
            s.intervals.append([start, end])
            if end is not None:
                s.closed_live += end - start
            s.last_at = max(s.last_at, start, end or 0.0)
        s.units = stored.units
        s.total = Money(stored.gross, price.currency)
        if stored.last_unit_at is not None:
            s.last_at = max(s.last_at, stored.last_unit_at)
        if cap is not None and s.price.kind is PriceKind.PER_MINUTE:
            s.warned = s.units > 0 and s.total + price.amount > cap
        return s

    async def _stored_summary(self, session_id: str) -> SessionSummary:
        stored = await self.store.session(session_id)
        if stored is None or stored.ended_at is None:
            raise BillingError("unknown_session", f"session {session_id} is not being metered")
        s = self._load(stored)
        totals = split(s.total, s.policy.platform_fee_bps)
        return SessionSummary(
            session_id, stored.end_reason or "", s.units, s.total, s.closed_live, s.timeline(), totals.fee, totals.payout,
        )


Claim = Callable[[StoredSession], Awaitable["int | None"]]
