"""A seeded generator of realistic exchange sessions (domain events, fixed point).

Same seed, same events. Used by the example session, the benchmarks and the
property tests. Markets carry Binance's published BTCUSDT bracket table and
an ETHUSDT table shaped like Binance's; the maintenance amounts are derived
(cum = previous cum + floor * (mmr - previous mmr)), which is how the venue
defines them and what ringfence validates.
"""

import random
from collections.abc import Iterator

from ringfence.core import model as m
from ringfence.core.fixed import SCALE, div_ceil

U = SCALE
START_TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FUNDING_INTERVAL_MS = 8 * 3600 * 1000

# (notional cap, max leverage, mmr in 1e-4): floors are the previous caps
BTCUSDT_TIERS = [
    (50_000, 125, 40), (600_000, 100, 50), (3_000_000, 75, 65), (12_000_000, 50, 100),
    (70_000_000, 25, 200), (100_000_000, 20, 250), (230_000_000, 10, 500), (480_000_000, 5, 1000),
    (600_000_000, 4, 1250), (800_000_000, 3, 1500), (1_200_000_000, 2, 2500), (1_800_000_000, 1, 5000),
]  # fmt: skip
ETHUSDT_TIERS = [
    (50_000, 125, 50), (500_000, 100, 65), (8_000_000, 75, 100), (50_000_000, 50, 200),
    (80_000_000, 25, 250), (150_000_000, 20, 500), (300_000_000, 10, 1000), (400_000_000, 5, 1250),
    (500_000_000, 4, 1500), (800_000_000, 2, 2500), (1_200_000_000, 1, 5000),
]  # fmt: skip


def bracket_table(tiers) -> tuple[m.Bracket, ...]:
    brackets = []
    floor_units = cum_units = previous_mmr = 0
    for cap, leverage, mmr_bp in tiers:
        mmr = mmr_bp * U // 10_000
        cum_units += floor_units * (mmr - previous_mmr) // U
        brackets.append(m.Bracket(floor_units, cap * U, leverage, mmr, cum_units))
        floor_units, previous_mmr = cap * U, mmr
    return tuple(brackets)


