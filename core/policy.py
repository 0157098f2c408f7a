"""Liquidation policies: how much of a liquidatable position one command closes, and how (docs/decisions.md,
"Liquidation policies").

Pure and exact. The liquidation projection asks ``liquidation_step`` for a
position that is liquidatable at the mark (B <= MM) and not bankrupt (B >= 0);
a bankrupt one is always the fund stage's (a takeover or ADL), whatever the
policy. The answer is ``(qty, order)``:

- ``full`` (Binance's last resort, the default): the whole position, TAKEOVER
  at the bankruptcy price.
- ``tier_step`` (Bybit ``steps`` 1, OKX 2): above the lowest bracket, a MARKET
  command for what brings the notional at the mark below the cap of the bracket
  ``steps`` lower, if the position left there meets its requirement
  (B - fee > MM at the mark); otherwise, and in the lowest bracket, the whole
  position as a TAKEOVER.
- ``fraction`` (Hyperliquid): equity below ``backstop_ratio`` x MM hands the
  whole position and its margin to the fund (TAKEOVER); above ``min_notional``
  and outside the cooldown after a partial liquidation, a MARKET command for
  ``fraction`` of it (down to the lot, at least one lot); otherwise a MARKET
  command for all of it (the trader keeps what the close leaves).

Units as in core.margin: sizes and prices 1e-8, cost 1e-16, margin and
amounts 1e-8, rates 1e-8.
"""

from ringfence.core.fixed import SCALE
from ringfence.core.margin import bracket_index, maintenance_margin_e24
from ringfence.core.model import FRACTION, FULL, MARKET, TAKEOVER, TIER_STEP, MarketConfig

S = SCALE


def clearance_fee(qty: int, price: int, rate: int) -> int:
    """The clearance fee on ``qty`` liquidated at ``price``: rate x notional, in amount units, rounded up."""
    return -((-qty * price * rate) // (S * S))


def liquidation_step(config: MarketConfig, size: int, cost: int, margin: int, mark: int,
                     ts: int, partial_ts: int) -> tuple[int, str]:  # fmt: skip
    """(qty, order) of the next command for a liquidatable, not bankrupt position of signed ``size``.

    ``partial_ts`` is the event time of the position's last partial liquidation (-1: none), for the cooldown.
    """
    whole = abs(size)
    policy = config.liquidation_policy
    if policy.kind == FULL:
        return whole, TAKEOVER
    brackets, lot = config.brackets, config.lot_size
    balance = margin * S + size * mark - cost  # B, 1e-16
    if policy.kind == TIER_STEP:
        index = bracket_index(brackets, whole * mark)
        if index == 0:
            return whole, TAKEOVER
        cap = brackets[max(0, index - policy.steps)].notional_cap * S  # the notional left must be below it
        left = (cap - 1) // mark // lot * lot
        qty = whole - left
        if left <= 0 or qty <= 0:
            return whole, TAKEOVER
        # the realized PnL moves into the margin and the unrealized rest stays: B falls by the fee alone
        after = balance - clearance_fee(qty, mark, config.liquidation_fee_rate) * S
        if after * S > maintenance_margin_e24(brackets, left * mark):
            return qty, MARKET
        return whole, TAKEOVER
    if policy.kind == FRACTION:
        maintenance = maintenance_margin_e24(brackets, whole * mark)  # 1e-24
        if balance * S * S < policy.backstop_ratio * maintenance:  # equity < ratio x MM (1e-32 both)
            return whole, TAKEOVER
        cooling = partial_ts >= 0 and ts < partial_ts + policy.cooldown_ms
        if whole * mark > policy.min_notional * S and not cooling:
            qty = max(lot, whole * policy.fraction // S // lot * lot)
            if qty < whole:
                return qty, MARKET
        return whole, MARKET
    raise ValueError(f"unknown liquidation policy {policy.kind!r}")  # refused on input (events.wire)


def fee_bankrupt_notional(brackets, fee_rate: int) -> int | None:
    """Below which notional the clearance fee alone exceeds MM (Binance: "bankrupt on entry"), in amount units.

    ``MM(N) - fee_rate x N`` starts at 0 and its slope ``mmr - fee_rate`` only
    rises with the bracket, so it is negative on [0, N*) and not beyond: a
    position of notional below N* that is liquidated at B = MM is bankrupt by
    the fee of its market close. 0: none; None: every notional.
    """
    for bracket in brackets:
        slope = bracket.mmr - fee_rate
        if slope <= 0:
            continue
        # the root of N x slope = maint_amount x S (MM - fee = 0): at or above the floor, since MM - fee <= 0 there
        root = bracket.maint_amount * S // slope
        if root < bracket.notional_cap or bracket is brackets[-1]:
            return root
    return None
