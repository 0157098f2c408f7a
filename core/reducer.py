"""The only dispatcher: ``apply_event(state, offset, event) -> Verdict | None``.

Deterministic and total: time is the event's ``ts``, position is its offset,
nothing is read from a clock, the environment or hash order. Each handler
checks everything first and mutates second, so an event is either applied
whole or not at all (the returned Verdict says why).

Money moves only by transfers between the named balances of core.state; each
transfer below is two updates that sum to zero.
"""

from bisect import bisect_right

from ringfence.core import margin as mm
from ringfence.core import reasons as r
from ringfence.core.check import InvariantError, check
from ringfence.core.fixed import SCALE, format_decimal as dec, mul_div_ceil, mul_div_floor
from ringfence.core.index import PriceIndex
from ringfence.core.limits import (
    MAX_POSITION_BALANCE_UNITS,
    MAX_POSITION_NOTIONAL_UNITS,
    MAX_POSITION_QTY_UNITS,
    MAX_TRIGGERS_PER_POSITION,
    MAX_WALLET_UNITS,
)
from ringfence.core.model import (
    BOTH,
    AdlFill,
    AutoMargin,
    BUY,
    LONG,
    MARKET,
    SHORT,
    Deposit,
    Fill,
    Funding,
    InvalidInput,
    LiquidationFill,
    MarginTransfer,
    MarketConfig,
    MarkPrice,
    PositionTrigger,
    PositionTriggerCancel,
    SetLeverage,
    STOP_LOSS,
    Verdict,
    Withdrawal,
)
from ringfence.core.policy import clearance_fee
from ringfence.core.state import MarketState, Position, PositionKey, State, Trigger

_CANONICAL_SIDE = {BOTH: BOTH, LONG: LONG, SHORT: SHORT}

# A position's bounds (core/limits.py): the cost basis is in 1e-16
_MAX_COST = MAX_POSITION_NOTIONAL_UNITS * SCALE
_MAX_BALANCE = MAX_POSITION_BALANCE_UNITS

# Leverage of a position whose account never set one (Binance's default),
# capped by the bracket's maximum.
DEFAULT_LEVERAGE = 20


def _dead(reason: str, detail: str) -> Verdict:
    return Verdict("deadletter", reason, detail)


def _reject(reason: str, detail: str) -> Verdict:
    return Verdict("rejection", reason, detail)


def apply_event(state: State, offset: int, event, check_answer=None) -> Verdict | None:
    """Apply one log record at ``offset``; return None, or the verdict on a record not applied.

    ``check_answer(state, event) -> Verdict | None``, when given, judges a
    liquidation or ADL fill against the commands that were issued (the
    liquidation projection's episode book) before it is applied: an answer to
    no live or remembered command of that position is a dead letter and
    changes nothing. It also judges a market config that moves a market with
    no open position here to another fund: with several partitions the
    market's positions may be in another one (projections.liquidation).
    """
    if offset <= state.offset:
        raise InvariantError(f"offset {offset} after {state.offset}: offsets only move forward")
    state.offset = offset
    entry = _HANDLERS.get(type(event))
    if entry is None:
        check(type(event) is InvalidInput, "every log record type has a handler")
        return _dead(event.reason, event.detail)
    handler, per_account, judged = entry
    generation = offset // state.dedup_span
    if generation != state.id_generation:
        _rotate_ids(state, generation)
    event_id = event.id
    # An account's event is a duplicate of an earlier one of the same account; a mark, funding or market event
    # of an earlier one of those: what one partition of the events topic can tell (they are all in it).
    remembered = event.account + "\0" + event_id if per_account else event_id
    if remembered in state.older_ids:
        return _dead(r.DUPLICATE_ID, f"id {event_id!r} was already accepted at offset {state.older_ids[remembered]}")
    recent = state.recent_ids
    # one dict operation both checks and remembers the id; a record that
    # turns out to be a dead letter is forgotten again below
    first_offset = recent.setdefault(remembered, offset)
    if first_offset != offset:
        return _dead(r.DUPLICATE_ID, f"id {event_id!r} was already accepted at offset {first_offset}")
    verdict = handler(state, event, check_answer) if judged else handler(state, event)
    if verdict is not None and verdict.kind == "deadletter":
        del recent[remembered]
    return verdict


