"""The liquidation projection: after each reduced event, keeps every position's liquidation episode right.

The invariant (docs/decisions.md, "Liquidation episodes"), after every event,
for every open position: it is liquidatable at the current mark (exact
``B <= MM``, its market not paused) if and only if live commands close it on
the right side for the quantity the market's policy asks (today: all of it);
a position that is not liquidatable has no liquidation commands. ``_judge``
is the one place that restores it for a position:

- not liquidatable -> its live commands are cancelled (no_longer_liquidatable,
  market_paused);
- liquidatable -> live commands that do not fit (wrong side, more than the
  position) are cancelled and what is missing is issued: ADL for the share the
  insurance fund cannot absorb, a liquidation for the rest.

It is called for the positions an event can have changed: the trader's own
fill or transfer supersedes the position's live commands first
(position_changed), so does funding and a market config for the market's
commanded positions; an answer (liquidation/ADL fill of one of its commands)
does not; a mark re-judges only the candidates of the price index
(projections.index), first cancelling commands past the market's
``liquidation_timeout_ms`` (timed_out, then issued again). A mark that jumps
beyond the market's ``mark_band`` pauses the market: its commands are
cancelled and nothing is issued until a mark within the band of its previous
mark resumes it. A stale mark is refused by the reducer and changes nothing.

The episode book (projections.episodes) holds the commands, ADL
(projections.adl) picks counterparties, the index is derived and rebuilt on
restore; the book, the paused markets, the last marks and the outbox
sequence are the projection's state, stored with the core's checkpoint and
part of the digest (``sections``, one form for both).
"""

from ringfence.core import margin as mm
from ringfence.core.fixed import SCALE, decimals_of, format_decimal, format_units
from ringfence.core.model import BUY, SELL, AdlFill, Fill, Funding, LiquidationFill, MarginTransfer, MarketConfig, MarkPrice
from ringfence.core.state import PositionKey, State
from ringfence.projections import adl
from ringfence.projections.episodes import ADL, LIQUIDATE, Command, EpisodeBook, closes, other_side
from ringfence.projections.index import PriceIndex, candidate
from ringfence.projections.outputs import (
    MARKET_PAUSED,
    NO_LONGER_LIQUIDATABLE,
    POSITION_CHANGED,
    POSITION_CLOSED,
    TARGET_CHANGED,
    TIMED_OUT,
    AdlCommand,
    Alert,
    CancelCommand,
    LiquidateCommand,
    output_id,
)

NOTHING = ()  # the outputs of most events: shared, never appended to
VERSION = "liquidation-v2"


class Trigger:
    """The event a decision is made on: every output names it."""

    __slots__ = ("offset", "event_id", "ts")

    def __init__(self, offset: int, event) -> None:
        self.offset, self.event_id, self.ts = offset, event.id, event.ts


