"""Isolated-margin formulas for linear, settle-asset-margined perpetuals.

Units (core.fixed): size ``q`` and prices in 1e-8; the cost basis
``C = sum(q_i * p_i)`` (signed, like q) in 1e-16; isolated margin ``M``,
maintenance amount ``K`` and amounts in 1e-8; the maintenance rate ``r`` in
1e-8. With ``S = 1e8``, for a mark ``p``:

    notional          N  = |q| * p                  (1e-16)
    unrealized PnL    U  = q * p - C                (1e-16)
    margin balance    B  = M * S + U                (1e-16)
    maintenance       MM = N * r - K * S * S        (1e-24), bracket chosen by N at p
    liquidatable      B * S <= MM                   exact, no division
    bankruptcy price  p  = (C - S * M) / q          (B = 0)
    liquidation price p  = S * (C - S * (M + K)) / (q * S - |q| * r)
                      for the one bracket whose range holds |q| * p (DESIGN.md §3)

Because every bracket table is continuous (validated on input) and r < 1,
``B - MM`` is strictly monotone in p, so exactly one bracket is
self-consistent. Displayed values round in the exchange's favour: MM up, PnL
down, a long's liquidation price up and a short's down.
"""

from ringfence.core.fixed import SCALE, div_ceil, div_floor
from ringfence.core.model import Bracket

S = SCALE
S2 = SCALE * SCALE


def bracket_index(brackets: tuple[Bracket, ...], notional_e16: int) -> int:
    """Index of the bracket with floor <= N < cap (the last bracket has no cap).

    A linear scan: tables are short (limits.MAX_BRACKETS) and most positions
    sit in the first few brackets, where this beats building a bisect key.
    """
    index = 0
    for candidate in range(1, len(brackets)):
        if brackets[candidate].notional_floor * S > notional_e16:
            break
        index = candidate
    return index


def maintenance_margin_e24(brackets: tuple[Bracket, ...], notional_e16: int) -> int:
    """MM = N * mmr - cum, exact, in 1e-24 (the bracket chosen by N)."""
    bracket = brackets[bracket_index(brackets, notional_e16)]
    return notional_e16 * bracket.mmr - bracket.maint_amount * S2


def is_liquidatable(brackets: tuple[Bracket, ...], size: int, cost: int, margin: int, mark: int) -> bool:
    """B <= MM at ``mark``, exactly; a flat position is never liquidatable."""
    if size == 0:
        return False
    balance = margin * S + size * mark - cost
    return balance * S <= maintenance_margin_e24(brackets, abs(size) * mark)


def maintenance_margin_units(brackets: tuple[Bracket, ...], size: int, mark: int) -> int:
    """MM in amount units, rounded up (a requirement)."""
    return max(0, div_ceil(maintenance_margin_e24(brackets, abs(size) * mark), S2))


def unrealized_pnl_units(size: int, cost: int, mark: int) -> int:
    """U in amount units, rounded down (a credit)."""
    return div_floor(size * mark - cost, S)


def initial_margin_units(qty: int, price: int, leverage: int) -> int:
    """Initial margin notional / L, rounded up."""
    return div_ceil(qty * price, S * leverage)  # leverage >= 1: validated on input, capped by brackets


def max_leverage_at(brackets: tuple[Bracket, ...], notional_e16: int) -> int:
    return brackets[bracket_index(brackets, notional_e16)].max_leverage


def max_removable_margin(
    brackets: tuple[Bracket, ...], size: int, cost: int, margin: int, mark: int, leverage: int
) -> int:
    """Binance's rule: max(0, min(IM - MM, B - N / L)) at the mark, each term conservative."""
    maintenance = maintenance_margin_units(brackets, size, mark)
    balance = margin + unrealized_pnl_units(size, cost, mark)
    return max(0, min(margin - maintenance, balance - initial_margin_units(abs(size), mark, leverage)))


def bankruptcy_price_fraction(size: int, cost: int, margin: int) -> tuple[int, int] | None:
    """The mark at which B = 0 as (numerator, denominator > 0), price units; None if flat."""
    if size == 0:
        return None
    numerator, denominator = cost - S * margin, size
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    return numerator, denominator


