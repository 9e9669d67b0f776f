"""ISO 4217 currencies: the one table of codes and minor-unit exponents, and the bounds on amounts.

Money (``billing/money.py``) is counted in any code of ``EXPONENTS``; an expert sets a price in
one of ``PRICE_CURRENCIES`` (the same codes without funds and complementary units)."""

from __future__ import annotations

# ISO 4217 active codes by minor-unit exponent. Codes missing here (XAU, XXX, ...) have no minor
# unit that money can be counted in and are refused.
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN "
    "BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP "
    "GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP "
    "LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR "
    "NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN "
    "SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR "
    "ZMW ZWG"
)
EXPONENTS: dict[str, int] = {
    **{c: 0 for c in _ZERO.split()},
    **{c: 2 for c in _TWO.split()},
    **{c: 3 for c in _THREE.split()},
    **{c: 4 for c in _FOUR.split()},
}

# Large enough for any real price or total, small enough to stay exact in SQLite's INTEGER and in
# JSON consumers that read numbers as doubles (2**53).
MAX_AMOUNT = 2**53 - 1

# Funds and complementary units: money can be counted in them, no one sets a price in them.
NOT_FOR_PRICES = frozenset("BOV CHE CHW CLF COU MXV USN UYI UYW VED".split())
PRICE_CURRENCIES = frozenset(EXPONENTS) - NOT_FOR_PRICES
DEFAULT_CURRENCY = "USD"

# One price (ten million major units of a two-decimal currency): far above any real price, low
# enough to catch an amount sent in the wrong unit and to keep sums far from MAX_AMOUNT.
MAX_PRICE_AMOUNT = 1_000_000_000