class LiquidationProjection:
    def __init__(self) -> None:
        self.book = EpisodeBook()
        self.index = PriceIndex()
        self.paused: dict[str, int] = {}  # market -> offset of the jump that paused it
        self.sequence = 0  # commands-outbox records emitted so far (liquidate, adl, cancel)
        self.last_marks: dict[str, int] = {}  # the previous applied mark, for the band check
        self._rankings: dict[tuple[str, bool], adl.Ranking] = {}  # per-event cursors over the ADL order
        self.adl_rankings = adl.AdlRankings()  # the ADL order itself, kept across events (derived, never stored)
        self._targets_released: list[PositionKey] = []  # ADL targets whose commands were cancelled in this event
        self.check_answer = self.book.check_answer  # the reducer's judge of liquidation and ADL fills
        # event type -> handler(state, offset, event) for an applied event (the worker calls them directly)
        self.handlers = {
            MarkPrice: self._on_mark, Fill: self._on_trade, MarginTransfer: self._on_trade,
            LiquidationFill: self._on_answer, AdlFill: self._on_answer,
            Funding: self._on_market_change, MarketConfig: self._on_market_change,
        }  # fmt: skip

    def rebuild(self, state: State) -> None:
        """Derive the index from the core state and the book (after a restore)."""
        self.index.rebuild(state, self.book.has_live)
        self.adl_rankings.clear()
        self._rankings.clear()

    def after_event(self, state: State, offset: int, event, applied: bool) -> list | tuple:
        """Outputs (commands, cancels, alerts) after ``event`` was reduced at ``offset``; ``applied`` is False if refused."""
        if not applied:
            return NOTHING
        handler = self.handlers.get(type(event))
        return NOTHING if handler is None else handler(state, offset, event)

    def _finish(self, state: State, trigger: Trigger, outputs: list) -> list:
        """Judge again the ADL targets whose commands this event cancelled (they may be liquidatable themselves)."""
        released = self._targets_released
        while released:
            key = released.pop(0)
            if key in state.positions:
                self._judge(state, key, trigger, outputs)
        return outputs

    # -- events ------------------------------------------------------------------------------

    def _on_trade(self, state: State, offset: int, event: Fill | MarginTransfer) -> list | tuple:
        """The trader's own fill or transfer: it supersedes the position's live commands."""
        key = (event.account, event.market, event.position_side)
        self.adl_rankings.changed(state, key)
        book = self.book
        if key in state.positions and key not in book.targets and not book.has_live(key):
            # the hot path: a position without commands; judge it only if the index says it may be liquidatable
            if not self.index.reindex(state, key, False):
                return NOTHING
        outputs: list = []
        trigger = Trigger(offset, event)
        self._changed(state, key, trigger, outputs, by_answer=False)
        return self._finish(state, trigger, outputs)

    def _on_answer(self, state: State, offset: int, event: LiquidationFill) -> list:
        """A liquidation or ADL fill, already checked against the book by the reducer (check_answer)."""
        self.book.record_answer(event)
        key = (event.account, event.market, event.position_side)
        self.adl_rankings.changed(state, key)
        outputs: list = []
        trigger = Trigger(offset, event)
        self._changed(state, key, trigger, outputs, by_answer=True)
        return self._finish(state, trigger, outputs)

    def _on_market_change(self, state: State, offset: int, event: Funding | MarketConfig) -> list:
        """Funding moves every margin of the market, a new config every requirement: judge them all again."""
        self.adl_rankings.invalidate(event.market)
        outputs: list = []
        trigger = Trigger(offset, event)
        book = self.book
        for key in sorted(state.by_market.get(event.market, {})):
            if key in book.targets or book.has_live(key):
                self._changed(state, key, trigger, outputs, by_answer=False)
            else:
                self.index.reindex(state, key, False)
        self._evaluate_market(state, event.market, trigger, outputs)
        return self._finish(state, trigger, outputs)

    def _on_mark(self, state: State, offset: int, event: MarkPrice) -> list:
        self.adl_rankings.invalidate(event.market)
        outputs: list = []
        trigger = Trigger(offset, event)
        book = self.book
        if book.ended_before(event.ts):  # the hot path: checks inline, calls only when there is work
            book.forget_ended(state, event.ts)
        market = state.markets[event.market]
        band = market.config.mark_band
        previous = self.last_marks.get(event.market)
        self.last_marks[event.market] = event.price
        if band and previous:
            jump = abs(event.price - previous) * SCALE > band * previous
            paused = event.market in self.paused
            if jump and not paused:
                self.paused[event.market] = offset
                outputs.append(self._alert(trigger, event, previous, "mark_jump"))
                self._pause(state, event.market, trigger, outputs)
                return self._finish(state, trigger, outputs)
            if paused:
                if jump:
                    return outputs
                del self.paused[event.market]
                outputs.append(self._alert(trigger, event, previous, "mark_resumed"))
        if book.expires_by(event.market, event.ts):
            self._expire(state, event.market, trigger, outputs)
        self._evaluate_market(state, event.market, trigger, outputs)
        return self._finish(state, trigger, outputs) if outputs else NOTHING  # a cancel is always an output

    def _alert(self, trigger: Trigger, event: MarkPrice, previous: int, reason: str) -> Alert:
        return Alert(output_id("alert", event.market, reason, event.id, event.ts), event.market, reason,
                     format_decimal(event.price), format_decimal(previous), trigger.offset, event.id, event.ts)  # fmt: skip

    # -- the episode rules -------------------------------------------------------------------

    def _changed(self, state: State, key: PositionKey, trigger: Trigger, outputs: list, by_answer: bool) -> None:
        """Something changed one position: supersede (unless it was an answer), re-check ADL on it, judge it."""
        book = self.book
        if key not in state.positions:
            for command in book.live_for(key):
                self._cancel(command, POSITION_CLOSED, trigger, outputs)
            self._check_targets(state, key, trigger, outputs)
            book.position_closed(key)
            self.index.drop(key)
            return
        if not by_answer:
            for command in book.live_for(key):  # superseded: judged again below on the position as it is now
                self._cancel(command, POSITION_CHANGED, trigger, outputs)
        self._check_targets(state, key, trigger, outputs)
        self._judge(state, key, trigger, outputs)

    def _judge(self, state: State, key: PositionKey, trigger: Trigger, outputs: list) -> None:
        """Make the position's live commands what the invariant asks (module doc), then re-key it."""
        book = self.book
        live = book.live_for(key)
        if not self._liquidatable(state, key):
            reason = MARKET_PAUSED if key[1] in self.paused else NO_LONGER_LIQUIDATABLE
            for command in live:
                self._cancel(command, reason, trigger, outputs)
        else:
            size = state.positions[key].size
            side = SELL if size > 0 else BUY
            wanted = abs(size) - book.reserved(key)  # ADL commands against it close it too
            if any(command.closing_side != side for command in live):
                for command in live:
                    self._cancel(command, POSITION_CHANGED, trigger, outputs)
                live = []
            have = sum(command.open_qty() for command in live)
            while have > wanted:  # more than the position (a late answer shrank it): withdraw the newest first
                command = live.pop()
                have -= command.open_qty()
                self._cancel(command, POSITION_CHANGED, trigger, outputs)
            if wanted > have:
                self._issue(state, key, wanted - have, trigger, outputs)
        self.index.reindex(state, key, book.has_live(key))

    def _check_targets(self, state: State, key: PositionKey, trigger: Trigger, outputs: list) -> None:
        """Live ADL commands against this position must still fit it; cancel those that do not, judge their bankrupt."""
        against = self.book.live_against(key)
        if not against:
            return
        position = state.positions.get(key)
        reserved = sum(command.open_target_qty() for command in against)
        if position is not None and reserved <= abs(position.size) and all(
            closes(other_side(command.closing_side), position.size) for command in against
        ):
            return
        for command in against:
            self._cancel(command, TARGET_CHANGED, trigger, outputs)
        for command in against:
            if command.key in state.positions:
                self._judge(state, command.key, trigger, outputs)

    def _liquidatable(self, state: State, key: PositionKey) -> bool:
        position = state.positions.get(key)
        market = state.markets[key[1]]
        if position is None or market.mark == 0 or key[1] in self.paused:
            return False
        return mm.is_liquidatable(market.config.brackets, position.size, position.cost, position.margin, market.mark)

    def _cancel(self, command: Command, reason: str, trigger: Trigger, outputs: list) -> None:
        """Withdraw a live command; a cancelled ADL command no longer closes its target, which is judged again."""
        if command.open_target_qty() > 0:
            self._targets_released.append(command.target)
        self.book.end(command, trigger.ts)
        self.sequence += 1
        cancel_id = output_id("cancel", command.command_id)
        if command.kind == ADL:  # named as the adl command names them: the counterparty, then the bankrupt position
            outputs.append(CancelCommand(cancel_id, command.command_id, command.target_account, command.market,
                                         command.target_side, reason, trigger.offset, trigger.event_id, trigger.ts,
                                         command.account, command.position_side))  # fmt: skip
        else:
            outputs.append(CancelCommand(cancel_id, command.command_id, command.account, command.market,
                                         command.position_side, reason, trigger.offset, trigger.event_id, trigger.ts))  # fmt: skip

    def _issue(self, state: State, key: PositionKey, qty: int, trigger: Trigger, outputs: list) -> None:
        """Commands closing ``qty`` of a liquidatable position: ADL for what the fund cannot absorb, a liquidation for the rest.

        A position beyond bankruptcy at the mark (B < 0) is expected to cost the
        fund -B when it is closed near the mark. If the fund (the market's
        insurance-fund domain) is smaller, the share of the position whose expected loss it
        cannot cover is deleveraged against profitable opposite positions at
        the bankruptcy price, where it costs the fund nothing.
        """
        position = state.positions[key]
        market = state.markets[key[1]]
        config = market.config
        long = position.size > 0
        side = SELL if long else BUY
        bankruptcy = mm.bankruptcy_price_fraction(position.size, position.cost, position.margin)
        bankruptcy_price = max(config.tick_size, mm.price_to_tick(bankruptcy, config.tick_size, round_up=long))
        qty_text = decimals_of(config.lot_size)
        price_text = format_units(bankruptcy_price, decimals_of(config.tick_size))
        timeout = config.liquidation_timeout_ms
        book = self.book
        deleverage = 0
        balance = position.margin + mm.unrealized_pnl_units(position.size, position.cost, market.mark)
        if balance < 0:
            fund = max(0, state.insurance.get(market.fund, 0))
            if -balance > fund:
                coverable = fund * abs(position.size) // -balance // config.lot_size * config.lot_size
                deleverage = max(0, qty - coverable)
        if deleverage:
            for target, part in adl.choose_counterparties(state, book, self._ranking(state, key[1], not long, trigger),
                                                          key, deleverage):  # fmt: skip
                command = book.issue(ADL, key, side, part, trigger.ts, timeout, trigger.event_id, trigger.offset, target)
                qty -= part
                self.sequence += 1
                outputs.append(AdlCommand(
                    command.command_id, target[0], target[1], target[2], other_side(side),
                    format_units(part, qty_text), price_text, key[0], key[2], trigger.offset, trigger.event_id,
                    trigger.ts,
                ))  # fmt: skip
        if qty:
            command = book.issue(LIQUIDATE, key, side, qty, trigger.ts, timeout, trigger.event_id, trigger.offset)
            self.sequence += 1
            outputs.append(LiquidateCommand(
                command.command_id, key[0], key[1], key[2], side, format_units(qty, qty_text), price_text,
                format_decimal(market.mark), trigger.offset, trigger.event_id, trigger.ts,
            ))  # fmt: skip

    def _ranking(self, state: State, market: str, long: bool, trigger: Trigger) -> adl.Ranking:
        """One ranking per side and event: a crash bankrupts many positions in one mark, and they share it."""
        cached = self._rankings.get((market, long))
        if cached is None or cached.offset != trigger.offset:
            cached = self._rankings[(market, long)] = adl.Ranking(trigger.offset, self.adl_rankings.ranked(state, market, long))
        return cached

    # -- marks -------------------------------------------------------------------------------

    def _pause(self, state: State, market: str, trigger: Trigger, outputs: list) -> None:
        """A paused market liquidates nothing: cancel its live commands."""
        keys = []
        for command in self.book.live():
            if command.market == market and command.open_qty() > 0:
                self._cancel(command, MARKET_PAUSED, trigger, outputs)
                keys.append(command.key)
        for key in dict.fromkeys(keys):
            if key in state.positions:
                self.index.reindex(state, key, self.book.has_live(key))

    def _expire(self, state: State, market: str, trigger: Trigger, outputs: list) -> None:
        """Commands unanswered past the market's time-out are cancelled, then their positions judged again."""
        expired = self.book.expired(market, trigger.ts)
        for command in expired:
            self._cancel(command, TIMED_OUT, trigger, outputs)
        for key in dict.fromkeys(command.key for command in expired):
            if key in state.positions:
                self._judge(state, key, trigger, outputs)

    def _evaluate_market(self, state: State, name: str, trigger: Trigger, outputs: list) -> None:
        """Judge the index's candidates at the mark: commanded ones that may have recovered, watched ones that may not."""
        market = state.markets.get(name)
        index = self.index.markets.get(name)
        if market is None or index is None:
            return
        self.index.compact(index, len(state.by_market.get(name, ())))
        if market.mark == 0 or name in self.paused:
            return
        mark = market.mark
        heaps = index.heaps
        for commanded in (True, False):
            for long in (True, False):
                heap = heaps[commanded][long]
                if not heap or not candidate(heap[0][0], mark, commanded, long):
                    continue  # the usual quiet mark: one comparison per heap
                back = []
                for entry in self.index.take(index, mark, commanded, long):
                    key = entry[1]
                    if self._liquidatable(state, key) != commanded:
                        self._judge(state, key, trigger, outputs)
                    else:
                        back.append(entry)  # within rounding of its price: keep it
                self.index.put_back(index, commanded, long, back)

    # -- state -------------------------------------------------------------------------------

    def head(self) -> list:
        """The small part of the state, stored whole at every checkpoint."""
        return [[VERSION, self.sequence], sorted(self.paused.items()), sorted(self.last_marks.items())]

    def sections(self) -> list:
        """The projection's whole state (the index is derived): what the digest hashes and ``restore`` reads.

        The store keeps the same records: the head, and each command and
        position record of the book under its own key (``stored_changes``).
        """
        return [*self.head(), *self.book.sections()]

    def canonical_sections(self):
        return self.sections()

    def stored_changes(self) -> tuple[list, dict, dict]:
        """(head, changed commands, changed position records) since the last checkpoint; None values are deletions."""
        return (self.head(), *self.book.changes())

    def clear_stored(self) -> None:
        self.book.clear_dirty()

    def restore(self, snapshot: list, state: State) -> None:
        head, paused, last_marks, *book = snapshot
        if head[0] != VERSION:
            raise ValueError(f"liquidation projection state {head[0]!r} is not {VERSION}: replay from offset 0")
        self.sequence = head[1]
        self.paused = dict(paused)
        self.last_marks = dict(last_marks)
        self.book.restore(book)
        self.rebuild(state)


def stuck_positions(state: State, projection: LiquidationProjection) -> list[PositionKey]:
    """Open positions that break the invariant: liquidatable without live commands closing all of them, or commanded while not.

    A full scan (for the demo summary, metrics and tests): 0 is the only right answer.
    """
    book = projection.book
    stuck = []
    for key in sorted(state.positions):
        liquidatable = projection._liquidatable(state, key)
        live = book.live_for(key)
        if liquidatable:
            side = SELL if state.positions[key].size > 0 else BUY
            if book.commitments(key) != abs(state.positions[key].size) or any(c.closing_side != side for c in live):
                stuck.append(key)
        elif live:
            stuck.append(key)
    return stuck
