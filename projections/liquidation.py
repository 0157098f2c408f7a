"""The liquidation projection: decides, after each reduced event, which positions to liquidate.

It never scans every position. Per market and side it keeps a heap of open
positions keyed by their liquidation price, rounded so that the index never
misses one (a long's price up, a short's down): a long is a candidate when
``mark <= price``, a short when ``mark >= price``. A mark costs O(log n + k):
peek, and pop only the k candidates; each candidate then gets the exact
``B <= MM`` check (core.margin) and a candidate that fails it goes back.

Heaps are lazy: a changed position pushes a new entry with a new version and
old entries are skipped when they surface; a heap is rebuilt when stale
entries outnumber live ones. The index is derived from the core state and is
rebuilt on restore; what is not derivable (outstanding commands, paused
markets, the command sequence) is the projection's state, stored with the
core's checkpoint and part of the digest.

Rules:
- at most one outstanding command per position, until a liquidation fill or
  a full close arrives; after a partial liquidation fill the position is
  evaluated again at once and re-commanded for the rest if still liquidatable;
- command ids are ``liq-<trigger offset>-<n>`` (n: the command's place among
  those of that event), so a replay re-emits identical ids;
- a stale mark (rejected by the reducer) liquidates nothing;
- a mark that jumps beyond the market's ``mark_band`` from the previous mark
  pauses the market's liquidations and raises an alert; the first mark within
  the band of its previous mark resumes them (event time only).
"""

from heapq import heapify, heappop, heappush

import msgspec

from ringfence.core import margin as mm
from ringfence.core.fixed import SCALE, decimals_of, format_decimal, format_units
from ringfence.core.model import (
    BUY,
    SELL,
    Fill,
    Funding,
    LiquidationFill,
    MarginTransfer,
    MarketConfig,
    MarkPrice,
)
from ringfence.core.state import PositionKey, State


class LiquidateCommand(msgspec.Struct, frozen=True, gc=False, tag="liquidate", tag_field="type"):
    command_id: str
    account: str
    market: str
    position_side: str
    side: str  # the closing side
    qty: str
    bankruptcy_price: str
    mark_price: str
    trigger_offset: int
    ts: int


class Alert(msgspec.Struct, frozen=True, gc=False, tag="alert", tag_field="type"):
    alert_id: str
    market: str
    reason: str  # mark_jump / mark_resumed
    mark_price: str
    previous_mark: str
    offset: int
    ts: int


class Outstanding(msgspec.Struct, frozen=True, array_like=True, gc=False):
    command_id: str
    qty: int


