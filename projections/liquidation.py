"""The liquidation projection: after each reduced event, keeps every position's liquidation episode right.

The invariant (docs/decisions.md, "Liquidation episodes"), after every event,
for every open position: it is liquidatable at the current mark (exact
``B <= MM``, its market not paused) if and only if live commands close it on
the right side for the quantity the market's policy asks (all of it, or part
of it while a policy's market step is live: core.policy),
or it is bankrupt (``B < 0``) and *awaits* the next barrier, or its own
event came after its market's mark went stale and it is *held* until the
market's next mark; a position that is not liquidatable has no liquidation
commands. ``_judge`` is the one place
that restores it for a position:

- not liquidatable -> its live commands are cancelled (no_longer_liquidatable,
  market_paused);
- liquidatable -> live commands that do not fit (wrong side, more than the
  position) are cancelled and what is missing is issued: a liquidation if the
  position is not bankrupt; a bankrupt one awaits the barrier, where the fund
  stage (projections.fund_stage) decides what its insurance fund takes and
  what ADL closes, across every partition at once.

An ADL command is never cancelled here between barriers: a leg that stops
fitting is cut (episodes.EpisodeBook.cut) and the fund stage cancels the
command at the barrier. A barrier is an applied mark, funding or market
event (the same in every partition): after its own work the projection
reports to the fund stage and applies its decisions (``barrier``); with one
partition (the embedded log, and each Kafka partition's tests) the stage runs
in process, with several a coordinator gathers the reports
(replay.partitioned).

It is called for the positions an event can have changed: the trader's own
fill or transfer supersedes the position's live commands first
(position_changed), so does funding and a market config for the market's
commanded positions; an answer (liquidation/ADL fill of one of its commands)
does not; a mark re-judges only the candidates of the price index
(core.index), first cancelling commands past the market's
``liquidation_timeout_ms`` (timed_out, then issued again). A mark that jumps
beyond the market's ``mark_band`` pauses the market: its commands are
cancelled and nothing is issued until a mark within the band of its previous
mark resumes it. A market whose last mark is older than its ``mark_stale_ms``
at a barrier (any market's) pauses the same way until its next mark
(``mark_stale``); between barriers a position whose own event (fill,
transfer, answer) is later than that limit after its market's mark is held:
its commands are cancelled (``mark_stale``) and none issued until the
market's next mark. A mark older than the last is refused by the reducer and
changes nothing.

The episode book (projections.episodes) holds the commands, the index is
derived and rebuilt on restore; the book, the paused markets, the last marks,
the positions awaiting the barrier, the cut legs and the outbox sequence are
the projection's state, stored with the core's checkpoint and part of the
digest (``sections``, one form for both).
"""

import msgspec

from ringfence.core import margin as mm
from ringfence.core import reasons as r
from ringfence.core.fixed import SCALE, decimals_of, format_decimal, format_units
from ringfence.core.model import (
    BUY,
    MARKET,
    SELL,
    TAKEOVER,
    AdlFill,
    Fill,
    Funding,
    LiquidationFill,
    MarginTransfer,
    MarketConfig,
    MarkPrice,
    PositionTrigger,
    PositionTriggerCancel,
    Verdict,
)
from ringfence.core.policy import liquidation_step
from ringfence.core.state import PositionKey, State
from ringfence.projections import adl, fund_stage
from ringfence.projections.episodes import (
    ADL,
    LIQUIDATE,
    POSITION_LEG,
    TARGET_LEG,
    Command,
    EpisodeBook,
    closes,
    other_side,
)
from ringfence.projections.fund_stage import Candidate, CutLeg, Decisions, Need, Report
from ringfence.core.index import PriceIndex, candidate
from ringfence.projections.outputs import (
    MARK_STALE,
    MARKET_PAUSED,
    NO_LONGER_LIQUIDATABLE,
    POSITION_CHANGED,
    POSITION_CLOSED,
    TARGET_CHANGED,
    TIMED_OUT,
    AdlCommand,
    Alert,
    CancelCommand,
    CloseCommand,
    LiquidateCommand,
    output_id,
)
from ringfence.projections.triggers import TriggerIndex

NOTHING = ()  # the outputs of most events: shared, never appended to
VERSION = "liquidation-v8"  # v3: awaiting positions and cut legs (the fund stage); v4: the stage's chain; v5: stale
# marks; v6: liquidation policies (the book's orders); v7: positions held at an own event past a stale mark; v8: fired
# position triggers


