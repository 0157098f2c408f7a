"""The reduced state: every isolated position and every named balance.

Money lives only in these balances, per asset (a market's balances are in its
settle asset):

    wallets[(account, asset)]      free collateral of an account (a Wallet)
    positions[key].margin          isolated margin ring-fenced for one position
    insurance[domain]              an insurance fund (a domain holds one asset, fund_assets)
    fee_income[asset]              fees charged minus rebates paid
    clearing[market]               counterparty of realized PnL and funding
    net_deposits[asset]            deposits minus withdrawals (outside money)

Not balances: ``clearance_fees[domain]``, the liquidation clearance fees an
insurance fund has received (a part of its balance), and
``auto_margin_added[asset]``, what auto-add margin moved from wallets into
positions (a part of their margins), for the books.

Conservation: for each asset, the sum of the first five equals the sixth, at
every offset. Every update in the reducer is a transfer between two of them.

The state is mutated in place by the reducer (a copy per event would cost more
than the event). Changed positions and wallets carry a ``dirty`` flag and are
listed once in ``dirty_*`` so the store writes only what changed since the
last checkpoint (a flag check on an object in hand is cheaper than a set).
"""

from typing import TYPE_CHECKING

import msgspec

from ringfence.core.fixed import SCALE
from ringfence.core.limits import DEDUP_GENERATION_EVENTS
from ringfence.core.model import MarketConfig

if TYPE_CHECKING:
    from ringfence.core.index import PriceIndex

PositionKey = tuple[str, str, str]  # account, market, position side


class Wallet(msgspec.Struct, gc=False):
    balance: int = 0  # amount units, never negative
    dirty: bool = False  # changed since the last checkpoint (not state)


class Position(msgspec.Struct, gc=False):
    size: int = 0  # signed quantity, 1e-8
    cost: int = 0  # signed cost basis sum(q_i * p_i), 1e-16
    margin: int = 0  # isolated margin, amount units
    shortfall: int = 0  # initial margin + fees the wallet could not cover (recorded, not owed)
    # Below: derived caches and bookkeeping, never stored nor digested. A
    # restored position starts empty and looks them up again.
    leverage_cache: int = 0  # the effective leverage setting, 0 = look it up
    wallet: Wallet | None = None  # the account's wallet in the settle asset
    dirty: bool = False
    auto: bool = False  # auto-add margin is on and the reducer's index follows it: a change re-keys it there


