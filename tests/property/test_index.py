"""The price index (projections/index.py) never misses a position whose verdict a mark may have changed."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.core import margin as mm
from ringfence.core import model as m
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.ops.simulate import market_events
from ringfence.projections.index import PriceIndex

U = 10**8


def random_state(seed: int, positions: int) -> tuple[State, dict]:
    rng = random.Random(seed)
    state = State()
    for offset, config in enumerate(market_events(0)):
        apply_event(state, offset, config)
    offset = 100
    commanded = {}
    for n in range(positions):
        account = f"a{n}"
        state.wallet(account, "USDT").balance = rng.randint(0, 10**13)
        apply_event(state, offset, m.SetLeverage(f"l{n}", 0, account, "BTCUSDT", rng.choice((1, 5, 20, 50, 125))))
        price = rng.randint(50_000, 70_000) * U // 10 * 10
        side = rng.choice((m.BUY, m.SELL))
        apply_event(state, offset + 1, m.Fill(f"f{n}", 0, account, "BTCUSDT", "BOTH", side, rng.randint(1, 5000) * 10**5,
                                               price, 0))  # fmt: skip
        commanded[(account, "BTCUSDT", "BOTH")] = rng.random() < 0.3
        offset += 2
    return state, commanded


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), positions=st.integers(1, 120), marks=st.lists(st.integers(30_000, 90_000), min_size=1, max_size=8))
def test_take_returns_every_position_a_mark_may_have_turned(seed, positions, marks):
    state, commanded = random_state(seed, positions)
    index = PriceIndex()
    index.rebuild(state, lambda key: commanded[key])
    brackets = state.markets["BTCUSDT"].config.brackets
    rng = random.Random(seed)
    tries = []
    for price in marks:  # a mark anywhere, then marks a unit either side of some position's liquidation price
        tries.append(price * U)
        position = state.positions[rng.choice(sorted(state.positions))]
        solved = mm.liquidation_price_fraction(brackets, position.size, position.cost, position.margin)
        if solved is not None and solved[0] > 0:
            exact = solved[0] // solved[1]
            tries += [max(1, exact + delta) for delta in (-1, 0, 1, 2)]
    for mark in tries:
        state.markets["BTCUSDT"].mark = mark
        market = index.markets["BTCUSDT"]
        for is_commanded in (True, False):
            taken = set()
            for long in (True, False):
                entries = index.take(market, mark, is_commanded, long)
                taken |= {entry[1] for entry in entries}
                index.put_back(market, is_commanded, long, entries)
            for key, position in state.positions.items():
                if commanded[key] != is_commanded:
                    continue
                liquidatable = mm.is_liquidatable(brackets, position.size, position.cost, position.margin, mark)
                # a watched position that is liquidatable, or a commanded one that is not, must be a candidate
                if liquidatable != is_commanded:
                    assert key in taken, (mark, key, is_commanded)
        # re-keying a position moves it between the two sides of the index without losing it
        key = sorted(state.positions)[seed % len(state.positions)]
        commanded[key] = not commanded[key]
        index.reindex(state, key, commanded[key])