def _rotate_ids(state: State, generation: int) -> None:
    """Start a new generation of remembered ids; generations are fixed by offset, not by batching."""
    check(generation > state.id_generation, "id generations only move forward")
    state.older_ids = state.recent_ids if generation == state.id_generation + 1 else {}
    state.recent_ids = {}
    state.id_generation = generation


# -- configuration -----------------------------------------------------------------------


def _apply_market(state: State, event: MarketConfig, check_answer=None) -> Verdict | None:
    existing = state.markets.get(event.market)
    if existing is not None:
        old = existing.config
        for field in ("settle", "tick_size", "lot_size"):
            if getattr(old, field) != getattr(event, field):
                return _dead(r.IMMUTABLE_MARKET_FIELD, f"{event.market}: {field} cannot change once the market exists")
    fund = event.insurance_fund or event.settle
    fund_asset = state.fund_assets.get(fund)
    if fund_asset is not None and fund_asset != event.settle:
        return _dead(r.FUND_DOMAIN_OTHER_ASSET, f"{event.market} settles in {event.settle}; insurance fund {fund!r} "
                                                f"holds {fund_asset}")  # fmt: skip
    if existing is not None and existing.fund != fund:
        if state.by_market.get(event.market):
            return _dead(r.FUND_DOMAIN_CHANGE_WITH_POSITIONS, f"{event.market} has {len(state.by_market[event.market])} "
                                                              f"open positions in insurance fund {existing.fund!r}; "
                                                              f"it moves to {fund!r} only with none")  # fmt: skip
        if check_answer is not None:  # none here; perhaps in another partition
            verdict = check_answer(state, event)
            if verdict is not None:
                return verdict
    if existing is None:
        state.markets[event.market] = MarketState(event)
    else:
        state.markets[event.market] = MarketState(event, existing.mark, existing.mark_ts)
        state.auto_moved.update(state.auto_margin.get(event.market, ()))  # new brackets: new liquidation prices
    if fund_asset is None:
        state.fund_assets[fund] = event.settle
        state.dirty_balances = True  # the store keeps the domains with the books
    state.dirty_markets.add(event.market)
    return None


def effective_leverage(state: State, key: PositionKey) -> int:
    account, market, _ = key
    configured = state.leverage.get(key)
    if configured is None:
        configured = state.leverage.get((account, market, BOTH), DEFAULT_LEVERAGE)
    return configured


def _apply_leverage(state: State, event: SetLeverage) -> Verdict | None:
    market = state.markets.get(event.market)
    if market is None:
        return _dead(r.UNKNOWN_MARKET, f"market {event.market!r} is not configured")
    brackets = market.config.brackets
    sides = (BOTH, LONG, SHORT) if event.position_side == BOTH else (event.position_side,)
    allowed = brackets[0].max_leverage
    for side in sides:
        position = state.positions.get((event.account, event.market, side))
        if position is not None:
            price = market.mark or mm.entry_price_units(position.size, position.cost)
            allowed = min(allowed, mm.max_leverage_at(brackets, abs(position.size) * price))
    if event.leverage > allowed:
        return _reject(r.LEVERAGE_EXCEEDS_BRACKET, f"{event.leverage}x exceeds the bracket maximum {allowed}x")
    key = (event.account, event.market, event.position_side)
    state.leverage[key] = event.leverage
    state.dirty_leverage.add(key)
    for side in sides:  # positions recompute their cached leverage on the next fill
        position = state.positions.get((event.account, event.market, side))
        if position is not None:
            position.leverage_cache = 0
    return None


