"""Counterfactual replay: the history with other market settings, liquidation by liquidation.

Three outcomes of one log, each labelled where it is shown:

- **the log's own** (``simulate=False``): every event as logged, answers
  included: exactly `replay` (the same reducer, offsets and digest; a test
  holds them equal);
- **the simulated baseline** (``simulate=True``, no replacements) and **the
  counterfactual** (``simulate=True`` with ``replacements``), replayed the same
  way, in memory:

1. Every event of the log in order, except the answers to the original
   liquidation and ADL commands (``liquidation_fill``, ``adl_fill``): those
   answered commands of another history.
2. A ``market`` event is replaced by the one for the same market in the
   alternative settings (keeping the log's id and time); the baseline keeps
   the log's own.
3. Each command the liquidation projection emits is answered at once, as a
   matching engine that fills at the command's mark would: a liquidation
   fill for what the position still holds, at the mark (a market order never
   worse than its protection price), and for an ADL command the
   counterparty's ``adl_fill`` and the bankrupt position's
   ``liquidation_fill`` at the bankruptcy price. Other traders' fills stay
   as logged (the rest of the market traded as it did).

The reducer is the product's, with its own rules: simulated answers sit at
virtual offsets between two log offsets (``VIRTUAL`` apart, room for any
number of them), and the state's duplicate-id window is scaled with them, so
a duplicate is judged over the same stretch of the log as in `run`.

Then, position by position, the first liquidation under each setting is
compared (earlier, later, not at all, new, or the same offset with other
amounts), with what the liquidations cost the trader (equity lost: margin
plus unrealized PnL at the mark plus wallet, before and after each answer)
and earned the fund, and the insurance funds at the end.
"""

from collections import deque
from dataclasses import dataclass, field

import msgspec

from ringfence.core import margin as mm
from ringfence.core import model as m
from ringfence.core.digest import compute_digest
from ringfence.core.fixed import format_decimal, parse_decimal
from ringfence.core.limits import DEDUP_GENERATION_EVENTS
from ringfence.core.state import PositionKey, State
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.outputs import AdlCommand, LiquidateCommand
from ringfence.projections.runner import reduce_records

VIRTUAL = 1 << 32  # virtual offsets per log offset: room for the answers to any one event's commands


@dataclass
class Outcome:
    """One replay: each position's liquidations (log offset of the trigger, mark), what they cost and earned, the
    funds and the digest at the end."""

    liquidations: dict[PositionKey, list[tuple[int, str]]] = field(default_factory=dict)
    # position -> the log offset of the first ADL command that named it as the counterparty (closed for another's loss)
    deleveraged: dict[PositionKey, int] = field(default_factory=dict)
    # position -> [equity the trader lost to liquidation and ADL answers, what the fund gained from them]
    costs: dict[PositionKey, list[int]] = field(default_factory=dict)
    insurance: dict[str, int] = field(default_factory=dict)  # by fund domain
    funds: dict[str, str] = field(default_factory=dict)  # market -> its fund domain at the end
    commands: int = 0
    deadletters: list[tuple[int, str, str]] = field(default_factory=list)  # (log offset, event id, reason)
    digest: str = ""


def _answers(command, state: State, ts: int) -> list[m.Event]:
    if type(command) is LiquidateCommand:
        key = (command.account, command.market, command.position_side)
        position = state.positions.get(key)
        qty = min(parse_decimal(command.qty), abs(position.size)) if position is not None else 0
        if qty <= 0:
            return []
        price = parse_decimal(command.mark_price)
        if command.order == m.MARKET:  # filled at the mark, never worse than the protection price
            protection = parse_decimal(command.bankruptcy_price)
            price = max(price, protection) if command.side == m.SELL else min(price, protection)
        return [m.LiquidationFill(f"whatif-{command.command_id}", ts, command.command_id, *key, qty, price,
                                  command.order)]  # fmt: skip
    price, qty = parse_decimal(command.price), parse_decimal(command.qty)
    counter = (command.account, command.market, command.position_side)
    bankrupt = (command.bankrupt_account, command.market, command.bankrupt_position_side)
    counter_position, bankrupt_position = state.positions.get(counter), state.positions.get(bankrupt)
    if counter_position is None or bankrupt_position is None:
        return []  # one side closed since the command: nothing to trade
    qty = min(qty, abs(counter_position.size), abs(bankrupt_position.size))
    return [m.AdlFill(f"whatif-{command.command_id}-c", ts, command.command_id, *counter, qty, price),
            m.LiquidationFill(f"whatif-{command.command_id}-b", ts, command.command_id, *bankrupt, qty, price)]  # fmt: skip


def _equity(state: State, key: PositionKey) -> int:
    """What the trader holds of the position's asset: its margin and unrealized PnL at the mark, and the wallet."""
    market = state.markets.get(key[1])
    if market is None:
        return 0
    wallet = state.wallets.get((key[0], market.config.settle))
    position = state.positions.get(key)
    held = 0 if wallet is None else wallet.balance
    if position is not None:
        held += position.margin + mm.unrealized_pnl_units(position.size, position.cost, market.mark)
    return held


