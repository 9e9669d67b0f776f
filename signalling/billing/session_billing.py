"""Billing <-> sessions: the session machine drives the Meter, the Meter talks to both parties.

Transitions drive the Meter: ``accepted`` opens metering with the session's quote (the price and
policy fixed when the client asked, or booked: ``billing/quote.py``) and the client's budget from
the session record, ``live`` and ``paused`` start and stop the clock, ``ended`` settles it. The
Meter's callbacks become messages to both parties: ``billing.cost`` at every unit (and when
metering opens or the budget changes), ``billing.warning`` one unit before the budget, and
``billing.summary`` when the session ends; at the budget the session ends with
``budget_reached``. Clients send ``billing.budget`` (before or during the call) and either side
``billing.cost.get``.

One meter per session. The node hosting a session's media room (``Session.media_node``) meters
it, holding the session's metering lease in the backend; its writes carry the lease's fencing
token, which the billing store checks. A transition made on another node (a hang-up there, say)
is forwarded to the owner as a ``billing`` envelope; if the owner is gone, the node that made
the transition takes the lease over and settles the meter itself (``Meter.adopt`` bills the
dead meter's session only up to its last heartbeat). A node adopting a dead node's room takes
its metering with it. Every few seconds the owner also checks its sessions' records, so that an
end whose envelope was lost is settled all the same. The listener is critical: a failure is
retried and then fails the transition loudly.

Messages leave through one queue served by one task, so that each party hears them in the order
the Meter charged, whatever delivering one costs.

At start-up the Meter takes nothing over by itself (``METER_CLAIM``); once the node has
recovered its sessions and adopted the rooms of dead nodes, ``sync`` takes over the metering of
the sessions whose room is here (paused where their last meter was last alive), settles those
that ended while nobody metered them, and opens metering for a session accepted just before a
crash. Sessions metered by live nodes are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..calls.billing_desk import BILLING_DESK
from ..calls.node import SIGNALLING
from ..calls.sessions import IN_PROGRESS, WAITING, EndReason, Session, State, Transition
from ..core import keys
from ..core.protocol import ErrorCode, ProtocolError, message
from ..core.tasks import cancel_and_wait
from ..experts.rest import EXPERTS
from .meter import BillingError, BudgetReached, BudgetWarning, Meter, RunningCost, SessionSummary, UnitCharged
from .money import Money
from .pricing import PriceKind
from .quote import Quote, quote_for
from .service import METER, METER_CLAIM, PLATFORM_FEES
from .store import StoredSession

log = logging.getLogger(__name__)

# How often an owner checks the records of the sessions it meters (a lost envelope's safety net).
WATCH_SECONDS = 2.0


def setup(app: web.Application) -> None:
    """Register after the signalling node (its cleanup_ctx must have started)."""
    app[METER_CLAIM] = claim_nothing
    app.cleanup_ctx.append(session_billing_ctx)


async def claim_nothing(stored: StoredSession) -> int | None:
    """At the Meter's start the sessions are not recovered yet: ``SessionBilling.sync`` claims."""
    return None


async def session_billing_ctx(app: web.Application) -> AsyncIterator[None]:
    billing = SessionBilling(app)
    app[BILLING_DESK] = billing
    await billing.start()
    try:
        yield
    finally:
        await billing.close()


def money_json(money: Money | None) -> dict[str, Any] | None:
    return None if money is None else {"amount": money.amount, "currency": money.currency}