class Trigger:
    """The event a decision is made on: every output names it."""

    __slots__ = ("offset", "event_id", "ts", "own")

    def __init__(self, offset: int, event, own: bool = False) -> None:
        self.offset, self.event_id, self.ts = offset, event.id, event.ts
        self.own = own  # the position's own event (fill, transfer, answer), in its partition only: not a barrier


class LiquidationProjection:
    def __init__(self, owns=None, partition: int = 0) -> None:
        """``owns(account) -> bool``: the accounts of ``partition`` (None: all, one partition with the stage in process)."""
        self.partition = partition
        self.book = EpisodeBook()
        self.index = PriceIndex()
        self.triggers = TriggerIndex()  # stop-losses and take-profits by price; which of them fired
        self.paused: dict[str, int] = {}  # market -> offset of the jump (or the stale mark's barrier) that paused it
        self.stale: set[str] = set()  # paused markets whose mark went stale: their next fresh mark resumes them
        self.held: set[PositionKey] = set()  # liquidatable at an own event past the mark's limit: until the next mark
        self.clock = 0  # the latest ts of a barrier so far (marks are judged stale against it)
        self.stale_watched: tuple[str, ...] | None = None  # markets with a mark_stale_ms (derived from the configs)
        self.sequence = 0  # commands-outbox records emitted so far (liquidate, adl, cancel)
        self.last_marks: dict[str, int] = {}  # the previous applied mark, for the band check
        self.adl_rankings = adl.AdlRankings()  # the ADL order per market side, kept across events (derived)
        self.awaiting: set[PositionKey] = set()  # bankrupt positions the next barrier's fund decision commands
        self.bankrupt_legs: set[PositionKey] = set()  # positions that were issued ADL commands (reported at barriers)
        self.cut_legs: list[CutLeg] = []  # ADL legs cut since the last barrier (the stage cancels their commands)
        self.owns = owns
        self.pending: tuple[Report, Trigger] | None = None  # a barrier's report, when a coordinator decides
        self.barriers = 0  # applied barrier events so far: the number every partition gives the same barrier
        # the fund stage's record (fund_stage.stage_link): barriers that decided something, and the chain head
        self.stage_decisions, self.stage_digest = 0, fund_stage.STAGE_GENESIS
        # with several partitions: a market config -> its market's open positions in the other partitions
        self.open_elsewhere = None
        # (report, projection, state) -> the barrier's decisions: this one alone (``alone``), or a replay of one of
        # several partitions from what the others recorded (ops.fund_board); None: a barrier waits in ``pending``
        self.coordinator = self.alone if owns is None else None
        # event type -> handler(state, offset, event) for an applied event (the worker calls them directly)
        self.handlers = {
            MarkPrice: self._on_mark, Fill: self._on_trade, MarginTransfer: self._on_trade,
            LiquidationFill: self._on_answer, AdlFill: self._on_answer,
            Funding: self._on_market_change, MarketConfig: self._on_market_change,
            PositionTrigger: self._on_trigger, PositionTriggerCancel: self._on_trigger_cancel,
        }  # fmt: skip

    def rebuild(self, state: State) -> None:
        """Derive the index from the core state and the book (after a restore)."""
        self.index.rebuild(state, self._commanded)
        self.triggers.rebuild(state)
        self.adl_rankings.clear()
        self.stale_watched = None

    def after_event(self, state: State, offset: int, event, applied: bool) -> list | tuple:
        """Outputs (commands, cancels, alerts) after ``event`` was reduced at ``offset``; ``applied`` is False if refused."""
        if not applied:
            return NOTHING
        handler = self.handlers.get(type(event))
        return NOTHING if handler is None else handler(state, offset, event)

    def check_answer(self, state: State, event) -> Verdict | None:
        """The reducer's judge (reducer.apply_event): of a liquidation or ADL fill against the book, and of a
        market config that moves a market to another fund while other partitions hold its positions."""
        if type(event) is not MarketConfig:
            return self.book.check_answer(state, event)
        count = 0 if self.open_elsewhere is None else self.open_elsewhere(event)
        if not count:
            return None
        return Verdict("deadletter", r.FUND_DOMAIN_CHANGE_WITH_POSITIONS,
                       f"{event.market} has {count} open positions in other partitions; it moves to another "
                       f"insurance fund only with none")  # fmt: skip

    def _commanded(self, key: PositionKey) -> bool:
        """Indexed as liquidatable (core.index: judged again when the mark moves its way back)?"""
        return self.book.has_live(key) or key in self.awaiting

    def _mine(self, account: str) -> bool:
        return self.owns is None or self.owns(account)

    # -- events ------------------------------------------------------------------------------

    def _on_trade(self, state: State, offset: int, event: Fill | MarginTransfer) -> list | tuple:
        """The trader's own fill or transfer: it supersedes the position's live commands."""
        key = (event.account, event.market, event.position_side)
        self.adl_rankings.changed(state, key)
        book = self.book
        if key in state.positions and key not in book.targets and not book.has_live(key) and key not in self.awaiting \
                and key not in self.held:  # fmt: skip
            # the hot path: a position without commands; judge it only if the index says it may be liquidatable
            if not self.index.reindex(state, key, False):
                return NOTHING
        outputs: list = []
        self._changed(state, key, Trigger(offset, event, own=True), outputs, by_answer=False)
        return outputs

    def _on_trigger(self, state: State, offset: int, event: PositionTrigger) -> tuple:
        trigger_key = (event.account, event.id)
        self.triggers.add(trigger_key, state.triggers[trigger_key])
        return NOTHING

    def _on_trigger_cancel(self, state: State, offset: int, event: PositionTriggerCancel) -> tuple:
        # the reducer dropped it (the index skips it when it surfaces); forget that it fired
        for key, fired in list(self.triggers.fired.items()):
            if key[0] == event.account and event.trigger_id in fired:
                self.triggers.forget(key, event.trigger_id)
        return NOTHING

    def _fire_triggers(self, state: State, event: MarkPrice, trigger: Trigger, outputs: list) -> None:
        """The mark reached these triggers: a close command each, once, unless the position is being liquidated
        (liquidatable, commanded or awaiting the fund stage: the liquidation comes first, the trigger waits)."""
        waiting = []
        for trigger_key, live in self.triggers.reached(state, event.market, event.price):
            key = (trigger_key[0], live.market, live.position_side)
            position = state.positions[key]  # a live trigger's position is open (the reducer drops it with it)
            if self._liquidatable(state, key) or self.book.has_live(key) or key in self.awaiting:
                waiting.append((trigger_key, live))
                continue
            config = state.markets[live.market].config
            size = abs(position.size)
            qty = size if not live.qty else min(live.qty, size)
            self.triggers.fire(key, trigger_key[1], live)
            self.sequence += 1
            outputs.append(CloseCommand(
                output_id("close", trigger_key[0], trigger_key[1], live.market, live.position_side, live.kind,
                          live.price, live.qty, live.ts),
                key[0], key[1], key[2], SELL if position.size > 0 else BUY,
                format_units(qty, decimals_of(config.lot_size)), trigger_key[1], live.kind,
                format_decimal(live.price), format_decimal(event.price),
                trigger.offset, trigger.event_id, trigger.ts,
            ))  # fmt: skip
        for trigger_key, live in waiting:
            self.triggers.add(trigger_key, live)

    def _on_answer(self, state: State, offset: int, event: LiquidationFill) -> list:
        """A liquidation or ADL fill, already checked against the book by the reducer (check_answer)."""
        command = self.book.record_answer(event)
        key = (event.account, event.market, event.position_side)
        if command.order == MARKET and key in state.positions:
            self.book.record_partial(key, event.ts)  # a partial liquidation: the fraction policy's cooldown starts
        self.adl_rankings.changed(state, key)
        outputs: list = []
        self._changed(state, key, Trigger(offset, event, own=True), outputs, by_answer=True)
        return outputs

    def _on_market_change(self, state: State, offset: int, event: Funding | MarketConfig) -> list:
        """Funding moves every margin of the market, a new config every requirement: judge them all again."""
        self.barriers += 1
        self.adl_rankings.invalidate(event.market)
        outputs: list = []
        trigger = Trigger(offset, event)
        if event.ts > self.clock:
            self.clock = event.ts
        if type(event) is MarketConfig:
            self.watch_stale(state)
        self._pause_stale(state, trigger, outputs)
        book = self.book
        for key in sorted(state.by_market.get(event.market, {})):
            if key in book.targets or book.has_live(key) or key in self.awaiting:
                self._changed(state, key, trigger, outputs, by_answer=False)
            else:
                self.index.reindex(state, key, False)
        self._evaluate_market(state, event.market, trigger, outputs)
        self.barrier(state, trigger, outputs)
        return outputs

    def _on_mark(self, state: State, offset: int, event: MarkPrice) -> list | tuple:
        self.barriers += 1
        if self.held:  # the market's mark moved: its held positions are judged again (the index finds them)
            self.held.difference_update([key for key in self.held if key[1] == event.market])
        self.adl_rankings.invalidate(event.market)
        outputs: list = []
        trigger = Trigger(offset, event)
        book = self.book
        if book.ended_before(event.ts):  # the hot path: checks inline, calls only when there is work
            book.forget_ended(state, event.ts)
        if event.ts > self.clock:
            self.clock = event.ts
        for key, _ in state.top_ups:  # auto-add margin (core.reducer) changed these positions at this mark
            self.adl_rankings.changed(state, key)
            self._changed(state, key, trigger, outputs, by_answer=False)
        if self.stale_watched is None or self.stale_watched:
            self._pause_stale(state, trigger, outputs)
        market = state.markets[event.market]
        band = market.config.mark_band
        previous = self.last_marks.get(event.market)
        self.last_marks[event.market] = event.price
        if event.market in self.stale:  # its first fresh mark since it went stale resumes it, unless it jumps
            if self.clock - event.ts > market.config.mark_stale_ms > 0:  # a late mark is stale itself
                self.barrier(state, trigger, outputs)
                return outputs
            self.stale.discard(event.market)
            if band and previous and abs(event.price - previous) * SCALE > band * previous:
                outputs.append(self._alert(trigger, event, previous, "mark_jump"))  # paused by the band from now on
                self.barrier(state, trigger, outputs)
                return outputs
            del self.paused[event.market]
            outputs.append(self._alert(trigger, event, previous, "mark_resumed"))
        elif not band and event.market in self.paused:  # a config lifted the band that paused it
            del self.paused[event.market]
            outputs.append(self._alert(trigger, event, previous, "mark_resumed"))
        elif band and previous:
            jump = abs(event.price - previous) * SCALE > band * previous
            paused = event.market in self.paused
            if jump and not paused:
                self.paused[event.market] = offset
                outputs.append(self._alert(trigger, event, previous, "mark_jump"))
                self._pause(state, event.market, trigger, outputs)
                self.barrier(state, trigger, outputs)
                return outputs
            if paused:
                if jump:
                    self.barrier(state, trigger, outputs)
                    return outputs
                del self.paused[event.market]
                outputs.append(self._alert(trigger, event, previous, "mark_resumed"))
        if book.expires_by(event.market, event.ts):
            self._expire(state, event.market, trigger, outputs)
        self._evaluate_market(state, event.market, trigger, outputs)
        if self.awaiting or self.cut_legs or self.bankrupt_legs or self.owns is not None:
            self.barrier(state, trigger, outputs)
        if event.market in self.triggers.heaps:
            self._fire_triggers(state, event, trigger, outputs)
        return outputs if outputs else NOTHING  # a cancel is always an output

    def _pause_stale(self, state: State, trigger: Trigger, outputs: list) -> None:
        """At a barrier: pause each market whose last mark is older than its ``mark_stale_ms`` by the clock (the
        latest barrier ts: every partition has the same barriers, so the same pauses; docs/decisions.md,
        "Stale marks")."""
        if self.stale_watched is None:  # after a restore; every market config recomputes it
            self.watch_stale(state)
        for name in self.stale_watched:
            market = state.markets[name]
            limit = market.config.mark_stale_ms
            if not limit or not market.mark or name in self.paused or self.clock - market.mark_ts <= limit:
                continue
            self.paused[name] = trigger.offset
            self.stale.add(name)
            mark = format_decimal(market.mark)
            outputs.append(Alert(output_id("alert", name, "mark_stale", trigger.event_id, trigger.ts), name,
                                 "mark_stale", mark, mark, trigger.offset, trigger.event_id, trigger.ts))  # fmt: skip
            self._pause(state, name, trigger, outputs)

    def watch_stale(self, state: State) -> None:
        """The markets whose marks can go stale, by name (again after a market config)."""
        self.stale_watched = tuple(sorted(name for name, market in state.markets.items() if market.config.mark_stale_ms))

    def _alert(self, trigger: Trigger, event: MarkPrice, previous: int, reason: str) -> Alert:
        return Alert(output_id("alert", event.market, reason, event.id, event.ts), event.market, reason,
                     format_decimal(event.price), format_decimal(previous), trigger.offset, event.id, event.ts)  # fmt: skip

    # -- the episode rules -------------------------------------------------------------------

    def _changed(self, state: State, key: PositionKey, trigger: Trigger, outputs: list, by_answer: bool) -> None:
        """Something changed one position: supersede (unless it was an answer), re-check ADL on it, judge it."""
        book = self.book
        if key not in state.positions:
            for command in book.live_for(key):
                self._withdraw(command, POSITION_CLOSED, trigger, outputs)
            self._check_targets(state, key, trigger)
            book.position_closed(key)
            self.index.drop(key)
            self.awaiting.discard(key)
            self.held.discard(key)
            self.triggers.forget(key)
            return
        if not by_answer:
            live = book.live_for(key)
            # superseded: judged again below on the position as it is now; if it is held there (its own event past
            # the mark's limit), nothing replaces the command, and the cancel says why
            reason = MARK_STALE if live and trigger.own and self._stale_at(state, key[1], trigger.ts) and \
                self._liquidatable(state, key) else POSITION_CHANGED  # fmt: skip
            for command in live:
                self._withdraw(command, reason, trigger, outputs)
        self._check_targets(state, key, trigger)
        self._judge(state, key, trigger, outputs)

    def _judge(self, state: State, key: PositionKey, trigger: Trigger, outputs: list) -> None:
        """Make the position's live commands what the invariant asks (module doc), then re-key it."""
        book = self.book
        live = book.live_for(key)
        if trigger.own:
            self.held.discard(key)  # judged again at each own event, at its own ts
        if not self._liquidatable(state, key):
            reason = MARKET_PAUSED if key[1] in self.paused else NO_LONGER_LIQUIDATABLE
            for command in live:
                self._withdraw(command, reason, trigger, outputs)
            self.awaiting.discard(key)
        elif trigger.own and self._stale_at(state, key[1], trigger.ts):
            # the event's time is past the mark's limit: nothing is issued on that mark. Only this position's
            # own event counts here (in its partition alone); the market pauses with an alert at a barrier
            for command in live:
                self._withdraw(command, MARK_STALE, trigger, outputs)
            self.awaiting.discard(key)
            self.held.add(key)
        else:
            position = state.positions[key]
            market = state.markets[key[1]]
            side = SELL if position.size > 0 else BUY
            wanted = max(0, abs(position.size) - book.reserved(key))  # ADL commands against it close it too
            if any(command.closing_side != side for command in live):
                for command in live:
                    self._withdraw(command, POSITION_CHANGED, trigger, outputs)
                live = []
            have = sum(command.open_qty() for command in live)
            while have > wanted:  # more than the position (a late answer shrank it): withdraw the newest first
                command = live.pop()
                have -= command.open_qty()
                self._withdraw(command, POSITION_CHANGED, trigger, outputs)
            if wanted <= have or any(command.order == MARKET for command in live):
                # all of it commanded, or a policy's step is working: kept until it is answered, times out or the
                # position changes, even if the position is bankrupt meanwhile (then the fund stage's), so that what
                # is live never depends on when a position is judged (marks judge commanded ones only if they recover)
                self.awaiting.discard(key)
            elif position.margin + mm.unrealized_pnl_units(position.size, position.cost, market.mark) < 0:
                self.awaiting.add(key)  # what its fund takes is the barrier's decision
            elif live:  # takeovers for part of it: the rest is taken over too
                self._issue(state, key, wanted - have, TAKEOVER, trigger, outputs)
            else:
                qty, order = liquidation_step(market.config, position.size, position.cost, position.margin, market.mark,
                                              trigger.ts, book.partial_ts(key))  # fmt: skip
                self._issue(state, key, min(qty, wanted), order, trigger, outputs)
        self.index.reindex(state, key, self._commanded(key))

    def _check_targets(self, state: State, key: PositionKey, trigger: Trigger) -> None:
        """Live ADL legs against this position must still fit it; the ones that do not are cut."""
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
            self._cut(command, TARGET_LEG, TARGET_CHANGED, trigger)

    def _liquidatable(self, state: State, key: PositionKey) -> bool:
        position = state.positions.get(key)
        market = state.markets[key[1]]
        if position is None or market.mark == 0 or key[1] in self.paused or key in self.held:
            return False
        return mm.is_liquidatable(market.config.brackets, position.size, position.cost, position.margin, market.mark)

    @staticmethod
    def _stale_at(state: State, name: str, ts: int) -> bool:
        """Is the market's mark older than its ``mark_stale_ms`` at ``ts``?"""
        market = state.markets[name]
        limit = market.config.mark_stale_ms
        return bool(limit) and ts - market.mark_ts > limit

    def _withdraw(self, command: Command, reason: str, trigger: Trigger, outputs: list) -> None:
        """A live command of the position that no longer fits: a liquidate is cancelled, an ADL leg cut."""
        if command.kind == ADL:
            self._cut(command, POSITION_LEG, reason, trigger)
        else:
            self._cancel(command, reason, trigger, outputs)

    def _end_here(self, command: Command, reason: str, trigger: Trigger, outputs: list) -> tuple:
        """A live command ends for a market-wide reason: a liquidate is cancelled, an ADL command's legs here are cut
        (every partition sees the same reason); the positions it closed, to look at again."""
        if command.kind == ADL:
            self._cut(command, POSITION_LEG, reason, trigger)
            self._cut(command, TARGET_LEG, reason, trigger)
            return (command.key, command.target)
        self._cancel(command, reason, trigger, outputs)
        return (command.key,)

    def _cut(self, command: Command, leg: int, reason: str, trigger: Trigger) -> None:
        if leg == POSITION_LEG and not command.position_leg_open():
            return
        if leg == TARGET_LEG and not command.target_leg_open():
            return
        self.book.cut(command, leg, trigger.ts)
        self.cut_legs.append(CutLeg(command.command_id, leg, reason, command.market, command.account,
                                    command.position_side, command.target_account, command.target_side))  # fmt: skip

    def _cancel(self, command: Command, reason: str, trigger: Trigger, outputs: list) -> None:
        """Withdraw a live liquidate command."""
        self.book.end(command, trigger.ts)
        self.sequence += 1
        outputs.append(CancelCommand(output_id("cancel", command.command_id), command.command_id, command.account,
                                     command.market, command.position_side, reason, trigger.offset, trigger.event_id,
                                     trigger.ts))  # fmt: skip

    def _issue(self, state: State, key: PositionKey, qty: int, order: str, trigger: Trigger, outputs: list) -> None:
        """A liquidate command closing ``qty`` of a liquidatable position that is not bankrupt, as ``order``."""
        config = state.markets[key[1]].config
        long = state.positions[key].size > 0
        price = self._bankruptcy_price(state, key)  # a takeover's price, a market order's protection
        command = self.book.issue(LIQUIDATE, key, SELL if long else BUY, qty, trigger.ts, config.liquidation_timeout_ms,
                                  trigger.event_id, trigger.offset, order=order,
                                  protection=price if order == MARKET else 0)  # fmt: skip
        self._emit_liquidate(state, command, price, trigger, outputs)

    def _bankruptcy_price(self, state: State, key: PositionKey) -> int:
        position = state.positions[key]
        tick = state.markets[key[1]].config.tick_size
        bankruptcy = mm.bankruptcy_price_fraction(position.size, position.cost, position.margin)
        return max(tick, mm.price_to_tick(bankruptcy, tick, round_up=position.size > 0))

    def _emit_liquidate(self, state: State, command: Command, price: int, trigger: Trigger, outputs: list) -> None:
        market = state.markets[command.market]
        config = market.config
        self.sequence += 1
        outputs.append(LiquidateCommand(
            command.command_id, command.account, command.market, command.position_side, command.closing_side,
            format_units(command.qty, decimals_of(config.lot_size)), format_units(price, decimals_of(config.tick_size)),
            format_decimal(market.mark), trigger.offset, trigger.event_id, trigger.ts, command.order,
        ))  # fmt: skip

    # -- barriers: the fund stage (projections.fund_stage) -----------------------------------

    def barrier(self, state: State, trigger: Trigger, outputs: list) -> None:
        """This partition's part of a barrier: report, and with the stage in process, apply its decisions."""
        if self.owns is None and not self.awaiting and not self.cut_legs:
            # alone, with nothing awaiting and no leg cut, the decision is empty: every bankrupt position the report
            # would name is fully commanded (_judge leaves none open outside ``awaiting``) and no leg is cancelled.
            # The usual barrier of an ADL-heavy replay; tests/property/test_fund_stage.py compares it with k partitions.
            self.apply(state, fund_stage.NO_DECISIONS, trigger, outputs)
            return
        report = self.report(state, trigger)
        if self.coordinator is None:
            self.pending = (report, trigger)  # the other partitions' reports decide it; then ``apply``
            return
        self.apply(state, self.coordinator(report, self, state), trigger, outputs)

    @staticmethod
    def alone(report: Report, projection: "LiquidationProjection", state: State) -> Decisions:
        """The coordinator of the only partition: the fund stage on its one report, in process."""
        return fund_stage.decide([report], lambda market, long: [projection.candidates(state, market, long)])

    def report(self, state: State, trigger: Trigger) -> Report:
        """What the fund stage needs of this partition at a barrier (fund_stage.Report)."""
        funds = tuple(sorted((domain, balance) for domain, balance in state.insurance.items() if balance))
        needs = []
        book = self.book
        # bankrupt positions: awaiting, or closed by ADL commands (as the bankrupt or the target) this barrier may cancel
        for key in sorted(self.awaiting | self.bankrupt_legs | book.targets.keys()):
            position = state.positions.get(key)
            if position is None or not self._liquidatable(state, key):
                continue
            market = state.markets[key[1]]
            balance = position.margin + mm.unrealized_pnl_units(position.size, position.cost, market.mark)
            if balance >= 0:
                continue
            live = book.live_for(key)
            if any(c.order == MARKET for c in live):
                continue  # a policy's step is working: the stage's once it ends (as ``_judge`` leaves it unawaited)
            committed = sum(c.open_qty() for c in live if c.kind == LIQUIDATE)
            legs = tuple((c.command_id, c.open_qty()) for c in live if c.kind == ADL)
            legs += tuple((c.command_id, c.open_target_qty()) for c in book.live_against(key))
            needs.append(Need(key, market.fund, abs(position.size), committed, legs, -balance,
                              SELL if position.size > 0 else BUY, self._bankruptcy_price(state, key),
                              market.config.lot_size))  # fmt: skip
        # a cut leg that its (raced) answers filled since is done: the trade happened, nothing to cancel
        cut = tuple(leg for leg in self.cut_legs if not self._answered_in_full(leg))
        return Report(self.partition, trigger.event_id, trigger.ts, funds, cut, tuple(needs))

    def _answered_in_full(self, leg: CutLeg) -> bool:
        command = self.book.commands.get(leg.command_id)
        if command is None:
            return False
        return (command.filled if leg.leg == POSITION_LEG else command.target_filled) >= command.qty

    def candidates(self, state: State, market: str, long: bool):
        """This partition's ADL candidates on one side of a market, in exact rank order (fund_stage.Candidate)."""
        book = self.book
        mark = state.markets[market].mark
        for key in self.adl_rankings.ranked(state, market, long):
            if book.has_live(key) or key in self.awaiting:
                continue
            position = state.positions[key]
            reserved = tuple((c.command_id, c.open_target_qty()) for c in book.live_against(key))
            yield Candidate(key, position.size, position.cost, position.margin, mark, reserved)

    def apply(self, state: State, decisions: Decisions, trigger: Trigger, outputs: list) -> None:
        """Carry out a barrier's decisions for this partition's legs; then judge the positions they released."""
        book = self.book
        if not decisions.empty():  # the same decisions in every partition: the same chain
            self.stage_decisions += 1
            self.stage_digest = fund_stage.stage_link(self.stage_digest, self.barriers, decisions)
        released: list[PositionKey] = []
        for cancel in decisions.cancels:
            command = book.commands.get(cancel.command_id)
            if command is not None and command.live:
                if command.target_leg_open():
                    released.append(command.target)
                if command.position_leg_open():
                    released.append(command.key)
                book.end(command, trigger.ts)
            leg = cancel.leg
            if self._mine(leg.bankrupt_account):  # the bankrupt position's partition writes the cancel, once
                self.sequence += 1
                outputs.append(CancelCommand(output_id("cancel", cancel.command_id), cancel.command_id,
                                             leg.target_account, leg.market, leg.target_side, cancel.reason,
                                             trigger.offset, trigger.event_id, trigger.ts, leg.bankrupt_account,
                                             leg.bankrupt_side))  # fmt: skip
        for issue in decisions.issues:
            key, target = issue.key, issue.target
            config = state.markets[key[1]].config
            legs = (POSITION_LEG if self._mine(key[0]) else 0) | (TARGET_LEG if target and self._mine(target[0]) else 0)
            if not legs:
                continue
            command = book.issue(issue.kind, key, issue.closing_side, issue.qty, trigger.ts,
                                 config.liquidation_timeout_ms, trigger.event_id, trigger.offset, target,
                                 command_id=issue.command_id, legs=legs)  # fmt: skip
            if not legs & POSITION_LEG:
                continue
            if issue.kind == LIQUIDATE:
                self._emit_liquidate(state, command, issue.price, trigger, outputs)
                continue
            self.bankrupt_legs.add(key)
            self.sequence += 1
            outputs.append(AdlCommand(
                command.command_id, target[0], target[1], target[2], other_side(issue.closing_side),
                format_units(issue.qty, decimals_of(config.lot_size)), format_units(issue.price, decimals_of(config.tick_size)),
                key[0], key[2], trigger.offset, trigger.event_id, trigger.ts,
            ))  # fmt: skip
        self.cut_legs.clear()
        # every bankrupt position reported is fully commanded now; one that awaited and is no longer bankrupt
        # (the mark moved its way, still liquidatable) is judged again below like the released ones
        released.extend(self.awaiting)
        self.awaiting.clear()
        self.bankrupt_legs = {key for key in self.bankrupt_legs
                              if any(c.kind == ADL for c in book.live_for(key))}  # fmt: skip
        for key in sorted(set(released)):
            if key in state.positions:
                self._judge(state, key, trigger, outputs)
        for issue in decisions.issues:  # re-key the positions the stage commanded
            for key in (issue.key, issue.target):
                if key is not None and key in state.positions and self._mine(key[0]):
                    self.index.reindex(state, key, self._commanded(key))

    # -- marks -------------------------------------------------------------------------------

    def _pause(self, state: State, market: str, trigger: Trigger, outputs: list) -> None:
        """A paused market liquidates nothing: cancel its live commands (cut their ADL legs)."""
        keys = []
        for command in self.book.live():
            if command.market == market:
                keys.extend(self._end_here(command, MARKET_PAUSED, trigger, outputs))
        for key in dict.fromkeys(keys):
            if key in state.positions:
                self.awaiting.discard(key)
                self.index.reindex(state, key, self._commanded(key))

    def _expire(self, state: State, market: str, trigger: Trigger, outputs: list) -> None:
        """Commands unanswered past the market's time-out are cancelled (ADL legs cut), then their positions judged."""
        keys = []
        for command in self.book.expired(market, trigger.ts):
            keys.extend(self._end_here(command, TIMED_OUT, trigger, outputs))
        for key in dict.fromkeys(keys):
            if key in state.positions and self._mine(key[0]):
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
        return [[VERSION, self.sequence, self.barriers, self.stage_decisions, self.stage_digest, self.clock],
                sorted(self.paused.items()), sorted(self.last_marks.items()), sorted(self.stale), sorted(self.held),
                sorted(self.awaiting), sorted(self.bankrupt_legs), list(self.cut_legs), self.triggers.section()]  # fmt: skip

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
        head, paused, last_marks, stale, held, *rest = snapshot
        if head[0] != VERSION:
            raise ValueError(f"liquidation projection state {head[0]!r} is not {VERSION}: replay from offset 0")
        awaiting, bankrupt_legs, cut_legs, fired, *book = rest
        self.sequence, self.barriers, self.stage_decisions, self.stage_digest, self.clock = head[1:6]
        self.paused = dict(paused)
        self.last_marks = dict(last_marks)
        self.stale = set(stale)
        self.held = {tuple(key) for key in held}
        self.awaiting = {tuple(key) for key in awaiting}
        self.bankrupt_legs = {tuple(key) for key in bankrupt_legs}
        self.cut_legs = [msgspec.convert(leg, CutLeg) for leg in cut_legs]
        self.triggers.restore(fired)
        self.book.restore(book)
        self.rebuild(state)


def stuck_positions(state: State, projection: LiquidationProjection) -> list[PositionKey]:
    """Open positions that break the invariant: liquidatable without live commands closing all of them (part of
    them while a policy's market step is live) and not awaiting the barrier, or commanded while not.

    A full scan (for the demo summary, metrics and tests): 0 is the only right answer.
    """
    book = projection.book
    stuck = []
    for key in sorted(state.positions):
        liquidatable = projection._liquidatable(state, key)
        live = book.live_for(key)
        if liquidatable and key in projection.awaiting:
            continue  # bankrupt: commanded at the next barrier (the fund stage)
        if liquidatable:
            side = SELL if state.positions[key].size > 0 else BUY
            if any(c.closing_side != side for c in live):
                stuck.append(key)
            elif any(c.order == MARKET for c in live):  # a policy's step: for part of it, never more
                if book.commitments(key) > abs(state.positions[key].size):
                    stuck.append(key)
            elif book.commitments(key) != abs(state.positions[key].size):
                stuck.append(key)
        elif live:
            stuck.append(key)
    return stuck
