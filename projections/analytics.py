"""Bundled analytics projections (projections.sdk), run with `ringfence project` or `ringfence liqmap`.

    ringfence.projections.analytics:Exposure       exposure per account and asset, with correlated exposure
    ringfence.projections.analytics:LiquidationMap open notional by liquidation-price band, per market and side
    ringfence.projections.analytics:AccountFlows   realized PnL, fees and funding per account and asset

They keep only what they need (sizes, liquidation prices, baselines) in their
own state and compute the figures at the end; amounts are exact ints until
they are printed (notionals rounded down to 1e-8).
"""

import msgspec

from ringfence.core import margin as mm
from ringfence.core import model as m
from ringfence.core.fixed import SCALE
from ringfence.projections.sdk import Projection, units

# Markets that move together: same-direction positions across one group add
# up to one larger bet, although each is margined in isolation.
CORRELATED_GROUPS = {"crypto-majors": ("BTCUSDT", "ETHUSDT")}

_SEP = "\x1f"  # identifiers never hold control characters (validated on input)
_POSITION_EVENTS = (m.Fill, m.LiquidationFill, m.AdlFill, m.MarginTransfer, m.SetLeverage)


def _key(account: str, market: str, side: str) -> str:
    return _SEP.join((account, market, side))


def touched(event, view) -> list[tuple[str, str, str]]:
    """The position keys whose size, margin or liquidation price ``event`` may have changed."""
    kind = type(event)
    if kind in _POSITION_EVENTS:
        return [(event.account, event.market, event.position_side)]
    if kind is m.Funding or kind is m.MarketConfig:  # every position of the market
        return [(p.account, p.market, p.position_side) for p in view.positions(event.market)]
    return []


def _notional(size: int, mark: int) -> int:
    """|size| * mark in amount units (1e-8), rounded down."""
    return abs(size) * mark // SCALE


class _TrackPositions(Projection):
    """Keeps the last mark of each market and hands every position an event may have changed to ``track``."""

    def apply(self, event, view) -> None:
        if type(event) is m.MarkPrice and view.applied:
            self.state.marks[event.market] = event.price
        elif type(event) is m.MarketConfig and view.applied:
            self.on_market(event)
        for key in touched(event, view):
            self.track(_key(*key), view.position(*key))

    def on_market(self, config: m.MarketConfig) -> None:
        pass

    def track(self, key: str, position) -> None:
        raise NotImplementedError


class Exposure(_TrackPositions):
    """Long, short, net and gross notional per account and settle asset at the last marks.

    Correlated exposure: within a group of CORRELATED_GROUPS, the notional of
    same-direction positions in two or more of its markets (e.g. long both
    BTCUSDT and ETHUSDT), which isolation does not net.
    """

    class State(msgspec.Struct):
        sizes: dict[str, int] = {}  # position key -> signed size
        marks: dict[str, int] = {}
        settle: dict[str, str] = {}  # market -> settle asset

    def on_market(self, config: m.MarketConfig) -> None:
        self.state.settle[config.market] = config.settle

    def track(self, key: str, position) -> None:
        if position is None:
            self.state.sizes.pop(key, None)
        else:
            self.state.sizes[key] = position.size

    def rows(self) -> list[dict]:
        books: dict[tuple[str, str], dict] = {}
        for key, size in sorted(self.state.sizes.items()):
            account, market, _ = key.split(_SEP)
            book = books.setdefault((account, self.state.settle[market]), {"long": {}, "short": {}})
            side = book["long" if size > 0 else "short"]
            side[market] = side.get(market, 0) + _notional(size, self.state.marks.get(market, 0))
        rows = []
        for (account, asset), book in sorted(books.items()):
            long, short = sum(book["long"].values()), sum(book["short"].values())
            correlated, warnings = 0, []
            for markets in CORRELATED_GROUPS.values():
                for direction in ("long", "short"):
                    held = [market for market in markets if book[direction].get(market)]
                    if len(held) >= 2:
                        correlated += sum(book[direction][market] for market in held)
                        warnings.append(f"{direction} {'+'.join(held)}")
            rows.append({"account": account, "asset": asset, "long": units(long), "short": units(short),
                         "net": units(long - short), "gross": units(long + short),
                         "correlated": units(correlated), "warning": "; ".join(warnings) or None})  # fmt: skip
        return rows