class LiquidationProjection:
    def __init__(self) -> None:
        self.outstanding: dict[PositionKey, Outstanding] = {}
        self.paused: dict[str, int] = {}  # market -> offset of the jump that paused it
        self.sequence = 0  # commands emitted so far (the outbox position)
        self.last_marks: dict[str, int] = {}  # the previous applied mark, for the band check
        # derived index: per market [short heap, long heap] of (key, position key, version);
        # the key is -price for longs so that the top is always the riskiest
        self._heaps: dict[str, list[list[tuple[int, PositionKey, int]]]] = {}
        self._versions: dict[PositionKey, int] = {}  # the live entry of each indexed position
        self._version_counter = 0

    # -- index ---------------------------------------------------------------------------

    def rebuild(self, state: State) -> None:
        """Derive the index from the core state (after a restore)."""
        self._heaps.clear()
        self._versions.clear()
        for key in sorted(state.positions):
            self._reindex(state, key, heapify_later=True)
        for heaps in self._heaps.values():
            for heap in heaps:
                heapify(heap)

    def _reindex(self, state: State, key: PositionKey, heapify_later: bool = False) -> bool:
        """Re-key one position; True when it is a liquidation candidate at the current mark."""
        position = state.positions.get(key)
        if position is None or key in self.outstanding:
            self._versions.pop(key, None)
            return False
        market = state.markets[key[1]]
        solved = mm.liquidation_price_fraction(market.config.brackets, position.size, position.cost, position.margin)
        long = position.size > 0
        if solved is None:
            if long:
                self._versions.pop(key, None)
                return False  # safe at every positive mark
            sort_key = 0  # a short with no positive root is liquidatable at every mark
        else:
            numerator, denominator, _ = solved
            # a long is a candidate when mark <= ceil(p) (key -ceil(p)), a short when mark >= floor(p)
            sort_key = (-numerator) // denominator if long else numerator // denominator
        self._version_counter = version = self._version_counter + 1
        self._versions[key] = version  # old entries of this position are now stale
        heaps = self._heaps.get(key[1])
        if heaps is None:
            heaps = self._heaps[key[1]] = [[], []]
        heap = heaps[long]
        if heapify_later:
            heap.append((sort_key, key, version))
        else:
            heappush(heap, (sort_key, key, version))
            if len(heap) > 2 * len(state.by_market[key[1]]) + 64:
                self._compact(heaps, long)
        mark = market.mark
        return mark != 0 and (mark <= -sort_key if long else mark >= sort_key)

    def _compact(self, heaps: list, long: bool) -> None:
        """Drop stale entries (more than half of the heap) in one pass."""
        versions = self._versions
        heap = [entry for entry in heaps[long] if versions.get(entry[1]) == entry[2]]
        heapify(heap)
        heaps[long] = heap

    # -- decisions -----------------------------------------------------------------------

    def after_event(self, state: State, offset: int, event, applied: bool) -> list:
        """Outputs (commands, alerts) after ``event`` was reduced at ``offset``; ``applied`` is False if refused."""
        if not applied:
            return []
        kind = type(event)
        outputs: list = []
        if kind is MarkPrice:
            self._on_mark(state, offset, event, outputs)
        elif kind is Fill or kind is MarginTransfer:
            key = (event.account, event.market, event.position_side)
            if key not in state.positions:
                self.outstanding.pop(key, None)  # a full close ends an episode
            if self._reindex(state, key):
                self._check_one(state, key, offset, event.ts, outputs)
        elif kind is LiquidationFill:
            key = (event.account, event.market, event.position_side)
            self.outstanding.pop(key, None)  # executed (the rest, if any, is judged again now)
            if self._reindex(state, key):
                self._check_one(state, key, offset, event.ts, outputs)
        elif kind is Funding or kind is MarketConfig:
            positions = state.by_market.get(event.market, {})
            for key in sorted(positions):
                self._reindex(state, key)
            self._evaluate_market(state, event.market, offset, event.ts, outputs)
        return outputs

    def _on_mark(self, state: State, offset: int, event: MarkPrice, outputs: list) -> None:
        market = state.markets[event.market]
        band = market.config.mark_band
        previous = self.last_marks.get(event.market)
        self.last_marks[event.market] = event.price
        if band and previous:
            jump = abs(event.price - previous) * SCALE > band * previous
            paused = event.market in self.paused
            if jump and not paused:
                self.paused[event.market] = offset
                outputs.append(self._alert(state, event, previous, offset, "mark_jump"))
                return
            if paused:
                if jump:
                    return
                del self.paused[event.market]
                outputs.append(self._alert(state, event, previous, offset, "mark_resumed"))
        self._evaluate_market(state, event.market, offset, event.ts, outputs)

    def _alert(self, state: State, event: MarkPrice, previous: int, offset: int, reason: str) -> Alert:
        return Alert(f"alert-{offset}", event.market, reason, format_decimal(event.price), format_decimal(previous),
                     offset, event.ts)  # fmt: skip

    def _evaluate_market(self, state: State, name: str, offset: int, ts: int, outputs: list) -> None:
        market = state.markets.get(name)
        heaps = self._heaps.get(name)
        if market is None or heaps is None or market.mark == 0 or name in self.paused:
            return
        mark = market.mark
        versions = self._versions
        for long in (True, False):
            heap = heaps[long]
            back = []
            while heap:
                sort_key, key, version = heap[0]
                if (mark > -sort_key) if long else (mark < sort_key):
                    break
                heappop(heap)
                if versions.get(key) != version:
                    continue  # stale entry
                if self._liquidatable(state, key):
                    del versions[key]
                    outputs.append(self._command(state, key, offset, ts, len(outputs)))
                else:
                    back.append((sort_key, key, version))  # within rounding of its price: keep it
            for entry in back:
                heappush(heap, entry)

    def _check_one(self, state: State, key: PositionKey, offset: int, ts: int, outputs: list) -> None:
        market = state.markets.get(key[1])
        if market is None or market.mark == 0 or key[1] in self.paused or key in self.outstanding:
            return
        if key in state.positions and self._liquidatable(state, key):
            self._versions.pop(key, None)
            outputs.append(self._command(state, key, offset, ts, len(outputs)))

    @staticmethod
    def _liquidatable(state: State, key: PositionKey) -> bool:
        position = state.positions.get(key)
        if position is None:
            return False
        market = state.markets[key[1]]
        return mm.is_liquidatable(market.config.brackets, position.size, position.cost, position.margin, market.mark)

    def _command(self, state: State, key: PositionKey, offset: int, ts: int, number: int) -> LiquidateCommand:
        position = state.positions[key]
        market = state.markets[key[1]]
        config = market.config
        long = position.size > 0
        bankruptcy = mm.bankruptcy_price_fraction(position.size, position.cost, position.margin)
        bankruptcy_price = max(0, mm.price_to_tick(bankruptcy, config.tick_size, round_up=long))
        command_id = f"liq-{offset}-{number}"
        qty = abs(position.size)
        self.outstanding[key] = Outstanding(command_id, qty)
        self.sequence += 1
        return LiquidateCommand(
            command_id, key[0], key[1], key[2], SELL if long else BUY,
            format_units(qty, decimals_of(config.lot_size)),
            format_units(bankruptcy_price, decimals_of(config.tick_size)),
            format_decimal(market.mark), offset, ts,
        )  # fmt: skip

    # -- state ---------------------------------------------------------------------------

    def canonical_sections(self):
        yield ["liquidation-v1", self.sequence]
        yield [[*key, o.command_id, o.qty] for key, o in sorted(self.outstanding.items())]
        yield sorted(self.paused.items())
        yield sorted(self.last_marks.items())

    def snapshot(self) -> list:
        """What the store keeps (everything but the derived index)."""
        return [self.sequence, [[*k, o.command_id, o.qty] for k, o in sorted(self.outstanding.items())],
                sorted(self.paused.items()), sorted(self.last_marks.items())]  # fmt: skip

    def restore(self, snapshot: list, state: State) -> None:
        sequence, outstanding, paused, last_marks = snapshot
        self.sequence = sequence
        self.outstanding = {(a, m, s): Outstanding(c, q) for a, m, s, c, q in outstanding}
        self.paused = dict(paused)
        self.last_marks = dict(last_marks)
        self.rebuild(state)

