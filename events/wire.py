"""The public wire contract (DESIGN.md §4.1): one JSON object per record.

Decimals travel as strings and are parsed exactly into the fixed-point
domain events of ``core.model``. Validation here is stateless (the record
alone); the reducer does what needs state (unknown market, tick and lot,
duplicate ids).
"""

from typing import Annotated, Literal

import msgspec

from ringfence.core import model as m
from ringfence.core import reasons as r
from ringfence.core.fixed import INT64_MAX, SCALE, DecimalError, format_decimal, parse_decimal
from ringfence.core.limits import (
    MAX_AMOUNT_UNITS,
    MAX_BRACKETS,
    MAX_ID_CHARS,
    MAX_LEVERAGE,
    MAX_LIQUIDATION_TIMEOUT_MS,
    MAX_PRICE_UNITS,
    MAX_QTY_UNITS,
    MAX_TRADE_NOTIONAL_UNITS,
    MAX_TS_MS,
)

# Identifiers are Unicode scalar values (no lone surrogate: it cannot be encoded as UTF-8, in the log, the
# store or a dead letter) without control characters (C0, DEL, C1); NUL separates the parts of store keys.
# \Z, not $: $ also matches before a final newline. msgspec matches the pattern with re.search.
Name = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f-\x9f\ud800-\udfff]+\Z")
]
Ts = Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_MS)]
Dec = Annotated[str, msgspec.Meta(max_length=64)]
TimeoutMs = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIQUIDATION_TIMEOUT_MS)]
StaleMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_LIQUIDATION_TIMEOUT_MS)]
Leverage = Annotated[int, msgspec.Meta(ge=1, le=MAX_LEVERAGE)]
PositionSide = Literal["BOTH", "LONG", "SHORT"]
Side = Literal["buy", "sell"]

_opts = dict(tag_field="type", forbid_unknown_fields=True)


class WireBracket(msgspec.Struct, forbid_unknown_fields=True):
    notional_floor: Dec
    notional_cap: Dec
    max_leverage: Leverage
    mmr: Dec
    maint_amount: Dec


class WirePolicy(msgspec.Struct, forbid_unknown_fields=True):
    """A market's liquidation policy (core.policy): ``kind`` and that kind's parameters only."""

    kind: str
    steps: int | None = None  # tier_step
    fraction: Dec | None = None  # fraction (required)
    min_notional: Dec | None = None  # fraction
    cooldown_ms: int | None = None  # fraction
    backstop_ratio: Dec | None = None  # fraction


# the parameters each kind takes; any other is refused (a field that changes nothing is a defect)
POLICY_FIELDS = {m.FULL: (), m.TIER_STEP: ("steps",),
                  m.FRACTION: ("fraction", "min_notional", "cooldown_ms", "backstop_ratio")}  # fmt: skip


class WireMarket(msgspec.Struct, tag="market", **_opts):
    id: Name
    ts: Ts
    market: Name
    settle: Name
    tick_size: Dec
    lot_size: Dec
    brackets: Annotated[list[WireBracket], msgspec.Meta(min_length=1, max_length=MAX_BRACKETS)]
    liquidation_fee_rate: Dec = "0"
    mark_band: Dec = "0"
    liquidation_timeout_ms: TimeoutMs = m.DEFAULT_LIQUIDATION_TIMEOUT_MS
    insurance_fund: Name = ""  # absent: the settle asset's own fund (an explicit "" is not a name)
    mark_stale_ms: StaleMs = 0  # 0: marks never go stale
    liquidation_policy: WirePolicy | None = None  # absent: full


class WireDeposit(msgspec.Struct, tag="deposit", **_opts):
    id: Name
    ts: Ts
    account: Name
    asset: Name
    amount: Dec


class WireWithdrawal(msgspec.Struct, tag="withdrawal", **_opts):
    id: Name
    ts: Ts
    account: Name
    asset: Name
    amount: Dec


class WireLeverage(msgspec.Struct, tag="leverage", **_opts):
    id: Name
    ts: Ts
    account: Name
    market: Name
    leverage: Leverage
    position_side: PositionSide = "BOTH"


class WireMarginTransfer(msgspec.Struct, tag="margin_transfer", **_opts):
    id: Name
    ts: Ts
    account: Name
    market: Name
    amount: Dec
    position_side: PositionSide = "BOTH"