def liquidation_terms(brackets: tuple[Bracket, ...]) -> tuple[tuple[tuple[int, int, int | None, int], ...], ...]:
    """The bracket constants of the liquidation price, per side: ``terms[long][index]``.

    With ``f = S - r`` for a long and ``S + r`` for a short, the formula of the
    module docstring is ``p = n / (|q| * f)`` where ``n = S * C - S^2 * M - S^2 * K``
    for a long and its negation for a short; the bracket is self-consistent when
    ``floor * S <= |q| * p < cap * S``, i.e. ``floor * S * f <= n < cap * S * f``.
    Per bracket: (S^2 * K, floor * S * f, cap * S * f or None for the last, f).
    """
    last = len(brackets) - 1
    sides = []
    for long in (False, True):
        terms = []
        for index, bracket in enumerate(brackets):
            factor = S - bracket.mmr if long else S + bracket.mmr
            cap = bracket.notional_cap * S * factor if index < last else None
            terms.append((S2 * bracket.maint_amount, bracket.notional_floor * S * factor, cap, factor))
        sides.append(tuple(terms))
    return tuple(sides)


def solve_liquidation_price(
    terms: tuple[tuple[tuple[int, int, int | None, int], ...], ...], size: int, cost: int, margin: int
) -> tuple[int, int, int] | None:
    """``liquidation_price_fraction`` with the bracket constants computed once (``liquidation_terms``)."""
    if size > 0:
        base = S * cost - S2 * margin
        for index, (maint, low, high, factor) in enumerate(terms[1]):
            numerator = base - maint
            if numerator > 0 and numerator >= low and (high is None or numerator < high):
                return numerator, size * factor, index
        return None
    if size < 0:
        base = S2 * margin - S * cost
        for index, (maint, low, high, factor) in enumerate(terms[0]):
            numerator = base + maint
            if numerator > 0 and numerator >= low and (high is None or numerator < high):
                return numerator, -size * factor, index
    return None


def liquidation_price_fraction(
    brackets: tuple[Bracket, ...], size: int, cost: int, margin: int
) -> tuple[int, int, int] | None:
    """Exact liquidation price as (numerator, denominator > 0, bracket index), or None.

    None when flat or when no positive price solves B = MM: a long whose margin
    covers the whole notional is then safe at every mark, a short whose margin
    is already gone is liquidatable at every mark. The bracket is the one
    whose notional range holds |q| * p (exactly one, see the module docstring).
    """
    return solve_liquidation_price(liquidation_terms(brackets), size, cost, margin)


def price_to_tick(fraction: tuple[int, int], tick: int, round_up: bool) -> int:
    numerator, denominator = fraction
    steps = div_ceil(numerator, denominator * tick) if round_up else div_floor(numerator, denominator * tick)
    return steps * tick


def entry_price_units(size: int, cost: int) -> int:
    """Average entry price, display only (truncated to 1e-8)."""
    if size == 0:
        return 0
    return cost // size if size > 0 else (-cost) // (-size)


def funding_payment_units(size: int, mark_price: int, rate: int) -> int:
    """What the position pays (positive) or receives (negative): q * mark * rate.

    A payment owed rounds up, a receipt rounds down (both favour the exchange).
    """
    raw = size * mark_price * rate
    if raw >= 0:
        return div_ceil(raw, S2)
    return -div_floor(-raw, S2)


def margin_ratio_ceil(brackets: tuple[Bracket, ...], size: int, cost: int, margin: int, mark: int) -> int | None:
    """MM / B in units of 1e-8, rounded up; None when B <= 0 (at or beyond bankruptcy)."""
    balance = margin * S + size * mark - cost
    if balance <= 0:
        return None
    maintenance = max(0, maintenance_margin_e24(brackets, abs(size) * mark))
    # (MM / 1e24) / (B / 1e16) in 1e-8 units = MM / B
    return div_ceil(maintenance, balance)