def _apply_trigger(state: State, event: PositionTrigger) -> Verdict | None:
    """A stop-loss or take-profit on an open position, by the mark (docs/decisions.md, "Position triggers")."""
    market = state.markets.get(event.market)
    if market is None:
        return _dead(r.UNKNOWN_MARKET, f"market {event.market!r} is not configured")
    config = market.config
    if event.trigger_price % config.tick_size:
        return _dead(r.PRICE_NOT_ON_TICK, f"trigger_price {dec(event.trigger_price)} is not a multiple of the tick "
                                          f"{dec(config.tick_size)}")  # fmt: skip
    if event.qty % config.lot_size:
        return _dead(r.QTY_NOT_ON_LOT, f"qty {dec(event.qty)} is not a multiple of the lot {dec(config.lot_size)}")
    trigger_key = (event.account, event.id)
    if trigger_key in state.triggers:  # the same id again after the duplicate window, while the first one lives
        return _dead(r.DUPLICATE_ID, f"trigger {event.id!r} of {event.account} is live")
    key = (event.account, config.market, _CANONICAL_SIDE[event.position_side])
    position = state.positions.get(key)
    if position is None or not position.size:
        return _reject(r.NO_OPEN_POSITION, f"no open position {'/'.join(key)}")
    if not market.mark:
        return _reject(r.NO_MARK_PRICE, f"{config.market} has no mark yet: a trigger is judged against it")
    if event.qty > abs(position.size):
        return _reject(r.TRIGGER_EXCEEDS_POSITION, f"qty {dec(event.qty)} is more than the position's "
                                                   f"{dec(abs(position.size))}")  # fmt: skip
    ids = state.position_triggers.get(key, [])
    if len(ids) >= MAX_TRIGGERS_PER_POSITION:
        return _reject(r.TOO_MANY_TRIGGERS, f"position {'/'.join(key)} holds {len(ids)} triggers (at most "
                                            f"{MAX_TRIGGERS_PER_POSITION})")  # fmt: skip
    long = position.size > 0
    below = (event.kind == STOP_LOSS) == long
    if event.trigger_price >= market.mark if below else event.trigger_price <= market.mark:
        return _reject(r.TRIGGER_WOULD_FIRE, f"a {event.kind} of a {'long' if long else 'short'} must be "
                                             f"{'below' if below else 'above'} the mark {dec(market.mark)}, got "
                                             f"{dec(event.trigger_price)}")  # fmt: skip
    state.triggers[trigger_key] = Trigger(config.market, key[2], event.kind, event.trigger_price, event.qty, below,
                                          state.offset, event.ts)  # fmt: skip
    state.position_triggers.setdefault(key, []).append(event.id)
    state.dirty_triggers.add(trigger_key)
    return None


def _apply_trigger_cancel(state: State, event: PositionTriggerCancel) -> Verdict | None:
    trigger_key = (event.account, event.trigger_id)
    trigger = state.triggers.get(trigger_key)
    if trigger is None:
        return _reject(r.UNKNOWN_TRIGGER, f"{event.account} has no live trigger {event.trigger_id!r} (never set, "
                                          f"cancelled, or its position closed)")  # fmt: skip
    key = (event.account, trigger.market, trigger.position_side)
    ids = state.position_triggers[key]
    ids.remove(event.trigger_id)
    if not ids:
        del state.position_triggers[key]
    state.drop_trigger(trigger_key)
    return None


def _apply_auto_margin(state: State, event: AutoMargin) -> Verdict | None:
    if event.market not in state.markets:
        return _dead(r.UNKNOWN_MARKET, f"market {event.market!r} is not configured")
    key = (event.account, state.markets[event.market].config.market, _CANONICAL_SIDE[event.position_side])
    enabled = state.auto_margin.setdefault(key[1], set())
    if event.enabled:
        enabled.add(key)
    else:
        enabled.discard(key)
    state.dirty_auto_margin.add(key)
    position = state.positions.get(key)
    if position is not None:
        position.auto = event.enabled
    state.auto_moved.add(key)  # keyed in (or dropped from) the index at the next mark
    return None


# -- wallet ------------------------------------------------------------------------------


def _apply_deposit(state: State, event: Deposit) -> Verdict | None:
    existing = state.wallets.get((event.account, event.asset))
    if (0 if existing is None else existing.balance) + event.amount > MAX_WALLET_UNITS:
        return _dead(r.BALANCE_OVERFLOW, f"wallet {event.account}/{event.asset} would exceed {dec(MAX_WALLET_UNITS)}")
    wallet = existing or state.wallet(event.account, event.asset)
    wallet.balance += event.amount
    state.net_deposits[event.asset] = state.net_deposits.get(event.asset, 0) + event.amount
    state.touch_wallet(event.account, event.asset, wallet)
    state.dirty_balances = True
    return None


