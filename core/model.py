"""Validated domain events: what the log stores and the reducer applies.

These are the fixed-point twins of the wire records of DESIGN.md §4.1: every
price, quantity, amount and rate is an int in units of 1e-8 (core.fixed), so
the hot path never parses a decimal string. ``events/`` turns wire JSON into
these after stateless validation; the reducer does the stateful checks.

They live in ``core`` because the reducer dispatches on them and ``core`` may
not import ``events`` (dependency direction, DESIGN.md §1).

Structs are frozen, tagged by ``type`` (stable wire tags) and encoded as
arrays in the log (``array_like``) for compactness; ``gc=False`` because they
hold no reference cycles and millions of them may be alive.
"""

import msgspec

BOTH, LONG, SHORT = "BOTH", "LONG", "SHORT"
BUY, SELL = "buy", "sell"

# The liquidation timeout of a market that does not set one: a minute of event
# time is long for a liquidation engine (they answer in milliseconds) and short
# for a position left without a working command.
DEFAULT_LIQUIDATION_TIMEOUT_MS = 60_000

_opts = dict(frozen=True, array_like=True, gc=False, tag_field="type")

# How a market liquidates a position that is liquidatable but not bankrupt (docs/decisions.md, "Liquidation
# policies"); core.policy is the rule. A bankrupt one is always the fund stage's, whatever the policy.
FULL, TIER_STEP, FRACTION = "full", "tier_step", "fraction"
# How a liquidation command is executed, and so how its liquidation_fills settle (core.reducer):
TAKEOVER = "takeover"  # the fund takes the quantity over at the bankruptcy price: the trader loses that share of margin
MARKET = "market"  # a market order, never worse than its protection price: PnL at the execution price, minus the fee


class Bracket(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One maintenance-margin tier: notional in [floor, cap) -> MM = N * mmr - maint_amount."""

    notional_floor: int
    notional_cap: int
    max_leverage: int
    mmr: int  # rate, 1e-8
    maint_amount: int  # amount units


class LiquidationPolicy(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A market's liquidation policy; the fields of the other kinds keep their defaults (validated on input)."""

    kind: str = FULL
    steps: int = 1  # tier_step: brackets stepped down at a time (Bybit 1, OKX 2)
    fraction: int = 0  # fraction: the share of the position one market command closes (rate, 1e-8)
    min_notional: int = 0  # fraction: at or below this notional (amount units) the whole position goes at once
    cooldown_ms: int = 0  # fraction: after a partial liquidation, for this long a liquidation is for the whole
    backstop_ratio: int = 0  # fraction: equity below this share of MM hands the position to the fund (rate; 0: none)


FULL_POLICY = LiquidationPolicy()


class MarketConfig(msgspec.Struct, tag="market", **_opts):
    id: str
    ts: int
    market: str
    settle: str
    tick_size: int
    lot_size: int
    brackets: tuple[Bracket, ...]
    liquidation_fee_rate: int = 0
    # a mark that moves more than this fraction from the previous mark pauses
    # liquidations in the market until a mark moves less (0 = no band)
    mark_band: int = 0
    # an unanswered liquidation command is cancelled and issued again this long
    # after it was issued, in event time (docs/decisions.md, "Liquidation episodes")
    liquidation_timeout_ms: int = DEFAULT_LIQUIDATION_TIMEOUT_MS
    # the insurance fund (domain) the market's liquidations pay into and are
    # covered by; "" is the settle asset's own fund (docs/decisions.md, "Insurance-fund domains")
    insurance_fund: str = ""
    # with no new mark for this long in event time, judged at every applied mark, funding or market event of any
    # market, the market's liquidations pause until a fresh mark (0 = never; docs/decisions.md, "Stale marks")
    mark_stale_ms: int = 0
    liquidation_policy: LiquidationPolicy = FULL_POLICY


class Deposit(msgspec.Struct, tag="deposit", **_opts):
    id: str
    ts: int
    account: str
    asset: str
    amount: int


class Withdrawal(msgspec.Struct, tag="withdrawal", **_opts):
    id: str
    ts: int
    account: str
    asset: str
    amount: int


class SetLeverage(msgspec.Struct, tag="leverage", **_opts):
    id: str
    ts: int
    account: str
    market: str
    leverage: int
    position_side: str = BOTH


class AutoMargin(msgspec.Struct, tag="auto_margin", **_opts):
    """Turn auto-add margin on or off for one isolated position (Bybit/Bitget; core.reducer, at marks)."""

    id: str
    ts: int
    account: str
    market: str
    position_side: str
    enabled: bool


# Position triggers (docs/decisions.md, "Position triggers"): a stop-loss closes a position the mark moved against,
# a take-profit one it moved for; both by the mark only
STOP_LOSS, TAKE_PROFIT = "stop_loss", "take_profit"


class PositionTrigger(msgspec.Struct, tag="position_trigger", **_opts):
    """Close the position at market when the mark reaches ``trigger_price`` (its ``id`` names the trigger)."""

    id: str
    ts: int
    account: str
    market: str
    position_side: str
    kind: str  # STOP_LOSS / TAKE_PROFIT
    trigger_price: int
    qty: int = 0  # 0: the whole position, sized when it fires; else at most this much of it


class PositionTriggerCancel(msgspec.Struct, tag="position_trigger_cancel", **_opts):
    id: str
    ts: int
    account: str
    trigger_id: str


class MarginTransfer(msgspec.Struct, tag="margin_transfer", **_opts):
    id: str
    ts: int
    account: str
    market: str
    position_side: str
    amount: int  # positive adds to the position, negative removes


class Fill(msgspec.Struct, tag="fill", **_opts):
    id: str
    ts: int
    account: str
    market: str
    position_side: str
    side: str  # buy / sell
    qty: int
    price: int
    fee: int  # negative is a rebate


class MarkPrice(msgspec.Struct, tag="mark", **_opts):
    id: str
    ts: int
    market: str
    price: int


class Funding(msgspec.Struct, tag="funding", **_opts):
    id: str
    ts: int
    market: str
    rate: int  # 1e-8, positive: longs pay shorts
    mark_price: int


class LiquidationFill(msgspec.Struct, tag="liquidation_fill", **_opts):
    id: str
    ts: int
    command_id: str
    account: str
    market: str
    position_side: str
    qty: int
    price: int
    order: str = TAKEOVER  # the answered command's order (TAKEOVER / MARKET): how the fill settles


class AdlFill(LiquidationFill, tag="adl_fill"):
    """The counterparty's side of an auto-deleveraging trade: a reducing fill without fee.

    Same fields as a liquidation fill (``order`` is always TAKEOVER), another event (dispatch is on the exact type).
    """


class InvalidInput(msgspec.Struct, tag="invalid", **_opts):
    """A record that failed stateless validation at the edge.

    It is kept in the log (nothing is lost, and offsets stay those of the
    input) and the reducer turns it into a dead letter without judging it again.
    """

    reason: str
    detail: str
    raw: bytes  # bounded prefix of the input
    source: str = ""  # e.g. "file.jsonl:17"


Event = (
    MarketConfig
    | Deposit
    | Withdrawal
    | SetLeverage
    | MarginTransfer
    | AutoMargin
    | PositionTrigger
    | PositionTriggerCancel
    | Fill
    | MarkPrice
    | Funding
    | LiquidationFill
    | AdlFill
)
LogRecord = Event | InvalidInput


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """What the reducer says about an event it did not (fully) apply.

    kind "rejection": a valid request refused by the state; kind "deadletter":
    input that cannot be applied at all. Either way the state is unchanged.
    """

    kind: str
    reason: str
    detail: str
