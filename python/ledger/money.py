"""Money: integer nano-USD, exact conversions from and to USD (DESIGN.md 3).

One USD is 1,000,000,000 nano-USD. Balances, limits and costs are ``int`` nano-USD everywhere in
this package; ``decimal.Decimal`` is USD, exact. Three conversions:

``usd(amount)``
    USD (decimal text, ``int``, ``Decimal`` or ``float``) to nano-USD. Text, ints and Decimals are
    exact ("0.1" is 100,000,000); a value finer than a nano-USD rounds up (toward +infinity).
``cost_nanousd(cost)``
    A cost as OpenRouter reports it (``usage.cost``, ``total_cost``: usually a JSON float such as
    2.83125e-05) to nano-USD, by one rule: a float within two ulps (two steps of the float) of a
    whole nano-USD becomes that whole nano-USD (5.75e-05 -> 57,500: the double is 57,500.000000000004
    nano-USD in binary); anything really finer than a nano-USD rounds up (2.83125e-05 -> 28,313), so
    spend is never undercounted. Never an error for a legal cost; ``ValueError`` for NaN,
    infinities, negatives, bools, text that is no number, and above one billion USD.
``to_usd(nanousd)``
    nano-USD to an exact ``Decimal`` of USD with 9 decimals (28,313 -> Decimal("0.000028313")).
    ``usd(to_usd(n)) == n`` for every amount, and ``cost_nanousd(float(to_usd(n))) == n`` for every
    amount a float can tell apart (below 2**52 nano-USD, about 4.5 million USD).

The float rule is the one libledger's ``usd_double_to_nanousd`` applies in C++ (the sidecar uses it
for OpenRouter's figures), written here in exact integer arithmetic.
"""
from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal, InvalidOperation, localcontext
from typing import Union

__all__ = ["NANOUSD_PER_USD", "AMOUNT_NANOUSD_MAX", "UsdAmount", "usd", "cost_nanousd", "to_usd"]

NANOUSD_PER_USD = 1_000_000_000
AMOUNT_NANOUSD_MAX = 1_000_000_000 * NANOUSD_PER_USD  # libledger's kAmountNanoUsdMax: one billion USD

UsdAmount = Union[str, int, Decimal, float]


def _float_to_nanousd(value: float) -> int:
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a USD amount")
    numerator, denominator = value.as_integer_ratio()  # the double's exact binary value
    whole, rest = divmod(numerator * NANOUSD_PER_USD, denominator)  # nano-USD = whole + rest/denominator
    if abs(whole) > AMOUNT_NANOUSD_MAX or (whole == AMOUNT_NANOUSD_MAX and rest):
        raise ValueError(f"{value!r} USD is above the largest amount (one billion USD)")
    nearest = whole + (1 if 2 * rest > denominator or (2 * rest == denominator and whole % 2) else 0)  # half to even
    back = nearest / NANOUSD_PER_USD  # int / int: the double nearest to that whole nano-USD
    low = math.nextafter(math.nextafter(value, -math.inf), -math.inf)
    high = math.nextafter(math.nextafter(value, math.inf), math.inf)
    if low <= back <= high:
        return nearest
    # Really finer than a nano-USD: away from zero, so spend is never undercounted.
    return whole + (1 if rest else 0) if value > 0 else whole


def _decimal_to_nanousd(value: Decimal, original: object) -> int:
    if not value.is_finite():
        raise ValueError(f"{original!r} is not a USD amount")
    with localcontext() as ctx:
        ctx.prec = 200  # exact for any sane text
        nanos = int((value * NANOUSD_PER_USD).to_integral_value(ROUND_CEILING))
    if abs(nanos) > AMOUNT_NANOUSD_MAX:
        raise ValueError(f"{original!r} USD is above the largest amount (one billion USD)")
    return nanos


def usd(amount: UsdAmount) -> int:
    """USD -> nano-USD: exact for text, ints and Decimals (finer rounds up); floats by the cost rule.

    Negative amounts are allowed (e.g. an adjustment); ``ValueError`` only for what is no amount:
    bools, None, NaN, infinities, bad text, magnitudes above one billion USD.
    """
    if isinstance(amount, bool) or amount is None:
        raise ValueError(f"{amount!r} is not a USD amount")
    if isinstance(amount, float):
        return _float_to_nanousd(amount)
    if isinstance(amount, int):
        return _decimal_to_nanousd(Decimal(amount), amount)
    if isinstance(amount, Decimal):
        return _decimal_to_nanousd(amount, amount)
    if isinstance(amount, str):
        try:
            value = Decimal(amount.strip())
        except InvalidOperation:
            raise ValueError(f"{amount!r} is not a USD amount") from None
        return _decimal_to_nanousd(value, amount)
    raise ValueError(f"{amount!r} ({type(amount).__name__}) is not a USD amount")


def cost_nanousd(cost: UsdAmount) -> int:
    """A cost from OpenRouter (USD, usually a float) -> nano-USD, never undercounted (see the module)."""
    nanos = usd(cost)
    if nanos < 0 or (isinstance(cost, float) and cost < 0):
        raise ValueError(f"{cost!r} is not a cost (negative)")
    return nanos


def to_usd(nanousd: int) -> Decimal:
    """nano-USD -> the exact Decimal of USD, 9 decimals: 28_313 -> Decimal('0.000028313')."""
    if isinstance(nanousd, bool) or not isinstance(nanousd, int):
        raise TypeError(f"nano-USD amounts are ints, got {type(nanousd).__name__}")
    digits = tuple(int(d) for d in str(abs(nanousd)))
    return Decimal((1 if nanousd < 0 else 0, digits, -9))
