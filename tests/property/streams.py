"""Seeded event streams for property tests: the realistic simulator plus adversarial events.

The adversarial part looks at the state (as a matching engine would) to send
fills far from the mark that bankrupt and flip positions, large funding rates,
transfers of every size and market configs with short liquidation time-outs,
mark bands, stale-mark limits with mark feed outages, liquidation policies and clearance fees, and
auto-add margin switched on and off, stop-losses and take-profits set (on both sides of the mark) and
cancelled. A hostile matching engine answers the liquidation and ADL
commands the projection emits: fully, partially, late (after their cancel),
twice, for more than was asked, for the wrong position, out of order (the two
legs of an ADL trade either way round), never, with forged ids, with the wrong
order or beyond a market order's protection price.

The stream runs the real reducer with the liquidation projection (the
product's state: answers are judged against the commands issued) and yields
``(event, state)`` after each event is applied.
"""

import random

import msgspec

from ringfence.core import model as m
from ringfence.core.fixed import parse_decimal
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.ops.simulate import MARKETS, Session, market_events
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.outputs import AdlCommand, CloseCommand, LiquidateCommand

U = 10**8
POLICIES = (
    m.FULL_POLICY,
    m.LiquidationPolicy(m.TIER_STEP),
    m.LiquidationPolicy(m.TIER_STEP, steps=2),
    m.LiquidationPolicy(m.FRACTION, fraction=U // 5, min_notional=100_000 * U, cooldown_ms=3_000, backstop_ratio=U * 2 // 3),
    m.LiquidationPolicy(m.FRACTION, fraction=U // 2, min_notional=10_000 * U),
)


class HostileEngine:
    """Remembers every command it was sent and answers some of them, in every way a real engine can go wrong."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.commands: list = []  # every liquidate / adl command seen, in order

    def take(self, outputs) -> None:
        self.commands.extend(o for o in outputs if type(o) in (LiquidateCommand, AdlCommand))

    def answer(self, state: State, serial: int, ts: int) -> list:
        rng = self.rng
        if not self.commands:
            return []
        roll = rng.random()
        # mostly the newest commands (a working engine), sometimes any old one (late, twice)
        command = self.commands[-1 - min(len(self.commands) - 1, int(rng.expovariate(0.5)))]
        if roll < 0.05:  # forged: an id nobody issued
            command_id = rng.choice(("liq-", "adl-", "")) + f"{rng.getrandbits(80):020x}"
        elif roll < 0.10:  # another position's command
            command_id = rng.choice(self.commands).command_id
        else:
            command_id = command.command_id
        tick, lot, _, _ = MARKETS[command.market]
        mark = state.markets[command.market].mark or tick
        asked = parse_decimal(command.qty)
        qty = max(lot, asked * rng.choice((1, 1, 1, 2, 4, 5)) // 4 // lot * lot)  # full, partial, over
        if type(command) is LiquidateCommand:
            price = max(tick, mark * rng.randint(90, 110) // 100 // tick * tick)
            order = command.order
            if order == m.MARKET and rng.random() < 0.8:  # mostly within the protection price, sometimes beyond
                protection = parse_decimal(command.bankruptcy_price)
                price = max(price, protection) if command.side == m.SELL else min(price, protection)
            if rng.random() < 0.04:
                order = m.TAKEOVER if order == m.MARKET else m.MARKET  # the wrong order
            return [m.LiquidationFill(f"ans-{serial}", ts, command_id, command.account, command.market,
                                      command.position_side, qty, price, order)]  # fmt: skip
        price = parse_decimal(command.price)
        legs = [
            m.AdlFill(f"ans-{serial}-t", ts, command_id, command.account, command.market, command.position_side,
                      qty, price),
            m.LiquidationFill(f"ans-{serial}-b", ts, command_id, command.bankrupt_account, command.market,
                              command.bankrupt_position_side, qty, price),
        ]  # fmt: skip
        if rng.random() < 0.4:
            legs.reverse()  # out of order
        if rng.random() < 0.2:
            legs.pop()  # one leg never comes
        return legs


def adversarial_stream(seed: int, count: int, traders: int = 12, projection: LiquidationProjection | None = None):
    """Yield (event, state-after) pairs; events depend on the state, so the stream is built while applying."""
    rng = random.Random(seed)
    session = Session(seed, traders)
    state, projection = State(), projection or LiquidationProjection()
    engine = HostileEngine(random.Random(seed ^ 0xE9))
    base = session.events(2 * count)  # more than enough: an outage drops marks, the loop stops at ``count``
    # most sessions start with BTCUSDT in a fund of its own (Binance keeps one per major), the rest in USDT's
    own_funds = {"BTCUSDT": "BTCUSDT-fund"} if rng.random() < 0.7 else {}
    serial = 0
    queued: list = []
    produced = 0
    outages: dict[str, int] = {}  # market -> ts until which its mark feed is silent
    while produced < count:
        serial += 1
        if queued:
            event = queued.pop(0)
        else:
            event = next(base, None)
            if event is None:
                break
            if type(event) is m.MarketConfig and event.market in own_funds:
                event = msgspec.structs.replace(event, insurance_fund=own_funds[event.market])
            if type(event) is m.MarkPrice:  # a mark feed outage of 4-15 s now and then: fills go on, marks stop
                if outages.get(event.market, 0) > event.ts:
                    continue
                if rng.random() < 0.02:
                    outages[event.market] = event.ts + rng.randint(4_000, 15_000)
            roll = rng.random()
            if roll < 0.12:
                answers = engine.answer(state, serial, event.ts)
                if answers:
                    event, queued = answers[0], answers[1:]
            elif roll < 0.16:
                market = rng.choice(list(MARKETS))
                tick, lot, _, _ = MARKETS[market]
                trader = rng.choice(session.traders)
                price = max(tick, session.marks[market] * rng.randint(50, 150) // 100 // tick * tick)
                qty = lot * rng.randint(1, 5000)
                side = rng.choice((m.BUY, m.SELL))
                leg = m.BOTH if trader not in session.hedge else (m.LONG if side == m.BUY else m.SHORT)
                fee = rng.randint(-10**6, 10**9)
                event = m.Fill(f"adv-{serial}", event.ts, trader, market, leg, side, qty, price, fee)
            elif roll < 0.18:
                market = rng.choice(list(MARKETS))
                event = m.Funding(f"fund-{serial}", event.ts, market, rng.randint(-U // 100, U // 100),
                                  session.marks[market])  # fmt: skip
            elif roll < 0.20 and state.positions:
                key = rng.choice(sorted(state.positions))
                amount = rng.choice((-1, 1)) * rng.randint(1, 10**13)
                event = m.MarginTransfer(f"xfer-{serial}", event.ts, *key, amount)
            elif roll < 0.215:  # a jump of 3-8 %: beyond a mark band, it pauses the market
                market = rng.choice(list(MARKETS))
                tick = MARKETS[market][0]
                jumped = session.marks[market] * (100 + rng.choice((-1, 1)) * rng.randint(3, 8)) // 100
                session.marks[market] = price = max(tick, jumped // tick * tick)
                event = m.MarkPrice(f"jump-{serial}", event.ts, market, price)
            elif roll < 0.219:  # a late mark: its market's last mark again, at that mark's own (old) ts
                market = state.markets.get(rng.choice(list(MARKETS)))
                if market is not None and market.mark:
                    event = m.MarkPrice(f"late-{serial}", market.mark_ts, market.config.market, market.mark)
            elif roll < 0.225:  # a market config: short time-outs, sometimes a mark band
                config = rng.choice(market_events(event.ts))
                event = msgspec.structs.replace(
                    config, id=f"cfg-{serial}", ts=event.ts, liquidation_timeout_ms=rng.choice((500, 5_000, 60_000)),
                    mark_band=rng.choice((0, U // 50, U // 50)),
                    # stale marks: a market whose mark is older than this at a barrier pauses until its next mark
                    mark_stale_ms=rng.choice((0, 0, 3_000, 8_000)),
                    # fund domains: shared, its own, the settle asset's (moves are refused while positions are open)
                    insurance_fund=rng.choice(("", "", "majors", f"{config.market}-fund")),
                    # liquidation policies (core.policy) and the clearance fee their market fills pay
                    liquidation_policy=rng.choice(POLICIES), liquidation_fee_rate=rng.choice((0, U // 2000, U // 80)),
                )  # fmt: skip
            elif roll < 0.24 and state.positions:  # auto-add margin on (mostly) or off, now and then for no market
                account, market, side = rng.choice(sorted(state.positions))
                market = market if rng.random() < 0.95 else "NOPE-PERP"
                event = m.AutoMargin(f"auto-{serial}", event.ts, account, market, side, rng.random() < 0.8)
            elif roll < 0.255 and state.positions:  # a stop-loss or take-profit, sometimes on the wrong side
                account, market, side = key = rng.choice(sorted(state.positions))
                tick = state.markets[market].config.tick_size
                mark = state.markets[market].mark or session.marks[market]
                price = max(tick, mark * rng.randint(990, 1010) // 1000 // tick * tick)
                qty = rng.choice((0, 0, abs(state.positions[key].size) // 2 // MARKETS[market][1] * MARKETS[market][1]))
                event = m.PositionTrigger(f"trig-{serial}", event.ts, account, market, side,
                                          rng.choice((m.STOP_LOSS, m.TAKE_PROFIT)), price, qty)  # fmt: skip
            elif roll < 0.26 and state.triggers:  # cancel one, now and then one that is not there
                account, trigger_id = rng.choice(sorted(state.triggers))
                event = m.PositionTriggerCancel(f"untrig-{serial}", event.ts, account,
                                                trigger_id if rng.random() < 0.9 else "trig-none")  # fmt: skip
        verdict = apply_event(state, state.offset + 1, event, projection.check_answer)
        outputs = projection.after_event(state, state.offset, event, verdict is None)
        engine.take(outputs)
        for close in (o for o in outputs if type(o) is CloseCommand):  # the trader's close order, mostly executed
            if rng.random() < 0.7:
                tick = state.markets[close.market].config.tick_size
                price = max(tick, state.markets[close.market].mark // tick * tick)
                queued.append(m.Fill(f"close-{serial}-{close.trigger_id}", event.ts, close.account, close.market,
                                     close.position_side, close.side, parse_decimal(close.qty), price, 0))  # fmt: skip
        produced += 1
        yield event, state