class SessionBilling:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings = app[keys.SETTINGS]
        self.meter: Meter = app[METER]
        self.node = app[SIGNALLING]
        self.node_id = self.node.node_id
        self._outgoing: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._endings: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._stop_watching = asyncio.Event()

    async def start(self) -> None:
        self.meter.on_unit = self.on_unit
        self.meter.on_budget_warning = self.on_budget_warning
        self.meter.on_budget_reached = self.on_budget_reached
        self.meter.on_lost = self.on_lost
        self.node.sessions.add_listener(self.on_transition, critical=True)
        self.node.envelope_handlers["billing"] = self.on_envelope
        self._sender = asyncio.create_task(self._send_all(), name="billing-messages")
        await self.sync()
        self._watcher = asyncio.create_task(self._watch(), name="billing-watch")

    async def close(self) -> None:
        self._closed = True
        self.meter.on_unit = self.meter.on_budget_warning = self.meter.on_budget_reached = None
        self.meter.on_lost = None
        self.node.envelope_handlers.pop("billing", None)
        if self._watcher is not None:
            # A stop flag, not Task.cancel(): redis-py can swallow a cancellation that lands in a
            # command, and a watcher that never ends would hold the shutdown forever.
            self._stop_watching.set()
            try:
                async with asyncio.timeout(5):
                    await self._watcher
            except TimeoutError:
                self._watcher.cancel()
        if self._endings:
            await asyncio.gather(*self._endings, return_exceptions=True)
        await self._outgoing.join()
        await cancel_and_wait(self._sender)

    async def sync(self) -> None:
        """Take over, settle or open the metering this node owns (see the module docstring)."""
        for stored in await self.meter.unsettled():
            session = await self.node.sessions.get(stored.session_id)
            if session is not None and session.state is not State.ENDED and session.media_node not in ("", self.node_id):
                continue  # its room, and so its meter, is on another node
            if not await self._own(stored.session_id, stored.fence):
                continue  # metered by a node that is alive
            if session is None:
                continue  # no record of it here: recovered paused, as a lone meter would
            await self._apply(session, session.state, session.updated_at, session.reason or "ended")
        for session_id in await self.node.backend.active_session_ids():
            session = await self.node.sessions.get(session_id)
            if (
                session is None or session.state not in IN_PROGRESS or self.meter.is_open(session_id)
                or session.media_node not in ("", self.node_id)
            ):
                continue
            if await self.meter.record(session_id) is not None:
                continue
            # Accepted just before a crash, before metering opened.
            await self._start(session, session.updated_at)
            if session.state is State.LIVE:
                await self.meter.media_live(session_id, at=session.updated_at)

    # --- the session machine drives the meter ---------------------------------------------------

    async def on_transition(self, transition: Transition) -> None:
        if self._closed:
            return
        await self.route(transition.session, transition.state, transition.at, transition.reason)

    async def route(self, session: Session, state: State, at: float, reason: str, hops: int = 0) -> None:
        """Apply a transition here if this node meters the session (or its meter is gone), else
        forward it to the node that does."""
        owner = session.media_node or self.node_id
        if owner != self.node_id and state is not State.ACCEPTED and not self.meter.is_open(session.id):
            if hops < 2 and await self.node.backend.node_alive(owner):
                await self.node.backend.send_to_node(owner, {
                    "op": "billing", "kind": "transition", "session_id": session.id,
                    "state": state.value, "at": at, "reason": reason, "hops": hops + 1,
                })
                return
            # The owner is gone: this node settles its meter (only what the store says was due).
        if state is State.ACCEPTED:
            await self._start(session, at)
        elif await self._own(session.id):
            await self._apply(session, state, at, reason)

    async def _apply(self, session: Session, state: State, at: float, reason: str) -> None:
        sid = session.id
        if not self.meter.is_open(sid):
            return
        if state is State.LIVE:
            await self.meter.media_live(sid, at=at)
        elif state in (State.PAUSED, State.ACCEPTED, State.CONNECTING):
            await self.meter.media_paused(sid, at=at)
        elif state is State.ENDED:
            self._summarise(session, await self.meter.ended(sid, at=at, reason=reason))
            await self.node.backend.release_meter_lease(sid)
            return
        cap = self.meter.running_cost(sid).budget_cap
        if session.budget is not None and (cap is None or cap.amount != session.budget):
            await self._apply_budget(session, session.budget)  # set on another node meanwhile
        if self.meter.is_open(sid) and self.meter.running_cost(sid).capped:
            self._end(sid)  # the budget ran out while nobody metered it

    async def _own(self, session_id: str, floor: int | None = None) -> bool:
        """Whether this node meters the session, taking it over (lease, then the Meter's
        ``adopt``) when it is not metered by a node that is alive."""
        if self.meter.is_open(session_id):
            return True
        if floor is None:
            stored = await self.meter.record(session_id)
            if stored is None or stored.ended_at is not None:
                return False
            floor = stored.fence
        token = await self.node.backend.meter_lease(session_id, floor=floor)
        if token is None:
            return False
        return await self.meter.adopt(session_id, token)

    async def on_envelope(self, envelope: dict[str, Any]) -> None:
        """A transition (or a budget) made on another node, for a session metered here."""
        session = await self.node.sessions.get(envelope["session_id"])
        if session is None:
            return
        if envelope.get("kind") == "budget":
            if await self._own(session.id):
                await self._apply_budget(session, envelope["budget"])
            return
        await self.route(session, State(envelope["state"]), envelope["at"], envelope["reason"], envelope.get("hops", 1))

    def on_lost(self, session_id: str) -> None:
        log.warning("session %s is metered by another node now", session_id)

    async def _watch(self) -> None:
        """Settle what an envelope may not have said: the owner reads its sessions' records."""
        while not self._stop_watching.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_SECONDS):
                    await self._stop_watching.wait()
            if self._stop_watching.is_set():
                return
            for session_id in self.meter.open_sessions():
                try:
                    session = await self.node.sessions.get(session_id)
                    if session is None or not self.meter.is_open(session_id):
                        continue
                    if session.state is State.ENDED:
                        await self._apply(session, State.ENDED, session.updated_at, session.reason or "ended")
                    elif session.media_node not in ("", self.node_id) and await self.node.backend.node_alive(session.media_node):
                        # Its room moved to a live node, which meters it now.
                        await self.meter.release(session_id)
                except Exception:
                    log.exception("checking the record of session %s failed", session_id)

    async def terms(self, session: Session) -> Quote:
        """The session's quote; a session that has none (made before quotes existed) is quoted now."""
        if session.quote is not None:
            return Quote.from_dict(session.quote)
        return await quote_for(
            self.settings, self.app[EXPERTS], self.app[PLATFORM_FEES], session.expert_id, self.meter.clock()
        )

    async def _start(self, session: Session, at: float) -> None:
        token = await self.node.backend.meter_lease(session.id)
        if token is None:
            log.warning("session %s: accepted here but another live node holds its metering lease", session.id)
            return
        quote = await self.terms(session)
        price, policy = quote.price, quote.policy
        cap = Money(session.budget, price.currency) if session.budget is not None else None
        args = (session.id, session.expert_id, session.client_id, price, policy)
        try:
            cost = await self.meter.started(*args, cap, at=at, fence=token)
        except BillingError as exc:
            if exc.code == "session_exists":
                await self.meter.adopt(session.id, token)  # a dead node opened it
                return
            if exc.code != "budget_too_low":
                raise
            # Only a session without a quote can get here (its price was looked up at accept).
            cost = await self.meter.started(*args, at=at, fence=token)
            self._end(session.id)
        self._both(session.expert_id, session.client_id, cost_message(cost))

    async def _apply_budget(self, session: Session, budget: int) -> None:
        currency = self.meter.running_cost(session.id).price.currency
        try:
            cost = await self.meter.set_budget(session.id, Money(budget, currency))
        except BillingError as exc:
            log.warning("session %s: budget %s refused by the meter: %s", session.id, budget, exc.message)
            return
        self._both(session.expert_id, session.client_id, cost_message(cost))

    def _summarise(self, session: Session, summary: SessionSummary) -> None:
        common = {
            "session_id": session.id, "reason": summary.reason, "units": summary.units,
            "live_seconds": round(summary.live_seconds, 3),
        }
        self._send(session.client_id, message(
            "billing.summary", role="client", charged=money_json(summary.total), **common,
        ))
        self._send(session.expert_id, message(
            "billing.summary", role="expert", gross=money_json(summary.total),
            fee=money_json(summary.fee), payout=money_json(summary.payout), **common,
        ))

    # --- the meter talks back -------------------------------------------------------------------

    def on_unit(self, notice: UnitCharged) -> None:
        if not self.meter.is_open(notice.session_id):
            return
        cost = self.meter.running_cost(notice.session_id)
        msg = cost_message(cost)
        msg.update(units=notice.unit_index + 1, total=money_json(notice.running_total))
        self._both(notice.expert_id, notice.client_id, msg)

    def on_budget_warning(self, notice: BudgetWarning) -> None:
        ends_at = None
        if self.meter.is_open(notice.session_id):
            ends_at = self.meter.running_cost(notice.session_id).next_charge_at
        self._both(notice.expert_id, notice.client_id, message(
            "billing.warning",
            session_id=notice.session_id,
            total=money_json(notice.running_total),
            budget_cap=money_json(notice.budget_cap),
            ends_at_live_seconds=notice.ends_at_live_seconds,
            ends_at=ends_at,
        ))

    def on_budget_reached(self, notice: BudgetReached) -> None:
        self._end(notice.session_id)

    def _end(self, session_id: str) -> None:
        # Not from inside the meter's call: that may run under the expert's lock, which end() takes.
        task = asyncio.ensure_future(self.node.queues.end(session_id, EndReason.BUDGET_REACHED))
        self._endings.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Future[Any]) -> None:
        self._endings.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ending a session at its budget failed", exc_info=task.exception())

    # --- what clients ask -------------------------------------------------------------------------

    async def set_budget(self, session: Session, budget: int) -> dict[str, Any]:
        """The client's cap for ``session``; returns the ``billing.cost`` fields that follow from it."""
        if session.state in WAITING:
            price = (await self.terms(session)).price
            if price.kind is not PriceKind.FREE and budget < price.amount.amount:
                raise ProtocolError("budget_too_low", f"a budget of {budget} does not cover one charge of {price.amount}")
            # On the session record, so that whichever node accepts it meters with the cap.
            async with self.node.backend.lock(f"expert:{session.expert_id}"):
                current = await self.node.sessions.get(session.id)
                if current is not None and current.state in WAITING:
                    return await self.cost(await self.node.sessions.save(current, budget=budget))
            session = current or session  # accepted meanwhile: the cap of a running session
        stored = await self.meter.record(session.id)
        if session.state not in IN_PROGRESS or stored is None or stored.ended_at is not None:
            raise ProtocolError(ErrorCode.INVALID_STATE, f"session {session.id} is {session.state.value}: its budget is final")
        cost = self.meter.running_cost(session.id) if self.meter.is_open(session.id) else self.meter.cost_of(stored)
        charge = cost.price.amount
        if cost.price.kind is not PriceKind.FREE and budget < charge.amount:
            raise ProtocolError("budget_too_low", f"a budget of {budget} does not cover one charge of {charge}")
        if budget < cost.total.amount:
            raise ProtocolError("budget_below_spent", f"{cost.total} has been charged already")
        async with self.node.backend.lock(f"expert:{session.expert_id}"):
            current = await self.node.sessions.get(session.id)
            if current is not None and current.state in IN_PROGRESS:
                session = await self.node.sessions.save(current, budget=budget)
        if self.meter.is_open(session.id):
            try:
                cost = await self.meter.set_budget(session.id, Money(budget, cost.price.currency))
            except BillingError as exc:
                raise ProtocolError(exc.code, exc.message) from None
            msg = cost_message(cost)
            self._send(session.expert_id, msg)
            return msg
        # Metered on another node: it applies the cap and tells both; this answers at once.
        owner = session.media_node
        if owner and await self.node.backend.node_alive(owner):
            await self.node.backend.send_to_node(
                owner, {"op": "billing", "kind": "budget", "session_id": session.id, "budget": budget}
            )
        elif await self._own(session.id):
            await self._apply_budget(session, budget)
        return {**cost_message(cost), "budget_cap": money_json(Money(budget, cost.price.currency))}

    async def cost(self, session: Session) -> dict[str, Any]:
        """The ``billing.cost`` of any session a participant may ask about."""
        if self.meter.is_open(session.id):
            return cost_message(self.meter.running_cost(session.id))
        if session.state in WAITING:
            price = (await self.terms(session)).price
            budget = session.budget
            return message(
                "billing.cost",
                session_id=session.id,
                price=price.to_dict(),
                units=0,
                total=money_json(Money.zero(price.currency)),
                live=False,
                live_seconds=0.0,
                budget_cap=money_json(Money(budget, price.currency)) if budget is not None else None,
                next_charge_at=None,
            )
        stored = await self.meter.record(session.id)
        if stored is None:
            raise ProtocolError(ErrorCode.INVALID_STATE, f"session {session.id} was never metered")
        return cost_message(self.meter.cost_of(stored))

    # --- delivery -------------------------------------------------------------------------------

    def _both(self, expert_id: str, client_id: str, msg: dict[str, Any]) -> None:
        self._send(client_id, msg)
        self._send(expert_id, msg)

    def _send(self, user_id: str, msg: dict[str, Any]) -> None:
        self._outgoing.put_nowait((user_id, msg))

    async def _send_all(self) -> None:
        while True:
            user_id, msg = await self._outgoing.get()
            try:
                await self.node.backend.deliver(user_id, msg)
            except Exception:
                log.exception("could not deliver %s to %s", msg.get("type"), user_id)
            finally:
                self._outgoing.task_done()


def cost_message(cost: RunningCost, ref: Any = None) -> dict[str, Any]:
    return message(
        "billing.cost",
        ref,
        session_id=cost.session_id,
        price=cost.price.to_dict(),
        units=cost.units,
        total=money_json(cost.total),
        live=cost.live,
        live_seconds=round(cost.live_seconds, 3),
        budget_cap=money_json(cost.budget_cap),
        next_charge_at=cost.next_charge_at,
    )
