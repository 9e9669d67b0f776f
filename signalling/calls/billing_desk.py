"""What a call asks of billing while it runs: the client's budget, and the running cost.

The socket layer answers ``billing.budget`` and ``billing.cost.get`` through this interface;
billing (``billing/session_billing.py``) provides it. Calls never import billing."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from .sessions import Session


class BillingDesk(Protocol):
    async def set_budget(self, session: Session, budget: int) -> dict[str, Any]:
        """The client's cap for ``session``; the ``billing.cost`` fields that follow from it."""
        ...

    async def cost(self, session: Session) -> dict[str, Any]:
        """The ``billing.cost`` fields of any session a participant may ask about."""
        ...


# Set by billing while the app runs.
BILLING_DESK: web.AppKey[BillingDesk] = web.AppKey("billing_desk")