class WireAutoMargin(msgspec.Struct, tag="auto_margin", **_opts):
    id: Name
    ts: Ts
    account: Name
    market: Name
    enabled: bool
    position_side: PositionSide = "BOTH"


class WirePositionTrigger(msgspec.Struct, tag="position_trigger", **_opts):
    id: Name
    ts: Ts
    account: Name
    market: Name
    kind: Literal["stop_loss", "take_profit"]
    trigger_price: Dec
    qty: Dec | None = None  # absent: the whole position, sized when it fires
    trigger_by: Literal["mark"] = "mark"  # the only price ringfence knows (the mark); anything else is refused
    position_side: PositionSide = "BOTH"


class WirePositionTriggerCancel(msgspec.Struct, tag="position_trigger_cancel", **_opts):
    id: Name
    ts: Ts
    account: Name
    trigger_id: Name


class WireFill(msgspec.Struct, tag="fill", **_opts):
    id: Name
    ts: Ts
    account: Name
    market: Name
    side: Side
    qty: Dec
    price: Dec
    fee: Dec
    position_side: PositionSide = "BOTH"


class WireMark(msgspec.Struct, tag="mark", **_opts):
    id: Name
    ts: Ts
    market: Name
    price: Dec


class WireFunding(msgspec.Struct, tag="funding", **_opts):
    id: Name
    ts: Ts
    market: Name
    rate: Dec
    mark_price: Dec


class WireAnswer(msgspec.Struct, **_opts):
    id: Name
    ts: Ts
    command_id: Name
    account: Name
    market: Name
    qty: Dec
    price: Dec
    position_side: PositionSide = "BOTH"


class WireLiquidationFill(WireAnswer, tag="liquidation_fill"):
    order: Literal["takeover", "market"] = "takeover"  # the command's order, as it was issued


class WireAdlFill(WireAnswer, tag="adl_fill"):
    pass


WireEvent = (
    WireMarket
    | WireDeposit
    | WireWithdrawal
    | WireLeverage
    | WireMarginTransfer
    | WireAutoMargin
    | WirePositionTrigger
    | WirePositionTriggerCancel
    | WireFill
    | WireMark
    | WireFunding
    | WireLiquidationFill
    | WireAdlFill
)

WIRE_TYPES = {cls.__struct_config__.tag: cls for cls in WireEvent.__args__}


