"""`ringfence history`: every event that touched one isolated position, with its figures before and after.

A replay from offset 0 in memory (the live store is not touched). An event
touches the position when it changes the position's size, cost, margin or
shortfall, sets its leverage, sets or cancels one of its stop-loss /
take-profit triggers (or tries to), or is followed by a liquidation, ADL or
trigger close command for it; with ``marks`` every mark of its market is listed too. For each
liquidation command the row carries the exact test that fired it: the mark,
B and MM to the unit (B in 1e-16, MM in 1e-24) and the bracket that set MM.
"""

from collections.abc import Iterator

from ringfence.core import model as m
from ringfence.core.fixed import format_decimal
from ringfence.core.reducer import effective_leverage
from ringfence.core.state import PositionKey, State
from ringfence.events.json_codec import to_wire
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.outputs import AdlCommand, CancelCommand, CloseCommand, LiquidateCommand
from ringfence.projections.runner import reduce_records
from ringfence.projections.sdk import event_type
from ringfence.projections.views import margin_figures, trigger_arithmetic

_EMPTY = (0, 0, 0, 0)


def _raw(state: State, key: PositionKey) -> tuple[int, int, int, int]:
    position = state.positions.get(key)
    return _EMPTY if position is None else (position.size, position.cost, position.margin, position.shortfall)


def _figures(state: State, key: PositionKey, raw: tuple[int, int, int, int], mark: int, leverage: int) -> dict | None:
    if raw == _EMPTY:
        return None  # no position
    market = state.markets[key[1]]
    return {**margin_figures(market.config, raw[0], raw[1], raw[2], mark), "leverage": leverage,
            "insurance_fund": market.fund}  # fmt: skip


def _touches_settings(event, key: PositionKey, trigger_ids: set[str]) -> bool:
    """A leverage or trigger request of the position (``trigger_ids``: the ids of triggers ever set on it)."""
    kind = type(event)
    if kind is m.SetLeverage or kind is m.PositionTrigger:
        return (event.account, event.market, event.position_side) == key
    return kind is m.PositionTriggerCancel and event.account == key[0] and event.trigger_id in trigger_ids


def position_history(log, key: PositionKey, *, marks: bool = False) -> Iterator[dict]:
    """The rows of ``key``'s history, in log order."""
    account, market, side = key
    state, projection = State(), LiquidationProjection()
    rows: list[dict] = []
    before = {"raw": _EMPTY, "mark": 0, "leverage": 0}
    trigger_ids: set[str] = set()

    def after_each(offset: int, event, verdict, decisions) -> None:
        raw = _raw(state, key)
        market_state = state.markets.get(market)
        mark = market_state.mark if market_state is not None else 0
        leverage = effective_leverage(state, key)  # as `positions` shows it
        if type(event) is m.PositionTrigger and (event.account, event.market, event.position_side) == key:
            trigger_ids.add(event.id)
        mine = [d for d in decisions if type(d) in (LiquidateCommand, AdlCommand, CancelCommand, CloseCommand)
                and key in ((d.account, d.market, d.position_side),
                            (getattr(d, "bankrupt_account", None), d.market, getattr(d, "bankrupt_position_side", None)))]  # fmt: skip
        is_mark = type(event) is m.MarkPrice and event.market == market
        if raw != before["raw"] or mine or _touches_settings(event, key, trigger_ids) or \
                (marks and is_mark and raw != _EMPTY):  # fmt: skip
            row = {
                "offset": offset,
                "type": event_type(event),
                "event_id": getattr(event, "id", None),
                "ts": getattr(event, "ts", None),
                "verdict": None if verdict is None else f"{verdict.kind}: {verdict.reason}",
                "before": _figures(state, key, before["raw"], before["mark"], before["leverage"]),
                "after": _figures(state, key, raw, mark, leverage),
                "commands": [d.command_id for d in mine if type(d) is not CancelCommand],
                "cancels": [{"command_id": d.command_id, "reason": d.reason} for d in mine if type(d) is CancelCommand],
            }
            added = [amount for topped, amount in state.top_ups if topped == key] if is_mark else []
            if added:  # auto-add margin moved this from the wallet at this mark (core.reducer)
                row["auto_margin_added"] = format_decimal(added[0])
            if any(type(d) is LiquidateCommand for d in mine):
                row["trigger"] = trigger_arithmetic(state.markets[market].config, *raw[:3], mark)
            if type(event) is not m.InvalidInput and not is_mark:
                row["event"] = to_wire(event)
            rows.append(row)
        before["raw"], before["mark"], before["leverage"] = raw, mark, leverage

    for offset, payload in log.read(0):
        reduce_records(state, [(offset, payload)], projection=projection, decode=log.decode, on_step=after_each)
        yield from rows
        rows.clear()
