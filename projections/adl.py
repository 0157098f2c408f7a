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

from bisect import bisect_left
from fractions import Fraction

from ringfence.core.fixed import SCALE
from ringfence.core.state import PositionKey, State


def rank(state: State, market_name: str, long: bool) -> list[PositionKey]:
    """The positions of one side of a market that are in profit at the mark, by ADL rank: the full sort
    (AdlRankings keeps the same order across events; the tests compare the two)."""
    return [entry[2] for entry in _ordered(state.by_market.get(market_name, {}), state.markets[market_name].mark, long)]


def _ordered(positions: dict, mark: int, long: bool) -> list:
    """The sort entries (class, -int(rank * 2^64), key, U*N, IM*(IM+U)) of one side's positions in profit, in ADL order."""
    ranked = []
    append = ranked.append
    for key, position in positions.items():
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
    return ranked


def rank_key(candidate) -> tuple:
    """The exact sort key of a position in profit (anything with ``key``, ``size``, ``cost``, ``margin``, ``mark``)
    in its side's ADL order: to merge the rankings of several partitions (projections.fund_stage)."""
    cls, negative_int, key, numerator, denominator = _entry(candidate.key, candidate, candidate.mark, candidate.size > 0)
    return (cls, negative_int, -Fraction(numerator, denominator) if cls else 0, key)


def _entry(key: PositionKey, position, mark: int, long: bool) -> tuple | None:
    """One position's entry as _ordered makes it, or None (not of that side, or not in profit)."""
    found = _ordered({key: position}, mark, long)
    return found[0] if found else None


def _before(entry: tuple, other: tuple) -> bool:
    """``entry`` ranks before ``other`` (same class and integer part): the higher exact rank, then the lower key."""
    left, right = entry[3] * other[4], other[3] * entry[4]
    return left > right or (left == right and entry[2] < other[2])


class _Side:
    """One side of one market in ADL order at ``mark``: the sorted entries, and each key's entry to find it again."""

    __slots__ = ("mark", "entries", "entry_of")

    def __init__(self, mark: int, entries: list) -> None:
        self.mark, self.entries = mark, entries
        self.entry_of = {entry[2]: entry for entry in entries}

    def locate(self, entry: tuple) -> int:
        """The index ``entry`` has, or would have, in the list: bisect on (class, integer part), exact within a tie."""
        entries = self.entries
        if entry[0] == 0:
            return bisect_left(entries, entry)  # IM <= 0: the tuple order is the key order
        low = bisect_left(entries, entry[:2])
        high = bisect_left(entries, (1, entry[1] + 1), low)
        while low < high and entries[low] is not entry and _before(entries[low], entry):
            low += 1
        return low


class RankedKeys:
    """A read-only view of a side's keys in ADL order; valid until the rankings next change (the event in hand)."""

    __slots__ = ("_entries",)

    def __init__(self, entries: list) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> PositionKey:
        return self._entries[index][2]

    def __iter__(self):
        return (entry[2] for entry in self._entries)


class AdlRankings:
    """rank()'s order for every (market, side), kept sorted across events instead of sorted again per event.

    A side is built on first use at its market's mark; a position change
    (``changed``) moves one entry (bisect: O(log n) plus the list move) while
    the mark stays; a new mark, funding or a market config drops the market's
    sides (``invalidate``), built again only when next asked for. A side whose
    market has another mark than it was built at is rebuilt too (a guard: the
    projection invalidates on every mark anyway). Derived state: never stored.
    """

    __slots__ = ("_sides", "_state")

    def __init__(self) -> None:
        self._sides: dict[tuple[str, bool], _Side] = {}
        self._state = None  # the state the sides describe; another one (a restore) starts afresh

    def clear(self) -> None:
        self._sides.clear()

    def invalidate(self, market: str) -> None:
        sides = self._sides
        if sides:
            sides.pop((market, True), None)
            sides.pop((market, False), None)

    def changed(self, state: State, key: PositionKey) -> None:
        """The position at ``key`` changed, flipped side or closed: move its entry in the built sides of its market."""
        sides = self._sides
        if not sides or state is not self._state:
            return
        position = state.positions.get(key)
        for long in (True, False):
            side = sides.get((key[1], long))
            if side is None:
                continue
            old = side.entry_of.pop(key, None)
            if old is not None:
                del side.entries[side.locate(old)]
            new = None if position is None else _entry(key, position, side.mark, long)
            if new is not None:
                side.entries.insert(side.locate(new), new)
                side.entry_of[key] = new

    def _side(self, state: State, market: str, long: bool) -> _Side:
        if state is not self._state:
            self._sides.clear()
            self._state = state
        mark = state.markets[market].mark
        side = self._sides.get((market, long))
        if side is None or side.mark != mark:
            side = self._sides[(market, long)] = _Side(mark, _ordered(state.by_market.get(market, {}), mark, long))
        return side

    def ranked(self, state: State, market: str, long: bool) -> RankedKeys:
        """The keys of that side in profit at the mark, highest rank first: rank()'s order."""
        return RankedKeys(self._side(state, market, long).entries)

    def quantile(self, state: State, key: PositionKey) -> int | None:
        """0..4 like Binance's adlQuantile (docs/decisions.md, "ADL ranking and quantile"); None: no such position or no mark.

        0 for a position not in profit at the mark; otherwise 4 - floor(4 * place / n),
        place 0 the top of its side's n ranked positions: the top quarter 4, the bottom 1.
        """
        position = state.positions.get(key)
        if position is None or state.markets[key[1]].mark == 0:
            return None
        side = self._side(state, key[1], position.size > 0)
        entry = side.entry_of.get(key)
        if entry is None:
            return 0
        return 4 - 4 * side.locate(entry) // len(side.entries)