class LiquidationMap(_TrackPositions):
    """Open notional by liquidation-price band, per market and side, at the last marks.

    A band is ``BAND_BP`` basis points of the market's last mark wide; a
    position counts in the band that holds its exact liquidation price.
    Positions safe at every price (a long whose margin covers its notional)
    have no band and are left out.
    """

    BAND_BP = 50

    class State(msgspec.Struct):
        positions: dict[str, tuple[int, int, int]] = {}  # key -> (size, liq numerator, liq denominator)
        marks: dict[str, int] = {}
        ticks: dict[str, int] = {}

    def on_market(self, config: m.MarketConfig) -> None:
        self.state.ticks[config.market] = config.tick_size

    def track(self, key: str, position) -> None:
        if position is None or position.liquidation_price is None:
            self.state.positions.pop(key, None)
        else:
            self.state.positions[key] = (position.size, *position.liquidation_price)

    def rows(self) -> list[dict]:
        bands: dict[tuple[str, str, int], list[int]] = {}
        for key, (size, numerator, denominator) in self.state.positions.items():
            _, market, _ = key.split(_SEP)
            mark = self.state.marks.get(market, 0)
            if not mark:
                continue
            width = max(self.state.ticks.get(market, 1), mark * self.BAND_BP // 10_000)
            band = numerator // (denominator * width)  # floor(liquidation price / width), exact
            entry = bands.setdefault((market, "long" if size > 0 else "short", band), [0, 0, width])
            entry[0] += 1
            entry[1] += _notional(size, mark)
        return [{"market": market, "side": side, "band_low": units(band * width), "band_high": units((band + 1) * width),
                 "positions": count, "notional": units(notional), "mark_price": units(self.state.marks[market])}
                for (market, side, band), (count, notional, width) in sorted(bands.items())]  # fmt: skip


class AccountFlows(Projection):
    """Realized PnL, fees, funding and liquidation results per account and settle asset.

    Each is a change of the account's equity (free wallet + isolated margins in
    that asset) attributed to the event that caused it: a fill's equity change
    plus its fee is realized PnL; a liquidation or ADL fill's change is its
    result (the residual margin lost to the fund included); funding is what
    each position paid or received. Deposits, withdrawals and transfers move
    no equity the projection counts.
    """

    class State(msgspec.Struct):
        wallets: dict[str, int] = {}  # account + asset -> last free balance seen
        margins: dict[str, int] = {}  # position key -> last isolated margin seen
        settle: dict[str, str] = {}
        flows: dict[str, list[int]] = {}  # account + asset -> [realized, fees, funding, liquidations]

    def apply(self, event, view) -> None:
        kind = type(event)
        if kind is m.MarketConfig and view.applied:
            self.state.settle[event.market] = event.settle
        if not view.applied:
            return
        if kind is m.Funding:
            for position in view.positions(event.market):
                payment = mm.funding_payment_units(position.size, event.mark_price, event.rate)
                self._flows(position.account, self.state.settle[event.market])[2] -= payment
                self.state.margins[_key(position.account, position.market, position.position_side)] = position.isolated_margin
            return
        if kind is m.MarkPrice:  # auto-add margin moves equity from the wallet to a position: neither is a flow
            for account, market, side, _ in view.auto_margin_added():
                self._equity_change(view, account, self.state.settle[market], None, (market, side))
            return
        account = getattr(event, "account", None)
        if account is None:
            return
        asset = event.asset if kind in (m.Deposit, m.Withdrawal) else self.state.settle[event.market]
        change = self._equity_change(view, account, asset, event)
        flows = self._flows(account, asset)
        if kind is m.Fill:
            flows[0] += change + event.fee
            flows[1] += event.fee
        elif kind is m.LiquidationFill or kind is m.AdlFill:
            flows[3] += change

    def _equity_change(self, view, account: str, asset: str, event, position_key: tuple[str, str] | None = None) -> int:
        wallet_key = _SEP.join((account, asset))
        wallet = view.wallet(account, asset)
        change = wallet - self.state.wallets.get(wallet_key, 0)
        self.state.wallets[wallet_key] = wallet
        if position_key is None and hasattr(event, "position_side"):
            position_key = (event.market, event.position_side)
        if position_key is not None:
            key = _key(account, *position_key)
            position = view.position(account, *position_key)
            margin = 0 if position is None else position.isolated_margin
            change += margin - self.state.margins.get(key, 0)
            self.state.margins[key] = margin
        return change

    def _flows(self, account: str, asset: str) -> list[int]:
        return self.state.flows.setdefault(_SEP.join((account, asset)), [0, 0, 0, 0])

    def rows(self) -> list[dict]:
        rows = []
        for key, (realized, fees, funding, liquidations) in sorted(self.state.flows.items()):
            account, asset = key.split(_SEP)
            rows.append({"account": account, "asset": asset, "realized_pnl": units(realized), "fees": units(fees),
                         "funding": units(funding), "liquidations": units(liquidations),
                         "net": units(realized - fees + funding + liquidations)})  # fmt: skip
        return rows