class Trigger(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A live stop-loss or take-profit of one position (model.PositionTrigger, checked by the reducer)."""

    market: str
    position_side: str
    kind: str
    price: int
    qty: int  # 0: the whole position, whatever its size when it fires
    below: bool  # fires at a mark at or below ``price`` (a long's stop-loss, a short's take-profit); else at or above
    serial: int  # the offset of the request: tells this trigger from a later one of the same id
    ts: int  # the request's ts: with the trigger's fields it names the close command (offsets differ by partition)


TriggerKey = tuple[str, str]  # account, trigger id


class MarketState(msgspec.Struct, gc=False):
    config: MarketConfig
    mark: int = 0  # 0 until the first mark
    mark_ts: int = -1
    # derived from config: bracket floors in 1e-16 notional, for bisect on the hot path
    floors_e16: tuple[int, ...] = ()
    fund: str = ""  # derived from config: the insurance-fund domain (default: the settle asset's)

    def __post_init__(self) -> None:
        self.floors_e16 = tuple(bracket.notional_floor * SCALE for bracket in self.config.brackets)
        self.fund = self.config.insurance_fund or self.config.settle


class State:
    __slots__ = (
        "offset",
        "markets",
        "positions",
        "by_market",
        "wallets",
        "leverage",
        "insurance",
        "fund_assets",
        "fee_income",
        "clearing",
        "net_deposits",
        "clearance_fees",
        "auto_margin_added",
        "auto_margin",
        "top_ups",
        "auto_index",
        "auto_moved",
        "auto_parked",
        "triggers",
        "position_triggers",
        "dirty_triggers",
        "id_generation",
        "dedup_span",
        "recent_ids",
        "older_ids",
        "dirty_positions",
        "dirty_wallets",
        "dirty_leverage",
        "dirty_auto_margin",
        "dirty_markets",
        "dirty_balances",
    )

    def __init__(self) -> None:
        self.offset = -1  # last applied offset; -1 before the first event
        self.markets: dict[str, MarketState] = {}
        self.positions: dict[PositionKey, Position] = {}
        # the same positions per market, in insertion order (funding walks one market)
        self.by_market: dict[str, dict[PositionKey, Position]] = {}
        self.wallets: dict[tuple[str, str], Wallet] = {}
        self.leverage: dict[PositionKey, int] = {}
        self.insurance: dict[str, int] = {}  # by fund domain
        self.fund_assets: dict[str, str] = {}  # fund domain -> its asset, fixed by the first market naming it
        self.fee_income: dict[str, int] = {}
        self.clearing: dict[str, int] = {}
        self.net_deposits: dict[str, int] = {}
        self.clearance_fees: dict[str, int] = {}  # by fund domain: received so far (inside insurance, not beside it)
        self.auto_margin_added: dict[str, int] = {}  # by asset: moved from wallets by auto-add margin so far
        # positions (account, market, side) with auto-add margin on, by market: what a mark looks at
        self.auto_margin: dict[str, set[PositionKey]] = {}
        self.top_ups: list[tuple[PositionKey, int]] = []  # what the last applied mark added (derived, not state)
        # derived, not state: the enabled positions by the price at which a mark would liquidate them (built at
        # the first mark that needs it), and those changed since it last looked (core.reducer re-keys them)
        self.auto_index: PriceIndex | None = None
        self.auto_moved: set[PositionKey] = set()
        # due at a mark with nothing to add (an empty wallet, or 1x): out of the index until the position or the
        # account's wallet changes, so a crash's unfunded positions are not tested again at every mark
        self.auto_parked: dict[str, set[PositionKey]] = {}
        self.triggers: dict[TriggerKey, Trigger] = {}  # live position triggers
        self.position_triggers: dict[PositionKey, list[str]] = {}  # the same, by position: ids in the order set
        self.dirty_triggers: set[TriggerKey] = set()
        # duplicate recognition (limits.DEDUP_GENERATION_EVENTS): id -> offset of
        # the current generation of offsets and of the one before it
        self.id_generation = 0
        # offsets per generation: the log's own, unless a replay numbers its offsets further apart (whatif's
        # virtual offsets, VIRTUAL per log offset), which scales this with them so the window is the log's
        self.dedup_span = DEDUP_GENERATION_EVENTS
        self.recent_ids: dict[str, int] = {}  # "account\0id" of an account's event, the id of a market-wide one
        self.older_ids: dict[str, int] = {}
        self.dirty_positions: list[PositionKey] = []  # may repeat a key; the store dedupes
        self.dirty_wallets: list[tuple[str, str]] = []
        self.dirty_leverage: set[PositionKey] = set()
        self.dirty_auto_margin: set[PositionKey] = set()
        self.dirty_markets: set[str] = set()
        self.dirty_balances = False

    def add_position(self, key: PositionKey) -> Position:
        position = Position(dirty=True)
        self.positions[key] = position
        self.by_market.setdefault(key[1], {})[key] = position
        self.dirty_positions.append(key)
        if self.auto_index is not None and key in self.auto_margin.get(key[1], ()):
            position.auto = True
            self.auto_moved.add(key)
        return position

    def remove_position(self, key: PositionKey) -> None:
        position = self.positions.pop(key)
        del self.by_market[key[1]][key]
        if not position.dirty:
            self.dirty_positions.append(key)
        if position.auto:
            self.auto_moved.add(key)
        if key in self.position_triggers:  # a trigger dies with its position (closed, or flipped: closed first)
            for trigger_id in self.position_triggers.pop(key):
                self.drop_trigger((key[0], trigger_id))

    def drop_trigger(self, trigger_key: TriggerKey) -> None:
        del self.triggers[trigger_key]
        self.dirty_triggers.add(trigger_key)

    def touch_position(self, key: PositionKey, position: Position) -> None:
        if not position.dirty:
            position.dirty = True
            self.dirty_positions.append(key)
        if position.auto:
            self.auto_moved.add(key)

    def wallet(self, account: str, asset: str) -> Wallet:
        """The wallet, created empty if the account never held the asset."""
        key = (account, asset)
        wallet = self.wallets.get(key)
        if wallet is None:
            wallet = self.wallets[key] = Wallet()
        return wallet

    def touch_wallet(self, account: str, asset: str, wallet: Wallet) -> None:
        if not wallet.dirty:
            wallet.dirty = True
            self.dirty_wallets.append((account, asset))
        if self.auto_parked:
            self.unpark(account)

    def unpark(self, account: str) -> None:
        """The account's wallet changed: its parked auto-margin positions are looked at again at the next mark."""
        parked = self.auto_parked.pop(account, None)
        if parked:
            self.auto_moved.update(parked)

    def clear_dirty(self) -> None:
        for key in self.dirty_positions:
            position = self.positions.get(key)
            if position is not None:
                position.dirty = False
        for key in self.dirty_wallets:
            self.wallets[key].dirty = False
        self.dirty_positions.clear()
        self.dirty_wallets.clear()
        self.dirty_leverage.clear()
        self.dirty_auto_margin.clear()
        self.dirty_triggers.clear()
        self.dirty_markets.clear()
        self.dirty_balances = False

    def asset_totals(self) -> dict[str, int]:
        """Sum of every balance per asset (the left side of the conservation law)."""
        totals: dict[str, int] = {}
        for (_, asset), wallet in self.wallets.items():
            totals[asset] = totals.get(asset, 0) + wallet.balance
        for (_, market, _), position in self.positions.items():
            asset = self.markets[market].config.settle
            totals[asset] = totals.get(asset, 0) + position.margin
        for domain, balance in self.insurance.items():
            asset = self.fund_assets[domain]
            totals[asset] = totals.get(asset, 0) + balance
        for asset, balance in self.fee_income.items():
            totals[asset] = totals.get(asset, 0) + balance
        for market, balance in self.clearing.items():
            asset = self.markets[market].config.settle
            totals[asset] = totals.get(asset, 0) + balance
        return {asset: total for asset, total in totals.items() if total != 0}
