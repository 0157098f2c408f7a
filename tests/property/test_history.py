"""`ringfence history` agrees with the reducer's state transitions on random streams."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.core import margin as mm
from ringfence.core import model as m
from ringfence.core.fixed import decimals_of, format_decimal, format_units
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.events.memory import MemoryLog
from ringfence.replay.history import position_history
from tests.property.streams import adversarial_stream


def raw_positions(state: State) -> dict:
    return {key: (p.size, p.cost, p.margin, p.shortfall) for key, p in state.positions.items()}


def shown(raw, lot: int) -> dict | None:
    if raw is None:
        return None
    size, cost, margin, _ = raw
    return {"size": format_units(size, decimals_of(lot)), "entry_price": format_decimal(mm.entry_price_units(size, cost)),
            "isolated_margin": format_decimal(margin)}  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(20, 400))
def test_history_lists_exactly_the_reducer_transitions_of_each_position(seed, count):
    events = [event for event, _ in adversarial_stream(seed, count)]
    state, projection, transitions = State(), LiquidationProjection(), {}
    for offset, event in enumerate(events):  # the reference: the reducer, one event at a time
        before = raw_positions(state)
        verdict = apply_event(state, offset, event, projection.check_answer)  # answers judged by the book
        projection.after_event(state, offset, event, verdict is None)
        after = raw_positions(state)
        for key in before.keys() | after.keys():
            if before.get(key) != after.get(key):
                transitions.setdefault(key, {})[offset] = (before.get(key), after.get(key))
    log = MemoryLog.of_events(events)
    for key, expected in transitions.items():
        lot = state.markets[key[1]].config.lot_size
        rows = list(position_history(log, key))
        assert [row["offset"] for row in rows] == sorted(rows_offsets := {row["offset"] for row in rows})
        assert set(expected) <= rows_offsets  # every transition is listed
        for row in rows:
            pick = lambda figures: None if figures is None else {k: figures[k] for k in ("size", "entry_price",
                                                                                       "isolated_margin")}  # noqa: E731
            if row["offset"] in expected:
                before, after = expected[row["offset"]]
                assert (pick(row["before"]), pick(row["after"])) == (shown(before, lot), shown(after, lot))
            else:  # listed for another reason: a leverage or trigger request or a command, the position unchanged
                event = events[row["offset"]]
                assert row["commands"] or row["cancels"] or \
                    type(event) in (m.SetLeverage, m.PositionTrigger, m.PositionTriggerCancel)  # fmt: skip
                assert pick(row["before"]) == pick(row["after"])
            if "trigger" in row:
                assert row["trigger"]["liquidatable"] is True  # the exact test that fired the command holds
