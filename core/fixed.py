"""Fixed-point numbers: the only arithmetic the state path uses.

Every price, quantity, amount and rate is a Python int in units of 1e-8
(``SCALE``). A product of two such values is in units of 1e-16, of three in
1e-24; formulas keep exact products and divide once, at the end, in a named
direction: requirements and amounts owed round up (``*_ceil``), payouts,
releases and credits round down (``*_floor``). Python's ``//`` floors toward
minus infinity, so both helpers are exact for negative operands too.
"""

import re

from ringfence.core.check import check

DECIMALS = 8
SCALE = 10**DECIMALS
INT64_MAX = 2**63 - 1

_DECIMAL_RE = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_MAX_DECIMAL_CHARS = 40


class DecimalError(ValueError):
    """A decimal string that is not an exact fixed-point value; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# The helpers below are on the hot path; every caller divides by a positive
# scale, leverage or position size, so they do not re-check the sign.


def div_floor(numerator: int, denominator: int) -> int:
    """floor(numerator / denominator), denominator > 0."""
    return numerator // denominator


def div_ceil(numerator: int, denominator: int) -> int:
    """ceil(numerator / denominator), denominator > 0."""
    return -((-numerator) // denominator)


def mul_div_floor(a: int, b: int, denominator: int) -> int:
    """floor(a * b / denominator)."""
    return div_floor(a * b, denominator)


def mul_div_ceil(a: int, b: int, denominator: int) -> int:
    """ceil(a * b / denominator)."""
    return div_ceil(a * b, denominator)


def parse_decimal(text: str, *, allow_negative: bool = False) -> int:
    """Parse a decimal string exactly into units of 1e-8.

    Rejects what is not a plain decimal (NaN, Infinity, exponents, signs other
    than a leading minus, spaces), values finer than 1e-8 and values whose unit
    count does not fit int64. Trailing zeros past the 8th place are accepted:
    they do not make the value finer.
    """
    if len(text) > _MAX_DECIMAL_CHARS:
        raise DecimalError("out_of_range", f"decimal string longer than {_MAX_DECIMAL_CHARS} characters")
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        raise DecimalError("invalid_decimal", f"not a plain decimal: {text[:40]!r}")
    sign, whole, fraction = match.groups()
    fraction = (fraction or "").rstrip("0")
    if len(fraction) > DECIMALS:
        raise DecimalError("too_many_decimals", f"{text!r} is finer than {DECIMALS} decimal places")
    units = int(whole) * SCALE + int(fraction.ljust(DECIMALS, "0"))
    if units > INT64_MAX:
        raise DecimalError("out_of_range", f"{text!r} does not fit int64 at 1e-{DECIMALS}")
    if sign:
        if not allow_negative and units != 0:
            raise DecimalError("negative_value", f"{text!r} must not be negative")
        units = -units
    return units


def format_units(units: int, places: int = DECIMALS) -> str:
    """Render units of 1e-8 as a decimal string with ``places`` decimals (truncating toward zero).

    Display only: callers round in their conservative direction first.
    """
    check(0 <= places <= DECIMALS, "places within the scale")
    sign = "-" if units < 0 else ""
    magnitude = abs(units)
    whole, fraction = divmod(magnitude, SCALE)
    if places == 0:
        return f"{sign}{whole}"
    digits = f"{fraction:0{DECIMALS}d}"[:places]
    return f"{sign}{whole}.{digits}"


def format_decimal(units: int) -> str:
    """Units of 1e-8 as the shortest exact decimal string ("60000", "0.004", "-1.5")."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), SCALE)
    if fraction == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{DECIMALS}d}".rstrip("0")


def decimals_of(step_units: int) -> int:
    """Number of decimal places a step (tick or lot size) needs, e.g. 1_000_000 (0.01) -> 2."""
    check(step_units > 0, "a step is positive")
    places = DECIMALS
    while places > 0 and step_units % 10 == 0:
        step_units //= 10
        places -= 1
    return places