MARKETS = {
    # name: (tick, lot, start price, brackets)
    "BTCUSDT": (U // 10, U // 1000, 60_000 * U, bracket_table(BTCUSDT_TIERS)),
    "ETHUSDT": (U // 100, U // 1000, 3_000 * U, bracket_table(ETHUSDT_TIERS)),
}
AUTO_MARGIN_SHARE = 0.1  # traders who switch auto-add margin on (Bybit's option)
STOP_LOSS_SHARE = 0.2  # traders who put a stop-loss on every position they open, this far from the mark:
STOP_LOSS_DISTANCE_BP = 300
LEVERAGE_CHOICES = [1, 2, 3, 5, 10, 10, 20, 20, 20, 25, 50, 75, 100, 125]


# The session's liquidation policies (core.policy): BTCUSDT steps down the brackets one at a time (Bybit),
# ETHUSDT sends a fifth at a time above 10,000 USDT (Hyperliquid's rule at a tenth of its notional, so that the
# simulated traders' positions reach it), with a 30 s cooldown and the backstop at 2/3 of MM.
POLICIES = {
    "BTCUSDT": m.LiquidationPolicy(m.TIER_STEP),
    "ETHUSDT": m.LiquidationPolicy(m.FRACTION, fraction=U // 5, min_notional=10_000 * U, cooldown_ms=30_000,
                                   backstop_ratio=6_666 * U // 10_000),
}  # fmt: skip


def market_events(ts: int) -> list[m.MarketConfig]:
    return [
        m.MarketConfig(f"cfg-{name}", ts, name, "USDT", tick, lot, brackets, 125 * U // 10_000,
                       liquidation_policy=POLICIES[name])
        for name, (tick, lot, _, brackets) in MARKETS.items()
    ]  # fmt: skip


class Session:
    """Generates one session; keeps a shadow of sizes so reductions and hedge legs are plausible."""

    def __init__(self, seed: int, traders: int = 200, hedge_share: float = 0.2, free_balance=None):
        """``free_balance(trader)`` -> units, when given, is the order-entry margin check of a live exchange."""
        self.rng = random.Random(seed)
        self.traders = [f"T{n:06d}" for n in range(traders)]
        self.hedge = {t for t in self.traders if self.rng.random() < hedge_share}
        stops = random.Random(seed ^ 0x5709)  # its own stream: the rest of the session is what it was without them
        self.stop_loss = {t for t in self.traders if stops.random() < STOP_LOSS_SHARE}
        self.stop_losses = 0  # set so far
        self.deposit = {}
        self.leverage: dict[tuple[str, str], int] = {}
        self.sizes: dict[tuple[str, str, str], int] = {}
        self.marks = {name: start for name, (_, _, start, _) in MARKETS.items()}
        self.ts = START_TS_MS
        self.next_funding = START_TS_MS + FUNDING_INTERVAL_MS
        self.serial = 0
        self.free_balance = free_balance

    def _id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def _tick(self) -> int:
        self.ts += self.rng.randint(1, 300)  # ~6.6 events/s: one funding every ~190k events
        return self.ts

    def opening(self) -> Iterator[m.Event]:
        yield from market_events(self.ts)
        for trader in self.traders:
            amount = int(10 ** self.rng.uniform(3, 6)) * U
            self.deposit[trader] = amount
            yield m.Deposit(self._id("dep"), self._tick(), trader, "USDT", amount)
            for market in MARKETS:
                leverage = self.rng.choice(LEVERAGE_CHOICES)
                self.leverage[(trader, market)] = leverage
                yield m.SetLeverage(self._id("lev"), self._tick(), trader, market, leverage)
            if self.rng.random() < AUTO_MARGIN_SHARE:  # auto-add margin on every position the trader may open
                for market in MARKETS:
                    for leg in (m.LONG, m.SHORT) if trader in self.hedge else (m.BOTH,):
                        yield m.AutoMargin(self._id("auto"), self._tick(), trader, market, leg, True)

    def events(self, count: int) -> Iterator[m.Event]:
        """The opening (markets, deposits, leverage), then ``count`` mixed events."""
        produced = 0
        for event in self.opening():
            yield event
            produced += 1
        rng = self.rng
        while produced < count:
            roll = rng.random()
            if self.ts >= self.next_funding and count - produced >= len(MARKETS):
                for market in MARKETS:
                    rate = rng.randint(-20_000, 40_000)  # -0.02 % .. +0.04 %, 1e-8
                    yield m.Funding(self._id("fund"), self.next_funding, market, rate, self.marks[market])
                    produced += 1
                self.next_funding += FUNDING_INTERVAL_MS
            elif roll < 0.30:
                yield self._mark()
                produced += 1
            elif roll < 0.94 and count - produced >= 2:  # both sides of a trade, or something else
                for event in self._trade():
                    if produced >= count and type(event) is not m.Fill:
                        break  # a stop-loss beyond the count is left out; both fills of a trade always fit
                    yield event
                    produced += 1
            elif roll < 0.97:
                yield self._margin_transfer()
                produced += 1
            elif roll < 0.99:
                trader = rng.choice(self.traders)
                amount = int(self.deposit[trader] * rng.uniform(0.01, 0.25)) // U * U or U
                yield m.Withdrawal(self._id("wd"), self._tick(), trader, "USDT", amount)
                produced += 1
            else:
                trader = rng.choice(self.traders)
                amount = int(10 ** rng.uniform(2, 5)) * U
                self.deposit[trader] += amount
                yield m.Deposit(self._id("dep"), self._tick(), trader, "USDT", amount)
                produced += 1

    def _mark(self) -> m.MarkPrice:
        rng = self.rng
        market = rng.choice(list(MARKETS))
        tick = MARKETS[market][0]
        mark = self.marks[market]
        # random walk of a few basis points, with a rare jump of 1-4 %
        move_bp = rng.gauss(0, 3) if rng.random() > 0.0005 else rng.choice((-1, 1)) * rng.uniform(100, 400)
        mark = max(tick, mark + int(mark * move_bp) // 10_000 // tick * tick)
        self.marks[market] = mark
        return m.MarkPrice(self._id("mark"), self._tick(), market, mark)

    def choose_leg(self, trader: str, market: str, buying: bool, qty: int) -> str:
        """BOTH for one-way traders; in hedge mode close the opposite leg when it holds enough, else open."""
        if trader not in self.hedge:
            return m.BOTH
        closing_leg = m.SHORT if buying else m.LONG
        held = abs(self.sizes.get((trader, market, closing_leg), 0))
        if held >= qty and self.rng.random() < 0.45:
            return closing_leg
        return m.LONG if buying else m.SHORT

    def _trade(self) -> list[m.Event]:
        rng = self.rng
        market = rng.choice(list(MARKETS))
        tick, lot, _, _ = MARKETS[market]
        mark = self.marks[market]
        price = max(tick, (mark + int(mark * rng.gauss(0, 2)) // 10_000) // tick * tick)
        buyer, seller = rng.sample(self.traders, 2)
        # each side commits 1-20 % of its free balance (its deposit, without a live check) as initial margin
        funds = self.free_balance or self.deposit.get
        capacity = min(funds(buyer) * self.leverage[(buyer, market)], funds(seller) * self.leverage[(seller, market)])
        notional = int(capacity * rng.uniform(0.01, 0.2))
        qty = notional * U // price // lot * lot
        if qty == 0:
            return []  # order entry refuses an order whose margin the trader's free balance cannot cover
        fills, stops = [], []
        taker_buys = rng.random() < 0.5
        for trader, buying in ((buyer, True), (seller, False)):
            leg = self.choose_leg(trader, market, buying, qty)
            key = (trader, market, leg)
            opened = not self.sizes.get(key, 0)
            self.sizes[key] = self.sizes.get(key, 0) + (qty if buying else -qty)
            if opened and trader in self.stop_loss:  # below a long's mark, above a short's; the whole position
                away = 10_000 - STOP_LOSS_DISTANCE_BP if buying else 10_000 + STOP_LOSS_DISTANCE_BP
                stop = max(tick, mark * away // 10_000 // tick * tick)
                stops.append((trader, leg, stop))
            taker = buying == taker_buys
            rate_bp10 = 5 if taker else (2 if rng.random() > 0.1 else -1)  # 0.05 %, 0.02 %, -0.01 % rebate
            fee = div_ceil(qty * price * rate_bp10, U * 10_000)
            side = m.BUY if buying else m.SELL
            fills.append(m.Fill(self._id("fill"), self._tick(), trader, market, leg, side, qty, price, fee))
        for trader, leg, stop in stops:
            self.stop_losses += 1
            fills.append(m.PositionTrigger(self._id("sl"), self._tick(), trader, market, leg, m.STOP_LOSS, stop))
        return fills

    def _margin_transfer(self) -> m.Event:
        rng = self.rng
        open_keys = [k for k, size in self.sizes.items() if size] if len(self.sizes) < 2000 else None
        if open_keys:
            trader, market, leg = rng.choice(open_keys)
        else:
            trader, market = rng.choice(self.traders), rng.choice(list(MARKETS))
            leg = m.BOTH if trader not in self.hedge else rng.choice((m.LONG, m.SHORT))
        amount = int(10 ** rng.uniform(1, 4)) * U
        if rng.random() < 0.3:
            amount = -amount // 10
        return m.MarginTransfer(self._id("xfer"), self._tick(), trader, market, leg, amount)


def generate(seed: int, count: int, traders: int = 200) -> list[m.Event]:
    return list(Session(seed, traders).events(count))
