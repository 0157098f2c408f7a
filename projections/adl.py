"""Auto-deleveraging: which profitable opposite positions close the share of a bankrupt one the fund cannot.

Rank (Binance's ADL ranking, isolated margin), for opposite positions in
profit at the mark: PnL% x effective leverage, where PnL% = U / IM and
effective leverage = N / (IM + U), i.e. rank = U * N / (IM * (IM + U)), U the
unrealized PnL, N the notional at the mark and IM the isolated margin (a
position with IM <= 0 ranks first). Highest rank first; ties by position key.
Exact rationals.

Never picked: the bankrupt account's own positions (a self-trade), positions
with live commands of their own, and quantity already reserved by live ADL
commands (the episode book).
"""

from fractions import Fraction

from ringfence.core.fixed import SCALE
from ringfence.core.state import PositionKey, State
from ringfence.projections.episodes import EpisodeBook


class Ranking:
    """One side of one market in ADL order, built once per event; ``cursor`` skips what is used up."""

    __slots__ = ("offset", "keys", "cursor")

    def __init__(self, offset: int, keys: list[PositionKey]) -> None:
        self.offset, self.keys, self.cursor = offset, keys, 0


def rank(state: State, market_name: str, long: bool, offset: int) -> Ranking:
    """The positions of one side of a market that are in profit at the mark, by ADL rank."""
    mark = state.markets[market_name].mark
    ranked = []
    append = ranked.append
    for key, position in state.by_market.get(market_name, {}).items():
        size = position.size
        if (size > 0) != long:  # the side first: half the positions cost one comparison
            continue
        pnl = size * mark - position.cost  # 1e-16
        if pnl <= 0:
            continue
        margin = position.margin * SCALE  # 1e-16
        if margin <= 0:
            append((0, 0, key, 0, 1))  # ranks first; among these, by key (the tuple order)
            continue
        numerator = pnl * (size if long else -size) * mark  # U * N
        denominator = margin * (margin + pnl)
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


def choose_counterparties(
    state: State, book: EpisodeBook, ranking: Ranking, bankrupt: PositionKey, wanted: int
) -> list[tuple[PositionKey, int]]:
    """(target, qty) pairs for up to ``wanted``, top-ranked first; the caller issues (and so reserves) them."""
    picks = []
    assigned = 0
    keys = ranking.keys
    index = ranking.cursor
    advancing = True  # the cursor moves past entries used up for every later bankrupt position of this event
    while assigned < wanted and index < len(keys):
        key = keys[index]
        index += 1
        if key[0] == bankrupt[0]:  # never the bankrupt account itself (its other hedge leg)
            advancing = False
            continue
        position = state.positions.get(key)
        available = 0 if position is None or book.has_live(key) else abs(position.size) - book.reserved(key)
        if available <= 0:
            if advancing:
                ranking.cursor = index
            continue
        qty = min(available, wanted - assigned)
        picks.append((key, qty))
        assigned += qty
        if qty == available and advancing:
            ranking.cursor = index
        else:
            advancing = False
    return picks
