"""The liquidation projection's price index: which positions a mark may have changed the verdict of.

It never scans every position. Per market it keeps four heaps of open
positions keyed by their liquidation price, rounded so the index never misses
one:

- ``watch``: positions without a live command. A long is a candidate when
  ``mark <= ceil(p)``, a short when ``mark >= floor(p)``: the mark may have
  made it liquidatable.
- ``recover``: positions with a live command. A long is a candidate when
  ``mark > floor(p)``, a short when ``mark < ceil(p)``: the mark may have made
  it healthy again, so its commands must be cancelled.

A mark costs O(log n + k): peek, and pop only the k candidates; the caller
checks each exactly (core.margin) and puts back those it does not act on.
Heaps are lazy: re-keying a position pushes a new entry with a new version
and old entries are skipped when they surface; a market's heaps are rebuilt
when stale entries outnumber live positions. Everything here is derived from
the core state and the episode book, and rebuilt on restore.
"""

from heapq import heapify, heappop, heappush

from ringfence.core import margin as mm
from ringfence.core.model import MarketConfig
from ringfence.core.state import PositionKey, State

Entry = tuple[int, PositionKey, int]  # (sort key, position key, version)


class MarketIndex:
    """One market's bracket constants and its heaps: ``heaps[commanded][long]``."""

    __slots__ = ("config", "heaps", "terms", "pushes")

    def __init__(self, config: MarketConfig) -> None:
        self.heaps: list[list[list[Entry]]] = [[[], []], [[], []]]
        self.pushes = 0  # entries pushed since the heaps were last compacted (each may have made an old one stale)
        self.configure(config)

    def configure(self, config: MarketConfig) -> None:
        self.config = config
        self.terms = mm.liquidation_terms(config.brackets)


class PriceIndex:
    def __init__(self) -> None:
        self.markets: dict[str, MarketIndex] = {}
        self.versions: dict[PositionKey, int] = {}  # the live entry of each indexed position
        self._counter = 0

    def rebuild(self, state: State, commanded) -> None:
        """Derive the index from the core state; ``commanded(key)`` says whether a position has live commands."""
        self.markets.clear()
        self.versions.clear()
        for key in sorted(state.positions):
            self.reindex(state, key, commanded(key), heapify_later=True)
        for index in self.markets.values():
            for heaps in index.heaps:
                for heap in heaps:
                    heapify(heap)

    def market(self, state: State, name: str) -> MarketIndex:
        """The market's index, with its bracket constants current (a market event may change them)."""
        config = state.markets[name].config
        index = self.markets.get(name)
        if index is None:
            index = self.markets[name] = MarketIndex(config)
        elif index.config is not config:
            index.configure(config)
        return index

    def drop(self, key: PositionKey) -> None:
        self.versions.pop(key, None)

    def reindex(self, state: State, key: PositionKey, commanded: bool, heapify_later: bool = False) -> bool:
        """Re-key one position; True when the current mark makes it a candidate (see the module doc).

        The hot path of the projection (every fill): one solve, one heap push.
        """
        position = state.positions.get(key)
        if position is None:
            self.versions.pop(key, None)
            return False
        market = state.markets[key[1]]
        index = self.markets.get(key[1])
        if index is None or index.config is not market.config:
            index = self.market(state, key[1])
        size = position.size
        solved = mm.solve_liquidation_price(index.terms, size, position.cost, position.margin)
        long = size > 0
        mark = market.mark
        if solved is None:  # no positive root: a long is safe at every mark, a short liquidatable at every mark
            if long != commanded:  # a watched long never liquidates, a commanded short never recovers
                self.versions.pop(key, None)
                return False
            sort_key = -1 if long else 0  # a commanded long, a watched short: candidates at every mark
        elif long != commanded:  # watched long: -ceil(p); commanded short: -ceil(p)
            sort_key = (-solved[0]) // solved[1]
        else:  # watched short: floor(p); commanded long: floor(p)
            sort_key = solved[0] // solved[1]
        self._counter = version = self._counter + 1
        self.versions[key] = version  # old entries of this position are now stale
        heap = index.heaps[commanded][long]
        index.pushes += 1
        if heapify_later:
            heap.append((sort_key, key, version))
        else:
            heappush(heap, (sort_key, key, version))
        return mark != 0 and candidate(sort_key, mark, commanded, long)

    def take(self, index: MarketIndex, mark: int, commanded: bool, long: bool) -> list[Entry]:
        """Pop the current entries that are candidates at ``mark``; put back the ones not acted on."""
        heap = index.heaps[commanded][long]
        versions = self.versions
        taken = []
        while heap and candidate(heap[0][0], mark, commanded, long):
            entry = heappop(heap)
            if versions.get(entry[1]) == entry[2]:
                taken.append(entry)
        return taken

    def put_back(self, index: MarketIndex, commanded: bool, long: bool, entries: list[Entry]) -> None:
        heap = index.heaps[commanded][long]
        for entry in entries:
            heappush(heap, entry)

    def compact(self, index: MarketIndex, live: int) -> None:
        """Drop stale entries in one pass once the pushes since the last pass outnumber twice the live positions.

        Checked once per mark; each push leaves at most one stale entry, so the
        heaps stay within about three times the live positions.
        """
        if index.pushes <= 2 * live + 256:
            return
        index.pushes = 0
        versions = self.versions
        for heaps in index.heaps:
            for long in (False, True):
                heap = [entry for entry in heaps[long] if versions.get(entry[1]) == entry[2]]
                heapify(heap)
                heaps[long] = heap


def candidate(sort_key: int, mark: int, commanded: bool, long: bool) -> bool:
    if commanded:  # may have recovered
        return mark > sort_key if long else mark < -sort_key
    return mark <= -sort_key if long else mark >= sort_key
