"""The liquidation index agrees with a brute-force scan on random streams."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.core import margin as mm
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.projections.liquidation import AdlCommand, LiquidateCommand, LiquidationProjection
from tests.property.streams import adversarial_stream


def brute_force_liquidatable(state: State) -> set:
    found = set()
    for key, position in state.positions.items():
        market = state.markets[key[1]]
        if market.mark and mm.is_liquidatable(market.config.brackets, position.size, position.cost,
                                              position.margin, market.mark):  # fmt: skip
            found.add(key)
    return found


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(100, 800))
def test_index_agrees_with_a_full_scan(seed, count):
    events = [event for event, _ in adversarial_stream(seed, count)]
    state, projection = State(), LiquidationProjection()
    for offset, event in enumerate(events):
        verdict = apply_event(state, offset, event)
        outputs = projection.after_event(state, offset, event, verdict is None)
        liquidatable = brute_force_liquidatable(state)
        # nothing liquidatable is missed ...
        assert liquidatable <= set(projection.outstanding), f"offset {offset}"
        # ... and nothing is commanded that is not liquidatable right now
        for command in outputs:
            if type(command) is AdlCommand:  # against a profitable position, for a liquidatable bankrupt one
                bankrupt = (command.bankrupt_account, command.market, command.bankrupt_position_side)
                assert bankrupt in liquidatable, f"offset {offset}: {command}"
                position = state.positions[(command.account, command.market, command.position_side)]
                assert position.size * state.markets[command.market].mark > position.cost  # in profit
            elif type(command) is LiquidateCommand:
                key = (command.account, command.market, command.position_side)
                assert key in liquidatable, f"offset {offset}: {command}"
    # a restored projection (index rebuilt from the state) decides the same
    restored = LiquidationProjection()
    restored.restore(projection.snapshot(), state)
    assert list(restored.canonical_sections()) == list(projection.canonical_sections())
