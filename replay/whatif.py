"""Counterfactual replay: the history with other market settings, liquidation by liquidation.

Both sides of the comparison are replayed the same way, in memory:

1. Every event of the log in order, except the answers to the original
   liquidation and ADL commands (``liquidation_fill``, ``adl_fill``): those
   answered commands of another history.
2. A ``market`` event is replaced by the one for the same market in the
   alternative settings (keeping the log's id and time); the original side
   keeps the log's own.
3. Each command the liquidation projection emits is answered at once, as a
   matching engine that fills at the command's mark would: a liquidation
   fill for what the position still holds at the mark price, and for an ADL
   command the counterparty's ``adl_fill`` and the bankrupt position's
   ``liquidation_fill`` at the bankruptcy price. Other traders' fills stay
   as logged (the rest of the market traded as it did).

Then, position by position, the first liquidation under each setting is
compared (earlier, later, not at all, new), and the insurance funds at the
end. Offsets in the report are the log's: answers are applied at virtual
offsets between two log offsets (``VIRTUAL`` apart), which keeps command ids
deterministic.
"""

from collections import deque
from dataclasses import dataclass, field

import msgspec

from ringfence.core import model as m
from ringfence.core.fixed import parse_decimal
from ringfence.core.state import State
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.outputs import AdlCommand, LiquidateCommand
from ringfence.projections.runner import reduce_records

VIRTUAL = 1_000  # virtual offsets per log offset: room for the answers to one event's commands


@dataclass
class Outcome:
    """One replay: each position's liquidations (log offset of the trigger, mark) and the funds at the end."""

    liquidations: dict[tuple[str, str, str], list[tuple[int, str]]] = field(default_factory=dict)
    insurance: dict[str, int] = field(default_factory=dict)  # by fund domain
    funds: dict[str, str] = field(default_factory=dict)  # market -> its fund domain at the end
    commands: int = 0


def _answers(command, state: State, ts: int) -> list[m.Event]:
    if type(command) is LiquidateCommand:
        key = (command.account, command.market, command.position_side)
        position = state.positions.get(key)
        qty = min(parse_decimal(command.qty), abs(position.size)) if position is not None else 0
        if qty <= 0:
            return []
        return [m.LiquidationFill(f"whatif-{command.command_id}", ts, command.command_id, *key, qty,
                                  parse_decimal(command.mark_price))]  # fmt: skip
    price, qty = parse_decimal(command.price), parse_decimal(command.qty)
    counter = (command.account, command.market, command.position_side)
    bankrupt = (command.bankrupt_account, command.market, command.bankrupt_position_side)
    counter_position, bankrupt_position = state.positions.get(counter), state.positions.get(bankrupt)
    if counter_position is None or bankrupt_position is None:
        return []  # one side closed since the command: nothing to trade
    qty = min(qty, abs(counter_position.size), abs(bankrupt_position.size))
    return [m.AdlFill(f"whatif-{command.command_id}-c", ts, command.command_id, *counter, qty, price),
            m.LiquidationFill(f"whatif-{command.command_id}-b", ts, command.command_id, *bankrupt, qty, price)]  # fmt: skip


def replay_with(log, replacements: dict[str, m.MarketConfig] | None = None) -> Outcome:
    """Replay ``log`` as described above, with ``replacements`` (market -> config) for its market events."""
    replacements = replacements or {}
    state, projection, outcome = State(), LiquidationProjection(), Outcome()
    pending: deque = deque()

    def stream():
        for offset, payload in log.read(0):
            event = log.decode(payload)  # a dead letter, as in `run`, if it does not decode
            kind = type(event)
            if kind is m.LiquidationFill or kind is m.AdlFill:
                continue
            if kind is m.MarketConfig and event.market in replacements:
                event = msgspec.structs.replace(replacements[event.market], id=event.id, ts=event.ts)
            virtual = offset * VIRTUAL
            yield virtual, event
            while pending:
                virtual += 1
                yield virtual, pending.popleft()

    def decided(offset: int, event, verdict, decisions) -> None:
        for decision in decisions:
            kind = type(decision)
            if kind is LiquidateCommand or kind is AdlCommand:
                outcome.commands += 1
                if kind is LiquidateCommand:
                    key = (decision.account, decision.market, decision.position_side)
                    outcome.liquidations.setdefault(key, []).append((offset // VIRTUAL, decision.mark_price))
                pending.extend(_answers(decision, state, event.ts))

    reduce_records(state, stream(), projection=projection, decode=lambda event: event, on_step=decided)
    outcome.insurance = {domain: value for domain, value in sorted(state.insurance.items()) if value}
    outcome.funds = {name: market.fund for name, market in sorted(state.markets.items())}
    return outcome


def compare(original: Outcome, alternative: Outcome) -> list[dict]:
    """Position by position, where the first liquidation moved: earlier, later, not at all, new."""
    rows = []
    for key in sorted(original.liquidations.keys() | alternative.liquidations.keys()):
        before, after = original.liquidations.get(key), alternative.liquidations.get(key)
        if before and after and before[0][0] == after[0][0]:
            continue
        change = "not at all" if after is None else "new" if before is None else \
            "earlier" if after[0][0] < before[0][0] else "later"  # fmt: skip
        rows.append({"account": key[0], "market": key[1], "position_side": key[2], "change": change,
                     "insurance_fund": alternative.funds.get(key[1], original.funds.get(key[1])),
                     "original_offset": before[0][0] if before else None,
                     "original_mark": before[0][1] if before else None,
                     "whatif_offset": after[0][0] if after else None,
                     "whatif_mark": after[0][1] if after else None})  # fmt: skip
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