def _apply_withdrawal(state: State, event: Withdrawal) -> Verdict | None:
    wallet = state.wallets.get((event.account, event.asset))
    balance = 0 if wallet is None else wallet.balance
    if event.amount > balance:
        return _reject(r.INSUFFICIENT_BALANCE, f"withdrawal of {dec(event.amount)} exceeds the free balance {dec(balance)}")
    wallet.balance -= event.amount
    state.net_deposits[event.asset] = state.net_deposits.get(event.asset, 0) - event.amount  # e.g. rebates only
    state.touch_wallet(event.account, event.asset, wallet)
    state.dirty_balances = True
    return None


def _apply_margin_transfer(state: State, event: MarginTransfer) -> Verdict | None:
    market = state.markets.get(event.market)
    if market is None:
        return _dead(r.UNKNOWN_MARKET, f"market {event.market!r} is not configured")
    key = (event.account, event.market, event.position_side)
    position = state.positions.get(key)
    if position is None:
        return _reject(r.NO_OPEN_POSITION, f"no open position {key}")
    settle = market.config.settle
    wallet = state.wallet(event.account, settle)
    amount = event.amount
    if amount > 0:
        if amount > wallet.balance:
            return _reject(r.INSUFFICIENT_BALANCE, f"transfer of {dec(amount)} exceeds the free balance {dec(wallet.balance)}")
        if position.margin + amount > _MAX_BALANCE:
            return _beyond(key, f"margin {dec(position.margin + amount)} would exceed {dec(MAX_POSITION_BALANCE_UNITS)}")
    else:
        if market.mark == 0:
            return _reject(r.NO_MARK_PRICE, f"{event.market} has no mark price yet")
        removable = mm.max_removable_margin(
            market.config.brackets,
            position.size,
            position.cost,
            position.margin,
            market.mark,
            effective_leverage(state, key),
        )
        if -amount > removable:
            return _reject(r.MARGIN_TRANSFER_EXCEEDS_MAX, f"removing {dec(-amount)} exceeds the maximum removable {dec(removable)}")
    wallet.balance -= amount
    position.margin += amount
    state.touch_wallet(event.account, settle, wallet)
    state.touch_position(key, position)
    return None


# -- fills -------------------------------------------------------------------------------


def _check_mode(state: State, key: PositionKey) -> Verdict | None:
    account, market, side = key
    others = (LONG, SHORT) if side == BOTH else (BOTH,)
    for other in others:
        if (account, market, other) in state.positions:
            return _dead(r.POSITION_MODE_CONFLICT, f"{account} holds a {other} position in {market}; cannot trade {side}")
    return None


def _trade_verdict(state: State, event) -> Verdict | None:
    """Why a trade (fill, liquidation or ADL fill) cannot apply to its market, or None."""
    market = state.markets.get(event.market)
    if market is None:
        return _dead(r.UNKNOWN_MARKET, f"market {event.market!r} is not configured")
    config = market.config
    if event.price % config.tick_size:
        return _dead(r.PRICE_NOT_ON_TICK, f"price {dec(event.price)} is not a multiple of the tick {dec(config.tick_size)}")
    if event.qty % config.lot_size:
        return _dead(r.QTY_NOT_ON_LOT, f"qty {dec(event.qty)} is not a multiple of the lot {dec(config.lot_size)}")
    return None


def _apply_fill(state: State, event: Fill) -> Verdict | None:
    market = state.markets.get(event.market)
    if market is None or event.price % market.config.tick_size or event.qty % market.config.lot_size:
        return _trade_verdict(state, event)  # the rare path: say why
    config = market.config
    # the market and side strings of the key are the canonical objects, so key
    # comparisons in every dict are identity checks (a measurable share of a fill)
    key = (event.account, config.market, _CANONICAL_SIDE[event.position_side])
    position = state.positions.get(key)
    if position is None:  # an existing position already passed the mode check
        conflict = _check_mode(state, key)
        if conflict is not None:
            return conflict
        size = 0
    else:
        size = position.size
    delta = event.qty if event.side == BUY else -event.qty
    if event.position_side != BOTH:
        # a hedge-mode leg keeps its sign: LONG >= 0, SHORT <= 0
        new_size = size + delta
        if (event.position_side == LONG and new_size < 0) or (event.position_side == SHORT and new_size > 0):
            return _dead(r.REDUCE_EXCEEDS_POSITION, f"{event.side} {dec(event.qty)} would cross the {event.position_side} leg")
    if abs(size + delta) > MAX_POSITION_QTY_UNITS:
        return _beyond(key, f"size {dec(size + delta)} would exceed {dec(MAX_POSITION_QTY_UNITS)}")

    settle = config.settle
    if size == 0 or (size > 0) == (delta > 0):
        return _open(state, key, position, settle, market, delta, event.price, event.fee)
    closing = min(event.qty, abs(size))
    if closing == event.qty:
        return _close(state, key, position, settle, closing, event.price, event.fee)
    # crossing zero: close all, reopen the rest; the fee is split by quantity
    fee_close = mul_div_floor(event.fee, closing, event.qty)
    rest = event.qty - closing
    # the reopened position must fit before anything is closed: its cost is rest x price, its margin and
    # shortfall at most its initial margin (<= the notional) and its fee either way
    notional = rest * event.price
    if notional > _MAX_COST or notional // SCALE + 1 + abs(event.fee - fee_close) > MAX_POSITION_BALANCE_UNITS:
        return _beyond(key, f"the position reopened at notional {dec(notional // SCALE)} could exceed its limits")
    _close(state, key, position, settle, closing, event.price, fee_close)  # a full close: nothing to check
    return _open(state, key, None, settle, market, rest if delta > 0 else -rest, event.price, event.fee - fee_close)


