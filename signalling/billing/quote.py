"""The quote: the terms a client is shown before an expert is rung, and is then charged at.

A quote is the expert's price (kind, amount, currency) with the server's billing policy for that
expert (the unit, the grace, the per-session minimum and the platform fee in basis points), fixed
when the client asks for help (on the session record) or books (on the booking). Metering opens
with the quote, never with a fresh look at the profile, so a price raised after the request
applies to later requests only. It travels as a plain dict (``to_dict``) on the session record,
which the sessions module stores without interpreting it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.settings import Settings
from ..experts.model import ProfilePrice
from ..experts.profiles import ExpertProfiles
from .fees import PlatformFees
from .money import Money
from .pricing import BillingPolicy, Price, PriceKind, PricingError


@dataclass(frozen=True)
class Quote:
    price: Price
    policy: BillingPolicy
    quoted_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"price": self.price.to_dict(), **self.policy.to_dict(), "quoted_at": self.quoted_at}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Quote":
        try:
            return cls(Price.from_dict(data["price"]), BillingPolicy.from_dict(data), float(data["quoted_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PricingError("bad_quote", f"not a quote: {exc}") from None


def billing_price(price: ProfilePrice) -> Price:
    """An expert's stored price ({"mode", "amount", "currency"}) as billing's ``Price``."""
    if price.mode == "free":
        return Price.free(price.currency)
    return Price(PriceKind(price.mode), Money(price.amount, price.currency))


async def quote_for(settings: Settings, experts: ExpertProfiles, fees: PlatformFees, expert_id: str, at: float) -> Quote:
    """The terms of a session with ``expert_id`` asked for at ``at``: their current profile price
    (free without a profile) and the server's policy with any fee set for them."""
    expert = await experts.get(expert_id)
    price = billing_price(expert.profile.price) if expert is not None else Price.free()
    policy = BillingPolicy.from_settings(settings, platform_fee_bps=await fees.override(expert_id))
    return Quote(price, policy, at)
