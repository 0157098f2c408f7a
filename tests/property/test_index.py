"""The price index (core/index.py) never misses a position whose verdict a mark may have changed."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.core import margin as mm
from ringfence.core import model as m
from ringfence.core.index import PriceIndex
from ringfence.core.limits import MAX_POSITION_BALANCE_UNITS
from ringfence.core.reducer import apply_event, effective_leverage
from ringfence.core.state import State
from ringfence.ops.simulate import market_events
from tests.property.streams import adversarial_stream

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


def enabled_snapshot(state: State) -> dict:
    """What auto-add margin looks at, copied: per enabled position its numbers and leverage, the wallets, the marks."""
    positions = {}
    for keys in state.auto_margin.values():
        for key in keys:
            position = state.positions.get(key)
            if position is not None and position.size:
                positions[key] = (position.size, position.cost, position.margin, effective_leverage(state, key))
    wallets = {key[0]: state.wallets[(key[0], state.markets[key[1]].config.settle)].balance
               for key in positions if (key[0], state.markets[key[1]].config.settle) in state.wallets}  # fmt: skip
    marks = {name: market.mark_ts for name, market in state.markets.items()}
    return {"positions": positions, "wallets": wallets, "marks": marks}


@pytest.mark.parametrize("seed", range(6))
def test_auto_add_margin_tops_up_what_a_scan_of_every_enabled_position_finds(seed):
    """The reducer finds the enabled positions due at a mark through the index; a scan of all of them, with the
    rule (initial margin or the free wallet, never beyond 1x, in key order), must give the same top-ups."""
    before, topped = None, 0
    for event, state in adversarial_stream(1000 + seed, 2500):
        if type(event) is m.MarkPrice and before is not None and event.ts >= before["marks"].get(event.market, 1 << 62):
            brackets = state.markets[event.market].config.brackets
            wallets, expected = dict(before["wallets"]), []
            for key, (size, cost, margin, leverage) in sorted(before["positions"].items()):
                if key[1] != event.market or not mm.is_liquidatable(brackets, size, cost, margin, event.price):
                    continue
                amount = min(wallets.get(key[0], 0), -(-abs(cost) // (U * leverage)), abs(cost) // U - margin,
                             MAX_POSITION_BALANCE_UNITS - margin)  # fmt: skip
                if amount > 0:
                    wallets[key[0]] -= amount
                    expected.append((key, amount))
            assert state.top_ups == expected, (seed, event)
            topped += len(expected)
        before = enabled_snapshot(state)
    assert topped, "the stream never topped a position up: the test would check nothing"
