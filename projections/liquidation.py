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

from fractions import Fraction
from heapq import heapify, heappop, heappush

import msgspec

from ringfence.core import margin as mm
from ringfence.core.fixed import SCALE, decimals_of, format_decimal, format_units
from ringfence.core.model import (
    BUY,
    AdlFill,
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


class AdlCommand(msgspec.Struct, frozen=True, gc=False, tag="adl", tag_field="type"):
    """Close ``qty`` of a profitable opposite position at the bankrupt position's bankruptcy price.

    The matching engine answers with both sides of the trade at ``price``: an
    ``adl_fill`` for this position and a ``liquidation_fill`` (with this
    command's id) for the bankrupt one, which so closes without touching the fund.
    """

    command_id: str
    account: str
    market: str
    position_side: str
    side: str  # the closing side of this position
    qty: str
    price: str
    bankrupt_account: str
    bankrupt_position_side: str
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


NOTHING = ()  # the outputs of most events: shared, never appended to


class MarketIndex:
    """One market's part of the index: its bracket constants and a heap per side.

    ``heaps[long]`` holds (key, position key, version); the key is -ceil(p) for
    longs and floor(p) for shorts, so each top is that side's riskiest position.
    """

    __slots__ = ("config", "heaps", "terms")

    def __init__(self, config: MarketConfig) -> None:
        self.heaps: list[list[tuple[int, PositionKey, int]]] = [[], []]
        self.configure(config)

    def configure(self, config: MarketConfig) -> None:
        self.config = config
        self.terms = mm.liquidation_terms(config.brackets)


class LiquidationProjection:
    def __init__(self) -> None:
        self.outstanding: dict[PositionKey, Outstanding] = {}
        self.paused: dict[str, int] = {}  # market -> offset of the jump that paused it
        self.sequence = 0  # commands emitted so far (the outbox position)
        self.last_marks: dict[str, int] = {}  # the previous applied mark, for the band check
        self.adl_pending: dict[PositionKey, int] = {}  # counterparty qty under ADL commands not yet filled
        self.adl_bankrupt: dict[PositionKey, int] = {}  # bankrupt qty deleveraged but not yet filled
        # derived index: per market its heaps of (key, position key, version), see MarketIndex
        self._markets: dict[str, MarketIndex] = {}
        self._versions: dict[PositionKey, int] = {}  # the live entry of each indexed position
        self._version_counter = 0
        self._rankings: dict[tuple[str, bool], list] = {}  # per-event cache of ADL rankings
        # event type -> handler(state, offset, event) for an applied event (the worker calls them directly)
        self.handlers = {
            MarkPrice: self._on_mark, Fill: self._on_position_change, MarginTransfer: self._on_position_change,
            LiquidationFill: self._on_liquidation_fill, AdlFill: self._on_adl_fill,
            Funding: self._on_market_change, MarketConfig: self._on_market_change,
        }  # fmt: skip

    # -- index ---------------------------------------------------------------------------

    def rebuild(self, state: State) -> None:
        """Derive the index from the core state (after a restore)."""
        self._markets.clear()
        self._versions.clear()
        for key in sorted(state.positions):
            self._reindex(state, key, heapify_later=True)
        for index in self._markets.values():
            for heap in index.heaps:
                heapify(heap)

    def _market_index(self, state: State, name: str) -> "MarketIndex":
        """The market's index, with its bracket constants current (a market event may change them)."""
        config = state.markets[name].config
        index = self._markets.get(name)
        if index is None:
            index = self._markets[name] = MarketIndex(config)
        elif index.config is not config:
            index.configure(config)
        return index

    def _reindex(self, state: State, key: PositionKey, heapify_later: bool = False) -> bool:
        """Re-key one position; True when it is a liquidation candidate at the current mark.

        The hot path of the projection (every fill): one solve, one heap push.
        """
        position = state.positions.get(key)
        if position is None or key in self.outstanding:
            self._versions.pop(key, None)
            return False
        market = state.markets[key[1]]
        index = self._markets.get(key[1])
        if index is None or index.config is not market.config:
            index = self._market_index(state, key[1])
        size = position.size
        solved = mm.solve_liquidation_price(index.terms, size, position.cost, position.margin)
        long = size > 0
        if solved is None:
            if long:
                self._versions.pop(key, None)
                return False  # safe at every positive mark
            sort_key = 0  # a short with no positive root is liquidatable at every mark
        elif long:  # a candidate when mark <= ceil(p): key -ceil(p)
            sort_key = (-solved[0]) // solved[1]
        else:  # a candidate when mark >= floor(p)
            sort_key = solved[0] // solved[1]
        self._version_counter = version = self._version_counter + 1
        self._versions[key] = version  # old entries of this position are now stale
        if heapify_later:
            index.heaps[long].append((sort_key, key, version))
        else:
            heappush(index.heaps[long], (sort_key, key, version))
        mark = market.mark
        return mark != 0 and (mark <= -sort_key if long else mark >= sort_key)

    def _compact(self, index: "MarketIndex", live: int) -> None:
        """Drop stale entries in one pass when they outnumber the live positions (checked once per mark)."""
        versions = self._versions
        for long in (False, True):
            heap = index.heaps[long]
            if len(heap) > 2 * live + 64:
                heap = [entry for entry in heap if versions.get(entry[1]) == entry[2]]
                heapify(heap)
                index.heaps[long] = heap

    # -- decisions -----------------------------------------------------------------------

    def after_event(self, state: State, offset: int, event, applied: bool) -> list | tuple:
        """Outputs (commands, alerts) after ``event`` was reduced at ``offset``; ``applied`` is False if refused."""
        if not applied:
            return NOTHING
        handler = self.handlers.get(type(event))
        return NOTHING if handler is None else handler(state, offset, event)

    def _on_position_change(self, state: State, offset: int, event: Fill | MarginTransfer) -> list | tuple:
        key = (event.account, event.market, event.position_side)
        if key not in state.positions:
            self.outstanding.pop(key, None)  # a full close ends an episode
            self._versions.pop(key, None)
            return NOTHING
        return self._rejudge(state, key, offset, event.ts)

    def _rejudge(self, state: State, key: PositionKey, offset: int, ts: int) -> list | tuple:
        """After an event on one position: re-key it, and decide on it alone if it is now a candidate."""
        if not self._reindex(state, key):
            return NOTHING
        outputs: list = []
        self._check_one(state, key, offset, ts, outputs)
        return outputs

    def _on_liquidation_fill(self, state: State, offset: int, event: LiquidationFill) -> list | tuple:
        key = (event.account, event.market, event.position_side)
        waiting = self.adl_bankrupt.get(key, 0)
        if waiting and event.command_id.startswith("adl-"):  # the bankrupt side of an ADL trade
            waiting -= event.qty
            if waiting > 0:
                self.adl_bankrupt[key] = waiting
            else:
                del self.adl_bankrupt[key]
        if key not in state.positions:
            self.adl_bankrupt.pop(key, None)
            self.outstanding.pop(key, None)
        elif key not in self.adl_bankrupt:
            self.outstanding.pop(key, None)  # executed: the rest, if any, is judged again now
        return self._rejudge(state, key, offset, event.ts)

    def _on_adl_fill(self, state: State, offset: int, event: AdlFill) -> list | tuple:
        key = (event.account, event.market, event.position_side)
        left = self.adl_pending.get(key, 0) - event.qty
        if left > 0:
            self.adl_pending[key] = left
        else:
            self.adl_pending.pop(key, None)
        if key not in state.positions:
            self.outstanding.pop(key, None)
        return self._rejudge(state, key, offset, event.ts)

    def _on_market_change(self, state: State, offset: int, event: Funding | MarketConfig) -> list:
        """Funding moves every margin of the market, a new config every requirement: re-key them all."""
        outputs: list = []
        positions = state.by_market.get(event.market, {})
        for key in sorted(positions):
            self._reindex(state, key)
        self._evaluate_market(state, event.market, offset, event.ts, outputs)
        return outputs

    def _on_mark(self, state: State, offset: int, event: MarkPrice) -> list:
        outputs: list = []
        market = state.markets[event.market]
        band = market.config.mark_band
        previous = self.last_marks.get(event.market)
        self.last_marks[event.market] = event.price
        if band and previous:
            jump = abs(event.price - previous) * SCALE > band * previous
            paused = event.market in self.paused
            if jump and not paused:
                self.paused[event.market] = offset
                outputs.append(self._alert(event, previous, offset, "mark_jump"))
                return outputs
            if paused:
                if jump:
                    return outputs
                del self.paused[event.market]
                outputs.append(self._alert(event, previous, offset, "mark_resumed"))
        self._evaluate_market(state, event.market, offset, event.ts, outputs)
        return outputs

    def _alert(self, event: MarkPrice, previous: int, offset: int, reason: str) -> Alert:
        return Alert(f"alert-{offset}", event.market, reason, format_decimal(event.price), format_decimal(previous),
                     offset, event.ts)  # fmt: skip

    def _evaluate_market(self, state: State, name: str, offset: int, ts: int, outputs: list) -> None:
        market = state.markets.get(name)
        index = self._markets.get(name)
        if market is None or index is None:
            return
        self._compact(index, len(state.by_market.get(name, ())))
        if market.mark == 0 or name in self.paused:
            return
        mark = market.mark
        versions = self._versions
        for long in (True, False):
            heap = index.heaps[long]
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
                    self._decide(state, key, offset, ts, outputs)
                else:
                    back.append((sort_key, key, version))  # within rounding of its price: keep it
            for entry in back:
                heappush(heap, entry)

    def _check_one(self, state: State, key: PositionKey, offset: int, ts: int, outputs: list) -> None:
        market = state.markets.get(key[1])
        if market is None or market.mark == 0 or key[1] in self.paused or key in self.outstanding:
            return
        if self._liquidatable(state, key):
            self._versions.pop(key, None)
            self._decide(state, key, offset, ts, outputs)

    @staticmethod
    def _liquidatable(state: State, key: PositionKey) -> bool:
        position = state.positions.get(key)
        if position is None:
            return False
        market = state.markets[key[1]]
        return mm.is_liquidatable(market.config.brackets, position.size, position.cost, position.margin, market.mark)

    def _decide(self, state: State, key: PositionKey, offset: int, ts: int, outputs: list) -> None:
        """Commands for one liquidatable position: ADL for what the fund cannot absorb, a liquidation for the rest.

        A position beyond bankruptcy at the mark (B < 0) is expected to cost the
        fund -B when it is closed near the mark. If the fund (of the settle
        asset) is smaller, the share of the position whose expected loss it
        cannot cover is deleveraged against profitable opposite positions at
        the bankruptcy price, where it costs the fund nothing.
        """
        position = state.positions[key]
        market = state.markets[key[1]]
        config = market.config
        long = position.size > 0
        qty = abs(position.size)
        bankruptcy = mm.bankruptcy_price_fraction(position.size, position.cost, position.margin)
        bankruptcy_price = max(config.tick_size, mm.price_to_tick(bankruptcy, config.tick_size, round_up=long))
        adl_qty = 0
        balance = position.margin + mm.unrealized_pnl_units(position.size, position.cost, market.mark)
        if balance < 0:
            fund = max(0, state.insurance.get(config.settle, 0))
            if -balance > fund:
                coverable = fund * qty // -balance // config.lot_size * config.lot_size
                adl_qty = qty - coverable
        if adl_qty:
            adl_qty = self._deleverage(state, key, adl_qty, bankruptcy_price, offset, ts, outputs)
            if adl_qty:
                self.adl_bankrupt[key] = adl_qty
        liquidate_qty = qty - adl_qty
        command_id = f"liq-{offset}-{len(outputs)}"
        self.outstanding[key] = Outstanding(command_id, qty)
        if liquidate_qty:
            self.sequence += 1
            outputs.append(LiquidateCommand(
                command_id, key[0], key[1], key[2], SELL if long else BUY,
                format_units(liquidate_qty, decimals_of(config.lot_size)),
                format_units(bankruptcy_price, decimals_of(config.tick_size)),
                format_decimal(market.mark), offset, ts,
            ))  # fmt: skip

    def _deleverage(
        self, state: State, bankrupt: PositionKey, wanted: int, price: int, offset: int, ts: int, outputs: list
    ) -> int:
        """ADL commands for up to ``wanted`` against the top-ranked opposite positions; return the qty assigned.

        Rank (Binance's ADL ranking, isolated margin), for opposite positions
        in profit at the mark:  PnL% x effective leverage, where
        PnL% = U / IM and effective leverage = N / (IM + U), i.e.
        rank = U * N / (IM * (IM + U)), U the unrealized PnL, N the notional at
        the mark and IM the isolated margin (a position with IM <= 0 ranks
        first). Highest rank first; ties by position key. Exact rationals.
        """
        market = state.markets[bankrupt[1]]
        long_bankrupt = state.positions[bankrupt].size > 0
        config = market.config
        assigned = 0
        ranking = self._ranking(state, bankrupt[1], not long_bankrupt, offset)
        keys = ranking[1]
        while assigned < wanted and ranking[2] < len(keys):
            key = keys[ranking[2]]
            available = abs(state.positions[key].size) - self.adl_pending.get(key, 0)
            if available <= 0 or key in self.outstanding:
                ranking[2] += 1  # used up for this event: later bankrupt positions start after it
                continue
            qty = min(available, wanted - assigned)
            assigned += qty
            self.adl_pending[key] = self.adl_pending.get(key, 0) + qty
            self.sequence += 1
            outputs.append(AdlCommand(
                f"adl-{offset}-{len(outputs)}", key[0], key[1], key[2], BUY if long_bankrupt else SELL,
                format_units(qty, decimals_of(config.lot_size)), format_units(price, decimals_of(config.tick_size)),
                bankrupt[0], bankrupt[2], offset, ts,
            ))  # fmt: skip
        return assigned

    def _ranking(self, state: State, market_name: str, long: bool, offset: int) -> list:
        """[offset, positions of one side in profit by ADL rank, cursor]; built once per event.

        A crash bankrupts many positions in one mark: they share one ranking
        and a cursor past the counterparties already used up.
        """
        cached = self._rankings.get((market_name, long))
        if cached is not None and cached[0] == offset:
            return cached
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
        cached = self._rankings[(market_name, long)] = [offset, [entry[2] for entry in ranked], 0]
        return cached

    # -- state ---------------------------------------------------------------------------

    def canonical_sections(self):
        yield ["liquidation-v1", self.sequence]
        yield [[*key, o.command_id, o.qty] for key, o in sorted(self.outstanding.items())]
        yield sorted(self.paused.items())
        yield sorted(self.last_marks.items())
        yield [[*key, qty] for key, qty in sorted(self.adl_pending.items())]
        yield [[*key, qty] for key, qty in sorted(self.adl_bankrupt.items())]

    def snapshot(self) -> list:
        """What the store keeps (everything but the derived index)."""
        return [self.sequence, [[*k, o.command_id, o.qty] for k, o in sorted(self.outstanding.items())],
                sorted(self.paused.items()), sorted(self.last_marks.items()),
                [[*k, q] for k, q in sorted(self.adl_pending.items())],
                [[*k, q] for k, q in sorted(self.adl_bankrupt.items())]]  # fmt: skip

    def restore(self, snapshot: list, state: State) -> None:
        sequence, outstanding, paused, last_marks, adl_pending, adl_bankrupt = snapshot
        self.adl_pending = {(a, m, s): q for a, m, s, q in adl_pending}
        self.adl_bankrupt = {(a, m, s): q for a, m, s, q in adl_bankrupt}
        self.sequence = sequence
        self.outstanding = {(a, m, s): Outstanding(c, q) for a, m, s, c, q in outstanding}
        self.paused = dict(paused)
        self.last_marks = dict(last_marks)
        self.rebuild(state)

