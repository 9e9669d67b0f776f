"""Billing <-> sessions: the session machine drives the Meter, the Meter talks to both parties.

Transitions drive the Meter: ``accepted`` opens metering with the session's quote (the price and
policy fixed when the client asked, or booked: ``billing/quote.py``) and the client's budget from
the session record, ``live`` and ``paused`` start and stop the clock, ``ended`` settles it. The
Meter listens as a critical listener: a failure is retried and then fails the transition loudly. The Meter's callbacks become messages
to both parties: ``billing.cost`` at every unit (and when metering opens or the budget changes),
``billing.warning`` one unit before the budget, and ``billing.summary`` when the session ends; at
the budget the session ends with ``budget_reached``. Clients send ``billing.budget`` (before or
during the call) and either side ``billing.cost.get``.

Messages leave through one queue served by one task, so that each party hears them in the order
the Meter charged, whatever delivering one costs.

After a restart the Meter reloads its open sessions before the session layer recovers; ``sync``
then brings each in line with its session's state (a session the node paused on restart stops
its clock; one that ended while the process was down is settled; one whose budget ran out across
the outage ends with ``budget_reached``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .. import keys
from ..protocol import ErrorCode, ProtocolError, message
from ..sessions import IN_PROGRESS, WAITING, EndReason, Session, State, Transition
from ..websocket import CLIENT, PARTICIPANT, ROUTES, Connection, Route
from .meter import (
    BillingError,
    BudgetReached,
    BudgetWarning,
    Meter,
    RunningCost,
    SessionSummary,
    UnitCharged,
)
from .money import Money
from .pricing import Price, PriceKind
from .quote import Quote, quote_for

log = logging.getLogger(__name__)


def setup(app: web.Application) -> None:
    """Register after the signalling node (its cleanup_ctx must have started)."""
    app.cleanup_ctx.append(session_billing_ctx)


async def session_billing_ctx(app: web.Application) -> AsyncIterator[None]:
    billing = SessionBilling(app)
    app[keys.SESSION_BILLING] = billing
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
        self.meter: Meter = app[keys.METER]
        self.node = app[keys.SIGNALLING]
        self._outgoing: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._endings: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def start(self) -> None:
        self.meter.on_unit = self.on_unit
        self.meter.on_budget_warning = self.on_budget_warning
        self.meter.on_budget_reached = self.on_budget_reached
        self.node.sessions.add_listener(self.on_transition, critical=True)
        self._sender = asyncio.create_task(self._send_all(), name="billing-messages")
        await self.sync()

    async def close(self) -> None:
        self._closed = True
        self.meter.on_unit = self.meter.on_budget_warning = self.meter.on_budget_reached = None
        if self._endings:
            await asyncio.gather(*self._endings, return_exceptions=True)
        await self._outgoing.join()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender

    async def sync(self) -> None:
        """Bring the Meter in line with the sessions after a restart (see the module docstring)."""
        for session_id in self.meter.open_sessions():
            session = await self.node.sessions.get(session_id)
            if session is None:
                continue
            if session.state is State.ENDED:
                await self.meter.ended(session_id, at=session.updated_at, reason=session.reason or "ended")
                continue
            if session.state is State.LIVE:
                await self.meter.media_live(session_id, at=session.updated_at)
            else:
                await self.meter.media_paused(session_id, at=session.updated_at)
            if self.meter.running_cost(session_id).capped:
                # The budget ran out while the server was down, before anyone could be told.
                self._end(session_id)
        for session_id in await self.node.backend.active_session_ids():
            session = await self.node.sessions.get(session_id)
            if session is None or session.state not in IN_PROGRESS or self.meter.is_open(session_id):
                continue
            if await self.meter.store.session(session_id) is not None:
                continue
            # Accepted just before a crash, before metering opened.
            await self._start(session, session.updated_at)
            if session.state is State.LIVE:
                await self.meter.media_live(session_id, at=session.updated_at)

    # --- the session machine drives the meter ---------------------------------------------------

    async def on_transition(self, transition: Transition) -> None:
        if self._closed:
            return
        session, sid, at = transition.session, transition.session_id, transition.at
        if transition.state is State.ACCEPTED:
            await self._start(session, at)
        elif transition.state is State.LIVE and self.meter.is_open(sid):
            await self.meter.media_live(sid, at=at)
        elif transition.state is State.PAUSED and self.meter.is_open(sid):
            await self.meter.media_paused(sid, at=at)
        elif transition.state is State.ENDED:
            if self.meter.is_open(sid):
                self._summarise(session, await self.meter.ended(sid, at=at, reason=transition.reason))

    async def terms(self, session: Session) -> Quote:
        """The session's quote; a session that has none (made before quotes existed) is quoted now."""
        if session.quote is not None:
            return Quote.from_dict(session.quote)
        return await quote_for(
            self.settings, self.app[keys.EXPERTS], self.app[keys.PLATFORM_FEES], session.expert_id, self.meter.clock()
        )

    async def _start(self, session: Session, at: float) -> None:
        quote = await self.terms(session)
        price, policy = quote.price, quote.policy
        cap = Money(session.budget, price.currency) if session.budget is not None else None
        args = (session.id, session.expert_id, session.client_id, price, policy)
        try:
            cost = await self.meter.started(*args, cap, at=at)
        except BillingError as exc:
            if exc.code != "budget_too_low":
                raise
            # Only a session without a quote can get here (its price was looked up at accept).
            cost = await self.meter.started(*args, at=at)
            self._end(session.id)
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
        if session.state not in IN_PROGRESS or not self.meter.is_open(session.id):
            raise ProtocolError(ErrorCode.INVALID_STATE, f"session {session.id} is {session.state.value}: its budget is final")
        currency = self.meter.running_cost(session.id).price.currency
        try:
            cost = await self.meter.set_budget(session.id, Money(budget, currency))
        except BillingError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        async with self.node.backend.lock(f"expert:{session.expert_id}"):
            current = await self.node.sessions.get(session.id)
            if current is not None and current.state in IN_PROGRESS:
                await self.node.sessions.save(current, budget=budget)
        msg = cost_message(cost)
        self._send(session.expert_id, msg)
        return msg

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
        stored = await self.meter.store.session(session.id)
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


# --- protocol handlers ----------------------------------------------------------------------------


async def on_billing_budget(conn: Connection, msg: dict[str, Any]) -> None:
    session = await conn.node.queues.visible(conn.user_id, msg["session_id"])
    if session.client_id != conn.user_id:
        raise ProtocolError(ErrorCode.FORBIDDEN, "only the session's client sets its budget")
    reply = await conn.app[keys.SESSION_BILLING].set_budget(session, msg["budget"])
    await conn.send({**reply, "ref": msg.get("id")} if msg.get("id") is not None else reply)


async def on_billing_cost_get(conn: Connection, msg: dict[str, Any]) -> None:
    session = await conn.node.queues.visible(conn.user_id, msg["session_id"])
    reply = await conn.app[keys.SESSION_BILLING].cost(session)
    await conn.send({**reply, "ref": msg.get("id")} if msg.get("id") is not None else reply)


ROUTES["billing.budget"] = Route(on_billing_budget, CLIENT)
ROUTES["billing.cost.get"] = Route(on_billing_cost_get, PARTICIPANT)