class InvalidRecord(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _units(value: str, field: str, *, positive: bool = False, signed: bool = False, most: int = INT64_MAX) -> int:
    """The decimal in units of 1e-8; ``most`` bounds its magnitude (core/limits.py)."""
    try:
        units = parse_decimal(value, allow_negative=signed)
    except DecimalError as error:
        raise InvalidRecord(error.reason, f"{field}: {error.detail}") from None
    if positive and units <= 0:
        raise InvalidRecord(r.NOT_POSITIVE, f"{field} must be > 0, got {value!r}")
    if units > most or -units > most:
        raise InvalidRecord(r.OUT_OF_RANGE, f"{field} {value} exceeds the limit {format_decimal(most)}")
    return units


def _trade(wire) -> tuple[int, int]:
    """(qty, price) of a fill, liquidation or ADL fill, whose notional is bounded too."""
    qty = _units(wire.qty, "qty", positive=True, most=MAX_QTY_UNITS)
    price = _units(wire.price, "price", positive=True, most=MAX_PRICE_UNITS)
    if qty * price > MAX_TRADE_NOTIONAL_UNITS * SCALE:
        raise InvalidRecord(r.OUT_OF_RANGE, f"notional qty x price = {format_decimal(qty * price // SCALE)} "
                                            f"exceeds the limit {format_decimal(MAX_TRADE_NOTIONAL_UNITS)}")  # fmt: skip
    return qty, price


def _rate(value: str, field: str, *, signed: bool = False, below_one: bool = True) -> int:
    units = _units(value, field, signed=signed)
    if below_one and abs(units) >= SCALE:
        raise InvalidRecord(r.OUT_OF_RANGE, f"{field} must be below 1, got {value!r}")
    return units


def _brackets(wire: list[WireBracket]) -> tuple[m.Bracket, ...]:
    brackets = []
    for index, b in enumerate(wire):
        field = f"brackets[{index}]"
        bracket = m.Bracket(
            notional_floor=_units(b.notional_floor, f"{field}.notional_floor"),
            notional_cap=_units(b.notional_cap, f"{field}.notional_cap", positive=True),
            max_leverage=b.max_leverage,
            mmr=_rate(b.mmr, f"{field}.mmr"),
            maint_amount=_units(b.maint_amount, f"{field}.maint_amount"),
        )
        _check_bracket(bracket, brackets[-1] if brackets else None, field)
        brackets.append(bracket)
    return tuple(brackets)


def _check_bracket(bracket: m.Bracket, previous: m.Bracket | None, field: str) -> None:
    def bad(why: str) -> InvalidRecord:
        return InvalidRecord(r.INVALID_BRACKETS, f"{field}: {why}")

    if bracket.mmr <= 0:
        raise bad("mmr must be > 0")
    if bracket.notional_cap <= bracket.notional_floor:
        raise bad("notional_cap must exceed notional_floor")
    # A position opened at the bracket's leverage L has B = IM = N/L at its own price; it is liquidatable on
    # its own fill if N/L <= MM = N*mmr - maint_amount for some notional N of the bracket. Linear in N, so the
    # largest N (a unit below the cap) decides: N*(L*mmr - 1) >= L*maint_amount, in units.
    excess = bracket.max_leverage * bracket.mmr - SCALE
    if excess >= 0 and (bracket.notional_cap - 1) * excess >= bracket.max_leverage * bracket.maint_amount * SCALE:
        raise bad(f"max_leverage {bracket.max_leverage} with mmr {format_decimal(bracket.mmr)} and maint_amount "
                  f"{format_decimal(bracket.maint_amount)}: the initial margin 1/{bracket.max_leverage} of a notional "
                  f"below {format_decimal(bracket.notional_cap)} is not above its maintenance margin, so a position "
                  f"at that leverage is liquidatable on its own fill")  # fmt: skip
    if previous is None:
        if bracket.notional_floor != 0 or bracket.maint_amount != 0:
            raise bad("the first bracket starts at notional 0 with maint_amount 0")
        return
    if bracket.notional_floor != previous.notional_cap:
        raise bad("notional_floor must equal the previous bracket's notional_cap")
    if bracket.mmr < previous.mmr or bracket.max_leverage > previous.max_leverage:
        raise bad("mmr must not fall and max_leverage must not rise with notional")
    # MM = N * mmr - cum must be continuous at the floor; it makes B - MM monotone
    # in the mark, so the self-consistent liquidation bracket is unique
    floor = bracket.notional_floor
    if floor * bracket.mmr - bracket.maint_amount * SCALE != floor * previous.mmr - previous.maint_amount * SCALE:
        raise bad("maint_amount is not continuous with the previous bracket (cum = prev_cum + floor * (mmr - prev_mmr))")


def _policy(wire: WirePolicy | None) -> m.LiquidationPolicy:
    if wire is None:
        return m.FULL_POLICY
    if wire.kind not in POLICY_FIELDS:
        raise InvalidRecord(r.UNKNOWN_LIQUIDATION_POLICY, f"liquidation_policy.kind {wire.kind!r} is not one of "
                                                          f"{', '.join(POLICY_FIELDS)}")  # fmt: skip

    def bad(why: str) -> InvalidRecord:
        return InvalidRecord(r.INVALID_LIQUIDATION_POLICY, f"liquidation_policy ({wire.kind}): {why}")

    allowed = POLICY_FIELDS[wire.kind]
    for field in WirePolicy.__struct_fields__[1:]:
        if getattr(wire, field) is not None and field not in allowed:
            raise bad(f"{field} applies to {next(k for k, f in POLICY_FIELDS.items() if field in f)} only")
    if wire.kind == m.FULL:
        return m.FULL_POLICY
    if wire.kind == m.TIER_STEP:
        steps = 1 if wire.steps is None else wire.steps
        if not 1 <= steps < MAX_BRACKETS:
            raise bad(f"steps must be 1 to {MAX_BRACKETS - 1}, got {steps}")
        return m.LiquidationPolicy(m.TIER_STEP, steps=steps)
    if wire.fraction is None:
        raise bad("fraction is required")
    fraction = _units(wire.fraction, "liquidation_policy.fraction")
    if not SCALE // 100 <= fraction < SCALE:  # below 1 %, a position would go in hundreds of commands, lot by lot
        raise bad(f"fraction must be at least 0.01 and below 1, got {wire.fraction!r}")
    cooldown = 0 if wire.cooldown_ms is None else wire.cooldown_ms
    if not 0 <= cooldown <= MAX_LIQUIDATION_TIMEOUT_MS:
        raise bad(f"cooldown_ms must be 0 to {MAX_LIQUIDATION_TIMEOUT_MS}, got {cooldown}")
    backstop = _units(wire.backstop_ratio or "0", "liquidation_policy.backstop_ratio")
    if backstop >= SCALE:
        raise bad(f"backstop_ratio must be below 1, got {wire.backstop_ratio!r}")
    minimum = _units(wire.min_notional or "0", "liquidation_policy.min_notional", most=MAX_TRADE_NOTIONAL_UNITS)
    return m.LiquidationPolicy(m.FRACTION, fraction=fraction, min_notional=minimum, cooldown_ms=cooldown,
                               backstop_ratio=backstop)  # fmt: skip


def to_domain(wire: WireEvent) -> m.Event:
    """Turn a structurally valid wire record into its fixed-point domain event, or raise InvalidRecord."""
    kind = type(wire)
    if kind is WireFill:
        return m.Fill(wire.id, wire.ts, wire.account, wire.market, wire.position_side, wire.side, *_trade(wire),
                      _units(wire.fee, "fee", signed=True, most=MAX_AMOUNT_UNITS))  # fmt: skip
    if kind is WireMark:
        return m.MarkPrice(wire.id, wire.ts, wire.market, _units(wire.price, "price", positive=True, most=MAX_PRICE_UNITS))
    if kind is WireDeposit or kind is WireWithdrawal:
        cls = m.Deposit if kind is WireDeposit else m.Withdrawal
        return cls(wire.id, wire.ts, wire.account, wire.asset, _units(wire.amount, "amount", positive=True, most=MAX_AMOUNT_UNITS))
    if kind is WireMarginTransfer:
        amount = _units(wire.amount, "amount", signed=True, most=MAX_AMOUNT_UNITS)
        if amount == 0:
            raise InvalidRecord(r.NOT_POSITIVE, "amount must not be zero")
        return m.MarginTransfer(wire.id, wire.ts, wire.account, wire.market, wire.position_side, amount)
    if kind is WireAutoMargin:
        return m.AutoMargin(wire.id, wire.ts, wire.account, wire.market, wire.position_side, wire.enabled)
    if kind is WirePositionTrigger:
        qty = 0 if wire.qty is None else _units(wire.qty, "qty", positive=True, most=MAX_QTY_UNITS)
        return m.PositionTrigger(wire.id, wire.ts, wire.account, wire.market, wire.position_side, wire.kind,
                                 _units(wire.trigger_price, "trigger_price", positive=True, most=MAX_PRICE_UNITS), qty)
    if kind is WirePositionTriggerCancel:
        return m.PositionTriggerCancel(wire.id, wire.ts, wire.account, wire.trigger_id)
    if kind is WireLeverage:
        return m.SetLeverage(wire.id, wire.ts, wire.account, wire.market, wire.leverage, wire.position_side)
    if kind is WireFunding:
        return m.Funding(
            wire.id, wire.ts, wire.market, _rate(wire.rate, "rate", signed=True),
            _units(wire.mark_price, "mark_price", positive=True, most=MAX_PRICE_UNITS),
        )  # fmt: skip
    if kind is WireLiquidationFill:
        return m.LiquidationFill(wire.id, wire.ts, wire.command_id, wire.account, wire.market, wire.position_side,
                                 *_trade(wire), wire.order)  # fmt: skip
    if kind is WireAdlFill:
        return m.AdlFill(wire.id, wire.ts, wire.command_id, wire.account, wire.market, wire.position_side, *_trade(wire))
    if kind is WireMarket:
        return m.MarketConfig(
            wire.id, wire.ts, wire.market, wire.settle,
            _units(wire.tick_size, "tick_size", positive=True, most=MAX_PRICE_UNITS),
            _units(wire.lot_size, "lot_size", positive=True, most=MAX_QTY_UNITS),
            _brackets(wire.brackets), _rate(wire.liquidation_fee_rate, "liquidation_fee_rate"),
            _rate(wire.mark_band, "mark_band"), wire.liquidation_timeout_ms,
            # naming the settle asset's own fund is the default: one form in the log, the state and the digest
            "" if wire.insurance_fund == wire.settle else wire.insurance_fund, wire.mark_stale_ms,
            _policy(wire.liquidation_policy),
        )  # fmt: skip
    raise InvalidRecord(r.UNKNOWN_TYPE, f"no domain event for {kind.__name__}")
