"""Money: an integer amount in a currency's minor unit and its ISO 4217 code. Never a float.

``Money(1250, "USD")`` is 12.50 US dollars; ``Money(1250, "JPY")`` is 1250 yen; ``Money(1250,
"KWD")`` is 1.250 dinars. Arithmetic only combines equal currencies; parsing and formatting go
through the currency's exponent with integer and string operations only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.currencies import EXPONENTS, MAX_AMOUNT
from ..core.errors import CodedError

_DECIMAL = re.compile(r"^(-?)(\d+)(?:\.(\d+))?$")


class MoneyError(CodedError, ValueError):
    """A malformed amount or currency, or a mix of currencies. ``code`` is stable."""


def exponent(currency: str) -> int:
    try:
        return EXPONENTS[currency]
    except (KeyError, TypeError):
        raise MoneyError("bad_currency", f"{currency!r} is not an ISO 4217 currency code") from None


@dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; True dollars is a bug, not an amount.
        if type(self.amount) is not int:
            raise MoneyError("bad_amount", f"amount must be an integer of minor units, got {self.amount!r}")
        if abs(self.amount) > MAX_AMOUNT:
            raise MoneyError("bad_amount", f"amount {self.amount} is out of range")
        exponent(self.currency)

    @classmethod
    def zero(cls, currency: str) -> "Money":
        return cls(0, currency)

    @classmethod
    def parse(cls, text: str, currency: str) -> "Money":
        """``Money.parse("12.5", "USD") == Money(1250, "USD")``; more decimals than the currency has
        is an error, never a silent rounding."""
        exp = exponent(currency)
        match = _DECIMAL.match(text.strip())
        if not match:
            raise MoneyError("bad_amount", f"{text!r} is not a decimal amount")
        sign, whole, frac = match.group(1), match.group(2), match.group(3) or ""
        if len(frac) > exp:
            raise MoneyError("bad_amount", f"{currency} has {exp} decimal places, {text!r} has {len(frac)}")
        minor = int(whole) * 10**exp + int(frac.ljust(exp, "0") or "0")
        return cls(-minor if sign else minor, currency)

    @property
    def exponent(self) -> int:
        return EXPONENTS[self.currency]

    def decimal_str(self) -> str:
        """The amount in major units as an exact decimal string: ``"12.50"``, ``"1250"``, ``"-0.005"``."""
        exp = self.exponent
        sign = "-" if self.amount < 0 else ""
        digits = str(abs(self.amount)).rjust(exp + 1, "0")
        if exp == 0:
            return sign + digits
        return f"{sign}{digits[:-exp]}.{digits[-exp:]}"

    def format(self) -> str:
        return f"{self.decimal_str()} {self.currency}"

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, int | str]:
        return {"amount": self.amount, "currency": self.currency}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Money":
        amount, currency = data.get("amount"), data.get("currency")
        if not isinstance(currency, str):
            raise MoneyError("bad_currency", "currency must be a string")
        return cls(amount, currency)  # type: ignore[arg-type]

    def _same(self, other: "Money") -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise MoneyError("currency_mismatch", f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: "Money") -> "Money":
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: "Money") -> "Money":
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> "Money":
        return Money(-self.amount, self.currency)

    def __mul__(self, factor: int) -> "Money":
        if type(factor) is not int:
            raise TypeError("Money can only be multiplied by an int")
        return Money(self.amount * factor, self.currency)

    __rmul__ = __mul__

    def __lt__(self, other: "Money") -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: "Money") -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: "Money") -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: "Money") -> bool:
        self._same(other)
        return self.amount >= other.amount