def replay_with(log, replacements: dict[str, m.MarketConfig] | None = None, *, simulate: bool = True) -> Outcome:
    """Replay ``log`` as described above, with ``replacements`` (market -> config) for its market events.

    ``simulate=False``: the log's own answers, nothing simulated, the log's offsets: the log's actual outcome.
    """
    replacements = replacements or {}
    state, projection, outcome = State(), LiquidationProjection(), Outcome()
    scale = VIRTUAL if simulate else 1
    state.dedup_span = DEDUP_GENERATION_EVENTS * scale
    pending: deque = deque()
    before: list = []  # (key, equity, fund balance) just before the answer being applied

    def measured(event):
        if type(event) in (m.LiquidationFill, m.AdlFill) and event.market in state.markets:
            key = (event.account, event.market, event.position_side)
            fund = state.markets[event.market].fund
            before[:] = [key, _equity(state, key), state.insurance.get(fund, 0), fund]
        return event

    def stream():
        for offset, payload in log.read(0):
            event = log.decode(payload)  # a dead letter, as in `run`, if it does not decode
            kind = type(event)
            if simulate and (kind is m.LiquidationFill or kind is m.AdlFill):
                continue
            if kind is m.MarketConfig and event.market in replacements:
                event = msgspec.structs.replace(replacements[event.market], id=event.id, ts=event.ts)
            virtual = offset * scale
            yield virtual, measured(event)
            while pending:
                virtual += 1
                yield virtual, measured(pending.popleft())

    def decided(offset: int, event, verdict, decisions) -> None:
        if verdict is not None and verdict.kind == "deadletter":
            outcome.deadletters.append((offset // scale, getattr(event, "id", ""), verdict.reason))
        if before and verdict is None and type(event) in (m.LiquidationFill, m.AdlFill):
            key, equity, fund_balance, fund = before
            costs = outcome.costs.setdefault(key, [0, 0])
            costs[0] += equity - _equity(state, key)
            costs[1] += state.insurance.get(fund, 0) - fund_balance
        before.clear()
        for decision in decisions:
            kind = type(decision)
            if kind is LiquidateCommand or kind is AdlCommand:
                outcome.commands += 1
                key = (decision.account, decision.market, decision.position_side)
                if kind is LiquidateCommand:
                    outcome.liquidations.setdefault(key, []).append((offset // scale, decision.mark_price))
                else:  # the bankrupt position is liquidated by ADL against this counterparty, at the same mark
                    outcome.deleveraged.setdefault(key, offset // scale)
                    bankrupt = (decision.bankrupt_account, decision.market, decision.bankrupt_position_side)
                    mark = format_decimal(state.markets[decision.market].mark)
                    outcome.liquidations.setdefault(bankrupt, []).append((offset // scale, mark))
                if simulate:
                    pending.extend(_answers(decision, state, event.ts))

    reduce_records(state, stream(), projection=projection, decode=lambda event: event, on_step=decided)
    outcome.insurance = {domain: value for domain, value in sorted(state.insurance.items()) if value}
    outcome.funds = {name: market.fund for name, market in sorted(state.markets.items())}
    outcome.digest = compute_digest(state, projection.canonical_sections())
    return outcome


def compare(original: Outcome, alternative: Outcome) -> list[dict]:
    """Position by position, where the first liquidation moved (earlier, later, not at all, new, or the same
    offset with other amounts), with the trader's loss and the fund's income from its liquidations either way."""
    rows = []
    for key in sorted(original.liquidations.keys() | alternative.liquidations.keys() | original.costs.keys()
                      | alternative.costs.keys()):  # fmt: skip
        before, after = original.liquidations.get(key), alternative.liquidations.get(key)
        costs_before, costs_after = original.costs.get(key, [0, 0]), alternative.costs.get(key, [0, 0])
        if before and after and before[0][0] == after[0][0]:
            if costs_before == costs_after:
                continue
            change = "other amounts"
        elif not before and not after:
            if costs_before == costs_after:
                continue
            change = "other amounts"  # ADL only (no liquidate command of its own)
        else:
            change = "not at all" if after is None else "new" if before is None else \
                "earlier" if after[0][0] < before[0][0] else "later"  # fmt: skip
        rows.append({"account": key[0], "market": key[1], "position_side": key[2], "change": change,
                     "insurance_fund": alternative.funds.get(key[1], original.funds.get(key[1])),
                     "original_offset": before[0][0] if before else None,
                     "original_mark": before[0][1] if before else None,
                     "whatif_offset": after[0][0] if after else None,
                     "whatif_mark": after[0][1] if after else None,
                     "original_trader_loss": costs_before[0], "whatif_trader_loss": costs_after[0],
                     "original_fund_income": costs_before[1], "whatif_fund_income": costs_after[1]})  # fmt: skip
    return rows


def read_market_configs(lines: list[bytes], source: str) -> dict[str, m.MarketConfig]:
    """The ``market`` events of a JSON Lines file, by market; ValueError names the first bad line."""
    from ringfence.events.json_codec import decode_line

    configs: dict[str, m.MarketConfig] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        event = decode_line(line, source)
        if type(event) is m.InvalidInput:
            raise ValueError(f"{source}:{number}: {event.reason}: {event.detail}")
        if type(event) is not m.MarketConfig:
            raise ValueError(f"{source}:{number}: a {type(event).__struct_config__.tag} event; only market events here")
        configs[event.market] = event
    if not configs:
        raise ValueError(f"{source} holds no market event")
    return configs