def _beyond(key: PositionKey, what: str) -> Verdict:
    """The dead letter of an event that would take a position past a bound of core/limits.py."""
    return _dead(r.BALANCE_OVERFLOW, f"position {'/'.join(key)}: {what} (core/limits.py)")


def _open(
    state: State, key: PositionKey, position: Position | None, settle: str, market: MarketState, delta: int,
    price: int, fee: int,
) -> Verdict | None:  # fmt: skip
    """Grow a position by ``delta`` at ``price``: initial margin and fee come from the wallet.

    Everything is computed first and checked against the position's bounds; only then applied.
    """
    if position is None:
        size = cost = margin = shortfall = 0
        leverage = effective_leverage(state, key)
        wallet = None
    else:
        size, cost, margin, shortfall = position.size, position.cost, position.margin, position.shortfall
        leverage = position.leverage_cache or effective_leverage(state, key)
        wallet = position.wallet
    if wallet is None:
        wallet = state.wallets.get((key[0], settle))
    size += delta
    cost += delta * price
    # margin.max_leverage_at and margin.initial_margin_units inlined: this is the hottest path
    bracket = market.config.brackets[bisect_right(market.floors_e16, abs(size) * price) - 1]
    capped = leverage if leverage <= bracket.max_leverage else bracket.max_leverage
    initial = -((-abs(delta) * price) // (SCALE * capped))  # notional / L, rounded up
    balance = 0 if wallet is None else wallet.balance
    charged = fee
    if fee < 0:  # rebate: fee income -> wallet
        balance -= fee
        charged = 0
    # the fee is taken first, then the initial margin; what the wallet cannot
    # cover is recorded as shortfall, and a fee it cannot cover comes from margin
    taken = min(balance, initial + charged)
    fee_from_wallet = min(charged, taken)
    to_margin = taken - fee_from_wallet
    fee_from_margin = charged - fee_from_wallet
    margin += to_margin - fee_from_margin
    if taken < initial + charged:
        shortfall += initial - to_margin + fee_from_margin
    if not (-_MAX_COST <= cost <= _MAX_COST and -_MAX_BALANCE <= margin <= _MAX_BALANCE and shortfall <= _MAX_BALANCE):
        return _beyond(key, f"cost {dec(cost // SCALE)} (at most {dec(MAX_POSITION_NOTIONAL_UNITS)}), margin "
                            f"{dec(margin)} or shortfall {dec(shortfall)} (at most {dec(MAX_POSITION_BALANCE_UNITS)})")
    if position is None:
        position = state.add_position(key)
    if wallet is None:
        wallet = state.wallet(key[0], settle)
    position.leverage_cache = leverage
    position.wallet = wallet
    if fee:
        fee_income = state.fee_income
        fee_income[settle] = fee_income.get(settle, 0) + fee
        state.dirty_balances = True
    wallet.balance = balance - taken
    position.size, position.cost, position.margin, position.shortfall = size, cost, margin, shortfall
    if not position.dirty:
        position.dirty = True
        state.dirty_positions.append(key)
    if position.auto:  # State.touch_position inlined
        state.auto_moved.add(key)
    if not wallet.dirty:
        wallet.dirty = True
        state.dirty_wallets.append((key[0], settle))
    if state.auto_parked:  # State.touch_wallet inlined
        state.unpark(key[0])
    return None


def _realized(size: int, cost: int, closing: int, price: int) -> tuple[int, int]:
    """(cost basis removed, realized PnL) of closing ``closing`` (> 0) of a position of ``size`` at ``price``.

    The removed cost basis rounds up (signed), so realized PnL rounds down for
    both sides; the dust stays in the clearing balance.
    """
    if size > 0:
        cost_removed = -((-cost * closing) // size)  # ceil(cost * closing / |size|)
        return cost_removed, (closing * price - cost_removed) // SCALE  # floor
    cost_removed = -((cost * closing) // size)  # ceil(cost * closing / |size|), size < 0
    return cost_removed, (-closing * price - cost_removed) // SCALE  # floor


def _realize(state: State, key: PositionKey, position: Position, closing: int, realized: tuple[int, int]) -> int:
    """Close ``closing`` of the position's size against clearing, ``realized`` (of _realized) into margin; the PnL."""
    cost_removed, pnl = realized
    position.size += -closing if position.size > 0 else closing
    position.cost -= cost_removed
    position.margin += pnl
    clearing = state.clearing
    market = key[1]
    clearing[market] = clearing.get(market, 0) - pnl
    return pnl


def _kept_margin_verdict(key: PositionKey, position: Position, closing: int, pnl: int, fee: int) -> Verdict | None:
    """Why closing ``closing`` with PnL ``pnl`` and ``fee`` would leave more margin than a position keeps, or None.

    A full close keeps nothing (the margin goes to the wallet or the fund); a
    partial one keeps the margin after PnL and fee less the closed share released.
    """
    before = abs(position.size)
    if closing == before:
        return None
    margin = position.margin + pnl - fee
    if margin > 0:
        margin -= margin * closing // before
    if -_MAX_BALANCE <= margin <= _MAX_BALANCE:
        return None
    return _beyond(key, f"margin {dec(margin)} would exceed {dec(MAX_POSITION_BALANCE_UNITS)}")


def _close(state: State, key: PositionKey, position: Position, settle: str, closing: int, price: int,
           fee: int) -> Verdict | None:  # fmt: skip
    """Reduce a position: PnL into margin, fee from margin, then release the closed share to the wallet."""
    realized = _realized(position.size, position.cost, closing, price)
    verdict = _kept_margin_verdict(key, position, closing, realized[1], fee)
    if verdict is not None:
        return verdict
    before = abs(position.size)
    _realize(state, key, position, closing, realized)
    position.margin -= fee
    state.fee_income[settle] = state.fee_income.get(settle, 0) + fee
    state.dirty_balances = True
    if position.size == 0:
        _settle_flat(state, key, position, settle)
        return None
    state.touch_position(key, position)
    if position.margin > 0:
        release = mul_div_floor(position.margin, closing, before)
        position.margin -= release
        wallet = position.wallet
        if wallet is None:
            wallet = position.wallet = state.wallet(key[0], settle)
        wallet.balance += release
        state.touch_wallet(key[0], settle, wallet)
    return None


def _settle_flat(state: State, key: PositionKey, position: Position, settle: str) -> None:
    """A flat position hands its margin back; a negative margin is a bankruptcy loss of the market's fund."""
    check(position.cost == 0, "a flat position has no cost basis left")
    if position.margin >= 0:
        wallet = state.wallet(key[0], settle)
        wallet.balance += position.margin
        state.touch_wallet(key[0], settle, wallet)
    else:
        fund = state.markets[key[1]].fund
        state.insurance[fund] = state.insurance.get(fund, 0) + position.margin
    position.margin = 0
    state.remove_position(key)


def _apply_answer(state: State, event: LiquidationFill, check_answer=None) -> Verdict | None:
    """A liquidation fill, or an ADL fill (the counterparty's side of an ADL trade), answering a command.

    The reducer's own reasons come first, so that they never depend on who
    holds the episode book; then ``check_answer`` (apply_event).
    """
    verdict = _trade_verdict(state, event)
    if verdict is not None:
        return verdict
    market = state.markets[event.market]
    config = market.config
    key = (event.account, config.market, _CANONICAL_SIDE[event.position_side])
    position = state.positions.get(key)
    adl = type(event) is AdlFill
    if position is None or event.qty > abs(position.size):
        held = 0 if position is None else abs(position.size)
        if adl:
            return _dead(r.ADL_EXCEEDS_POSITION, f"ADL of {dec(event.qty)} exceeds the open size {dec(held)}")
        return _dead(r.LIQUIDATION_EXCEEDS_POSITION, f"liquidation of {dec(event.qty)} exceeds the open size {dec(held)}")
    realized = _realized(position.size, position.cost, event.qty, event.price)
    fee = 0
    if adl:  # a takeover's fill only ever shrinks the margin: the trader loses its share, the fund the rest
        verdict = _kept_margin_verdict(key, position, event.qty, realized[1], 0)
        if verdict is not None:
            return verdict
    elif event.order == MARKET:  # capped: the trader never loses more than the margin
        fee = min(max(0, position.margin + realized[1]), clearance_fee(event.qty, event.price, config.liquidation_fee_rate))
        kept = position.margin + realized[1] - fee
        if event.qty < abs(position.size) and not -_MAX_BALANCE <= kept <= _MAX_BALANCE:
            return _beyond(key, f"margin {dec(kept)} would exceed {dec(MAX_POSITION_BALANCE_UNITS)}")
    if check_answer is not None:
        verdict = check_answer(state, event)
        if verdict is not None:
            return verdict
    settle = config.settle
    if adl:  # closes like a reducing fill without a fee
        _close(state, key, position, settle, event.qty, event.price, 0)
        return None
    if event.order == MARKET:
        _market_liquidation(state, key, position, market, event.qty, realized, fee)
        return None
    # The trader closes at the bankruptcy price: they lose exactly this share of
    # the margin (rounded up); the difference to the execution price is the fund's.
    lost_share = mul_div_ceil(position.margin, event.qty, abs(position.size))
    to_fund = _realize(state, key, position, event.qty, realized) + lost_share
    position.margin -= to_fund
    state.insurance[market.fund] = state.insurance.get(market.fund, 0) + to_fund
    state.dirty_balances = True
    if position.size == 0:
        _settle_flat(state, key, position, settle)
    else:
        state.touch_position(key, position)
    return None


def _market_liquidation(state: State, key: PositionKey, position: Position, market: MarketState, qty: int,
                        realized: tuple[int, int], fee: int) -> None:  # fmt: skip
    """A fill of a liquidation's market order: PnL at the execution price, then the clearance fee to the fund.

    The fee (``_apply_answer``) is ``liquidation_fee_rate`` on the notional at
    the execution price, capped by what the margin holds after the PnL. A
    partial close releases nothing: the margin stays with what is left (that
    is what restores it); a full close hands back what remains, or the fund
    covers a loss beyond the margin (docs/decisions.md, "Liquidation policies").
    """
    _realize(state, key, position, qty, realized)
    if fee:
        position.margin -= fee
        fund = market.fund
        state.insurance[fund] = state.insurance.get(fund, 0) + fee
        state.clearance_fees[fund] = state.clearance_fees.get(fund, 0) + fee
        state.dirty_balances = True
    if position.size == 0:
        _settle_flat(state, key, position, market.config.settle)
        state.dirty_balances = True
    else:
        state.touch_position(key, position)


# -- market data -------------------------------------------------------------------------


def _apply_mark(state: State, event: MarkPrice) -> Verdict | None:
    market = state.markets.get(event.market)
    if market is None:
        return _dead(r.UNKNOWN_MARKET, f"market {event.market!r} is not configured")
    if event.ts < market.mark_ts:
        return _reject(r.STALE_MARK, f"mark at ts {event.ts} is older than the last mark at ts {market.mark_ts}")
    market.mark = event.price
    market.mark_ts = event.ts
    state.dirty_markets.add(event.market)
    if state.top_ups:
        state.top_ups = []
    enabled = state.auto_margin.get(event.market)
    if enabled:
        _auto_add_margin(state, market, enabled)
    return None


def _auto_add_margin(state: State, market: MarketState, enabled: set[PositionKey]) -> None:
    """Bybit's auto-add margin, at a mark: an enabled position that is liquidatable at it first gets its initial
    margin (|cost| / leverage, rounded up) from the free wallet, or all that is free, never beyond 1x (margin <=
    the entry notional). One top-up per mark; the projection then judges it at the same mark. In key order: an
    account's positions share its wallet.

    The enabled positions are found by the price index the projection uses (core.index: O(log n + k) per mark,
    never a miss); each candidate is tested exactly."""
    index = state.auto_index
    if index is None:  # the first mark since a start or restore: derive it (every enabled position)
        index = state.auto_index = PriceIndex()
        state.auto_moved.clear()
        state.auto_parked.clear()
        for keys in state.auto_margin.values():
            for key in keys:
                position = state.positions.get(key)
                if position is not None:
                    position.auto = True
                    state.auto_moved.add(key)
    moved = state.auto_moved
    if moved:
        for key in moved:  # in any order: what is taken below depends only on the entries' prices and keys
            if key in state.auto_margin.get(key[1], ()):
                index.reindex(state, key, False)
            else:
                index.drop(key)
        moved.clear()
    config = market.config
    brackets, mark = config.brackets, market.mark
    market_index = index.market(state, config.market)
    due = []
    for long in (True, False):
        taken = index.take(market_index, mark, False, long)
        missed = []
        for entry in taken:
            position = state.positions[entry[1]]
            if mm.is_liquidatable(brackets, position.size, position.cost, position.margin, mark):
                due.append(entry[1])
            else:
                missed.append(entry)
        index.put_back(market_index, False, long, missed)
    index.compact(market_index, len(enabled))
    settle = config.settle
    for key in sorted(due):
        position = state.positions[key]
        wallet = state.wallets.get((key[0], settle))
        notional = abs(position.cost) // SCALE  # at entry, amount units
        initial = -(-abs(position.cost) // (SCALE * effective_leverage(state, key)))
        amount = min(0 if wallet is None else wallet.balance, initial, notional - position.margin,
                     _MAX_BALANCE - position.margin)  # fmt: skip
        if amount > 0:
            wallet.balance -= amount
            position.margin += amount
            state.touch_wallet(key[0], settle, wallet)
            state.touch_position(key, position)
            state.auto_margin_added[settle] = state.auto_margin_added.get(settle, 0) + amount
            state.dirty_balances = True
            state.top_ups.append((key, amount))
            index.reindex(state, key, False)  # its entry was taken: keyed again
            moved.discard(key)
        else:  # nothing to add: parked (no entry) until the position or its wallet changes (State.unpark)
            state.auto_parked.setdefault(key[0], set()).add(key)


def _apply_funding(state: State, event: Funding) -> Verdict | None:
    market = state.markets.get(event.market)
    if market is None:
        return _dead(r.UNKNOWN_MARKET, f"market {event.market!r} is not configured")
    name = event.market
    # each payment is an independent transfer with clearing, so the order of
    # positions does not change the result; every margin must fit before any moves
    payments = []
    for key, position in state.by_market.get(name, {}).items():
        payment = mm.funding_payment_units(position.size, event.mark_price, event.rate)
        if payment:
            if not -_MAX_BALANCE <= position.margin - payment <= _MAX_BALANCE:
                return _beyond(key, f"margin {dec(position.margin - payment)} after funding would exceed "
                                    f"{dec(MAX_POSITION_BALANCE_UNITS)}; the funding applies to no position")  # fmt: skip
            payments.append((key, position, payment))
    total = 0
    for key, position, payment in payments:
        position.margin -= payment
        total += payment
        state.touch_position(key, position)
    state.clearing[name] = state.clearing.get(name, 0) + total
    state.dirty_balances = True
    return None


# event type -> (handler, is it an account's event (duplicate ids are per account), does check_answer judge it)
_HANDLERS = {
    MarketConfig: (_apply_market, False, True),
    Deposit: (_apply_deposit, True, False),
    Withdrawal: (_apply_withdrawal, True, False),
    SetLeverage: (_apply_leverage, True, False),
    MarginTransfer: (_apply_margin_transfer, True, False),
    AutoMargin: (_apply_auto_margin, True, False),
    PositionTrigger: (_apply_trigger, True, False),
    PositionTriggerCancel: (_apply_trigger_cancel, True, False),
    Fill: (_apply_fill, True, False),
    MarkPrice: (_apply_mark, False, False),
    Funding: (_apply_funding, False, False),
    LiquidationFill: (_apply_answer, True, True),
    AdlFill: (_apply_answer, True, True),
}
