"""Seeded event streams for property tests: the realistic simulator plus adversarial events.

The adversarial part looks at the state (as a matching engine would) to send
liquidation fills for positions that exist, fills far from the mark that
bankrupt positions, large funding rates and transfers of every size.
"""

import random

from ringfence.core import model as m
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.ops.simulate import MARKETS, Session

U = 10**8


def adversarial_stream(seed: int, count: int, traders: int = 12):
    """Yield (event, state-after) pairs; events depend on the state, so the stream is built while applying."""
    rng = random.Random(seed)
    session = Session(seed, traders)
    state = State()
    base = session.events(count)
    serial = 0
    for event in base:
        serial += 1
        roll = rng.random()
        if roll < 0.08 and state.positions:
            key = rng.choice(sorted(state.positions))
            position = state.positions[key]
            tick, lot, _, _ = MARKETS[key[1]]
            qty = max(lot, abs(position.size) * rng.choice((1, 1, 2, 3)) // 4 // lot * lot)
            mark = session.marks[key[1]]
            price = max(tick, mark * rng.randint(80, 120) // 100 // tick * tick)
            event = m.LiquidationFill(f"liq-{serial}", event.ts, f"cmd-{serial}", *key, min(qty, abs(position.size)), price)
        elif roll < 0.12:
            market = rng.choice(list(MARKETS))
            tick, lot, _, _ = MARKETS[market]
            trader = rng.choice(session.traders)
            price = max(tick, session.marks[market] * rng.randint(50, 150) // 100 // tick * tick)
            qty = lot * rng.randint(1, 5000)
            side = rng.choice((m.BUY, m.SELL))
            leg = m.BOTH if trader not in session.hedge else (m.LONG if side == m.BUY else m.SHORT)
            fee = rng.randint(-10**6, 10**9)
            event = m.Fill(f"adv-{serial}", event.ts, trader, market, leg, side, qty, price, fee)
        elif roll < 0.14:
            market = rng.choice(list(MARKETS))
            event = m.Funding(f"fund-{serial}", event.ts, market, rng.randint(-U // 100, U // 100), session.marks[market])
        elif roll < 0.16 and state.positions:
            key = rng.choice(sorted(state.positions))
            amount = rng.choice((-1, 1)) * rng.randint(1, 10**13)
            event = m.MarginTransfer(f"xfer-{serial}", event.ts, *key, amount)
        apply_event(state, state.offset + 1, event)
        yield event, state
