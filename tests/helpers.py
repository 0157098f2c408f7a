"""Small builders for tests: wire-like events in decimal strings, turned into domain events."""

from ringfence.core import model as m
from ringfence.core.fixed import parse_decimal
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.ops.simulate import BTCUSDT_TIERS, bracket_table


def d(text: str) -> int:
    return parse_decimal(str(text), allow_negative=True)


BTC_BRACKETS = bracket_table(BTCUSDT_TIERS)


def market(name="BTCUSDT", tick="0.1", lot="0.001", brackets=BTC_BRACKETS, id=None, ts=0, settle="USDT", fund="",
           fee_rate="0", policy=m.FULL_POLICY, timeout_ms=m.DEFAULT_LIQUIDATION_TIMEOUT_MS):  # fmt: skip
    return m.MarketConfig(id or f"cfg-{name}-{ts}", ts, name, settle, d(tick), d(lot), brackets, d(fee_rate),
                          liquidation_timeout_ms=timeout_ms, insurance_fund=fund, liquidation_policy=policy)  # fmt: skip


class Book:
    """Applies events to a State with automatic ids and offsets; remembers verdicts.

    With ``liquidations=True`` the liquidation projection runs after each event
    and its commands and alerts collect in ``outputs``.
    """

    def __init__(self, liquidations: bool = False):
        self.state = State()
        self.serial = 0
        self.verdicts = []
        self.projection = LiquidationProjection() if liquidations else None
        self.outputs = []

    def apply(self, event):
        offset = self.state.offset + 1
        check = self.projection.check_answer if self.projection is not None else None
        verdict = apply_event(self.state, offset, event, check)
        self.verdicts.append(verdict)
        if self.projection is not None:
            self.outputs.extend(self.projection.after_event(self.state, offset, event, verdict is None))
        return verdict

    def commands(self):
        return [o for o in self.outputs if o.__struct_config__.tag == "liquidate"]

    def _id(self):
        self.serial += 1
        return f"e{self.serial}"

    def market(self, **kw):
        return self.apply(market(**kw))

    def deposit(self, account, amount, asset="USDT"):
        return self.apply(m.Deposit(self._id(), 0, account, asset, d(amount)))

    def withdraw(self, account, amount, asset="USDT"):
        return self.apply(m.Withdrawal(self._id(), 0, account, asset, d(amount)))

    def leverage(self, account, leverage, market="BTCUSDT", side="BOTH"):
        return self.apply(m.SetLeverage(self._id(), 0, account, market, leverage, side))

    def fill(self, account, side, qty, price, fee="0", market="BTCUSDT", position_side="BOTH", ts=0):
        return self.apply(m.Fill(self._id(), ts, account, market, position_side, side, d(qty), d(price), d(fee)))

    def mark(self, price, market="BTCUSDT", ts=0):
        return self.apply(m.MarkPrice(self._id(), ts, market, d(price)))

    def transfer(self, account, amount, market="BTCUSDT", side="BOTH", ts=0):
        return self.apply(m.MarginTransfer(self._id(), ts, account, market, side, d(amount)))

    def auto_margin(self, account, enabled=True, market="BTCUSDT", side="BOTH"):
        return self.apply(m.AutoMargin(self._id(), 0, account, market, side, enabled))

    def trigger(self, account, kind, price, qty=None, market="BTCUSDT", side="BOTH", trigger_id=None, ts=0):
        """A position trigger; its id is ``trigger_id`` or the next automatic one (returns the verdict)."""
        return self.apply(m.PositionTrigger(trigger_id or self._id(), ts, account, market, side, kind, d(price),
                                            0 if qty is None else d(qty)))  # fmt: skip

    def cancel_trigger(self, account, trigger_id):
        return self.apply(m.PositionTriggerCancel(self._id(), 0, account, trigger_id))

    def closes(self):
        return [o for o in self.outputs if o.__struct_config__.tag == "close"]

    def funding(self, rate, mark_price, market="BTCUSDT"):
        return self.apply(m.Funding(self._id(), 0, market, d(rate), d(mark_price)))

    def liquidation(self, account, qty, price, market="BTCUSDT", side="BOTH", command_id=None, ts=0, order=None):
        """A liquidation fill answering ``command_id`` (default: the position's live command, if any, as its order)."""
        if command_id is None and self.projection is not None:
            live = self.projection.book.live_for((account, market, side))
            command_id = live[0].command_id if live else "none"
            order = order or (live[0].order if live else None)
        order = order or m.TAKEOVER
        return self.apply(m.LiquidationFill(self._id(), ts, command_id or "cmd", account, market, side, d(qty), d(price),
                                            order))  # fmt: skip

    def adl_fill(self, account, qty, price, command_id, market="BTCUSDT", side="BOTH", ts=0):
        return self.apply(m.AdlFill(self._id(), ts, command_id, account, market, side, d(qty), d(price)))

    def cancels(self):
        return [o for o in self.outputs if o.__struct_config__.tag == "cancel"]

    def live(self):
        return self.projection.book.live()

    def market_with_band(self, band, **kw):
        config = market(**kw)
        import msgspec

        return self.apply(msgspec.structs.replace(config, mark_band=d(band), id=f"band-{self.serial}"))

    def position(self, account, market="BTCUSDT", side="BOTH"):
        return self.state.positions.get((account, market, side))

    def wallet(self, account, asset="USDT"):
        wallet = self.state.wallets.get((account, asset))
        return 0 if wallet is None else wallet.balance

    def conserved(self) -> bool:
        totals = self.state.asset_totals()
        expected = {a: v for a, v in self.state.net_deposits.items() if v}
        return totals == expected
