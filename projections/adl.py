"""Auto-deleveraging: which profitable opposite positions close the share of a bankrupt one the fund cannot.

Rank (Binance's ADL ranking, isolated margin), for opposite positions in
profit at the mark: PnL% x effective leverage, where PnL% = U / IM and
effective leverage = N / (IM + U), i.e. rank = U * N / (IM * (IM + U)), U the
unrealized PnL, N the notional at the mark and IM the isolated margin (a
position with IM <= 0 ranks first). Highest rank first; ties by position key.
Exact rationals.

Never picked (projections.fund_stage, which merges the rankings of every
partition): the bankrupt account's own positions (a self-trade), bankrupt
positions, positions with live commands of their own, and quantity already
reserved by live ADL commands (the episode book).
"""

from fractions import Fraction

from ringfence.core.fixed import SCALE
from ringfence.core.state import PositionKey, State


class Ranking:
    """One side of one market in ADL order, built once per event; ``cursor`` skips what is used up."""

    __slots__ = ("offset", "keys", "cursor")

    def __init__(self, offset: int, keys: list[PositionKey]) -> None:
        self.offset, self.keys, self.cursor = offset, keys, 0


def score(size: int, cost: int, margin: int, mark: int) -> tuple[int, int, int] | None:
    """(class, numerator, denominator) of a position's rank at ``mark``; None if it is not in profit.

    Class 0 (IM <= 0) ranks before class 1; within class 1 the rank is
    numerator / denominator = U * N / (IM * (IM + U)), in 1e-16 units.
    """
    pnl = size * mark - cost  # 1e-16
    if pnl <= 0:
        return None
    margin *= SCALE  # 1e-16
    if margin <= 0:
        return (0, 0, 1)
    return (1, pnl * abs(size) * mark, margin * (margin + pnl))


def rank_key(size: int, cost: int, margin: int, mark: int, key: PositionKey) -> tuple:
    """The exact sort key of a position in profit in its side's ranking (``rank``'s order): to merge rankings."""
    cls, numerator, denominator = score(size, cost, margin, mark)
    if not cls:
        return (0, 0, 0, key)
    return (1, -((numerator << 64) // denominator), -Fraction(numerator, denominator), key)


def rank(state: State, market_name: str, long: bool, offset: int) -> Ranking:
    """The positions of one side of a market that are in profit at the mark, by ADL rank."""
    mark = state.markets[market_name].mark
    ranked = []
    append = ranked.append
    for key, position in state.by_market.get(market_name, {}).items():
        size = position.size
        if (size > 0) != long:  # the side first: half the positions cost one comparison
            continue
        scored = score(size, position.cost, position.margin, mark)
        if scored is None:
            continue
        cls, numerator, denominator = scored
        if not cls:
            append((0, 0, key, 0, 1))  # ranks first; among these, by key (the tuple order)
            continue
        # sort by the integer part of rank * 2^64 (cheap); equal parts are ordered exactly below
        append((1, -((numerator << 64) // denominator), key, numerator, denominator))
    ranked.sort()
    start = 0
    for end in range(1, len(ranked) + 1):
        if end == len(ranked) or ranked[end][:2] != ranked[start][:2]:
            if end - start > 1 and ranked[start][0]:  # class 0 is already in key order
                ranked[start:end] = sorted(ranked[start:end], key=lambda e: (-Fraction(e[3], e[4]), e[2]))
            start = end
    return Ranking(offset, [entry[2] for entry in ranked])
