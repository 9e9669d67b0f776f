"""What a session costs: the expert's ``Price``, the platform's ``BillingPolicy`` and the fee split.

Fee rounding rule (docs/billing.md): the platform fee on a gross amount is
``floor(gross * fee_bps / 10000)`` and the expert's payout is ``gross - fee``, so the remainder of
a minor unit always goes to the expert and fee + payout == gross exactly. Within a session the fee
is taken on the running total, not unit by unit: unit n's fee is
``fee(total after n) - fee(total before n)``. The session's fee is then exactly the rule applied to
its whole gross, however many units it had, and per-unit rounding never drifts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ..core.errors import CodedError
from .money import Money, MoneyError

BPS_DENOMINATOR = 10_000


class PricingError(CodedError, ValueError):
    """A malformed price or billing policy."""


class PriceKind(str, enum.Enum):
    FREE = "free"
    PER_SESSION = "per_session"
    # Charged per started billing unit (BillingPolicy.unit_seconds, 60 s by default): ``amount``
    # is the price of one unit, i.e. the per-minute rate with the default unit.
    PER_MINUTE = "per_minute"


@dataclass(frozen=True)
class Price:
    kind: PriceKind
    amount: Money

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", PriceKind(self.kind))
        if not isinstance(self.amount, Money):
            raise PricingError("bad_price", "a price amount must be Money")
        if self.amount.amount < 0:
            raise PricingError("bad_price", "a price cannot be negative")
        if self.kind is PriceKind.FREE and self.amount.amount != 0:
            raise PricingError("bad_price", "a free price has amount 0")
        if self.kind is not PriceKind.FREE and self.amount.amount == 0:
            raise PricingError("bad_price", f"a {self.kind.value} price must be above 0 (use free)")

    @classmethod
    def free(cls, currency: str = "USD") -> "Price":
        return cls(PriceKind.FREE, Money.zero(currency))

    @classmethod
    def per_session(cls, amount: Money) -> "Price":
        return cls(PriceKind.PER_SESSION, amount)

    @classmethod
    def per_minute(cls, rate: Money) -> "Price":
        return cls(PriceKind.PER_MINUTE, rate)

    @property
    def currency(self) -> str:
        return self.amount.currency

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, **self.amount.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Price":
        try:
            return cls(PriceKind(data.get("kind")), Money.from_dict(data))
        except ValueError as exc:
            code = exc.code if isinstance(exc, (MoneyError, PricingError)) else "bad_price"
            raise PricingError(code, str(exc)) from None


@dataclass(frozen=True)
class BillingPolicy:
    unit_seconds: int = 60
    # Live time at the start of a per_minute session that is never charged.
    grace_seconds: int = 0
    # A per_session price is charged once the session has been live this long; shorter is free.
    per_session_minimum_seconds: int = 60
    platform_fee_bps: int = 2000

    def __post_init__(self) -> None:
        for name in ("unit_seconds", "grace_seconds", "per_session_minimum_seconds", "platform_fee_bps"):
            if type(getattr(self, name)) is not int:
                raise PricingError("bad_policy", f"{name} must be an integer")
        if self.unit_seconds < 1:
            raise PricingError("bad_policy", "unit_seconds must be at least 1")
        if self.grace_seconds < 0 or self.per_session_minimum_seconds < 0:
            raise PricingError("bad_policy", "grace and minimum seconds cannot be negative")
        if not 0 <= self.platform_fee_bps <= BPS_DENOMINATOR:
            raise PricingError("bad_policy", "platform_fee_bps must be between 0 and 10000")

    @classmethod
    def from_settings(cls, settings: Any, platform_fee_bps: int | None = None) -> "BillingPolicy":
        """The server-wide policy; ``platform_fee_bps`` overrides the fee for one expert."""
        return cls(
            unit_seconds=settings.billing_unit_seconds,
            grace_seconds=settings.billing_grace_seconds,
            per_session_minimum_seconds=settings.per_session_minimum_seconds,
            platform_fee_bps=settings.platform_fee_bps if platform_fee_bps is None else platform_fee_bps,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "unit_seconds": self.unit_seconds,
            "grace_seconds": self.grace_seconds,
            "per_session_minimum_seconds": self.per_session_minimum_seconds,
            "platform_fee_bps": self.platform_fee_bps,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BillingPolicy":
        return cls(**{k: data[k] for k in cls().to_dict() if k in data})


@dataclass(frozen=True)
class Split:
    gross: Money
    fee: Money
    payout: Money


def platform_fee(gross: int, fee_bps: int) -> int:
    """floor(gross * bps / 10000) for a non-negative gross: the platform never rounds up."""
    if gross < 0:
        raise PricingError("bad_amount", "the fee is taken on a non-negative gross")
    return gross * fee_bps // BPS_DENOMINATOR


def split(gross: Money, fee_bps: int) -> Split:
    fee = platform_fee(gross.amount, fee_bps)
    return Split(gross, Money(fee, gross.currency), Money(gross.amount - fee, gross.currency))


def split_increment(total_before: Money, amount: Money, fee_bps: int) -> Split:
    """The split of ``amount`` charged on top of ``total_before`` within one session, so that the
    fees of all increments add up to ``platform_fee(total)``."""
    after = total_before + amount
    fee = platform_fee(after.amount, fee_bps) - platform_fee(total_before.amount, fee_bps)
    return Split(amount, Money(fee, amount.currency), Money(amount.amount - fee, amount.currency))
