"""Read models of the reduced state for people and tools (DESIGN.md §8.2).

Numbers leave as decimal strings, rounded the conservative way: a long's
liquidation and bankruptcy prices up to the tick, a short's down; maintenance
margin up; PnL down. The trigger itself is always the exact comparison.
"""

from ringfence.core import margin as mm
from ringfence.core.fixed import decimals_of, format_decimal, format_units
from ringfence.core.reducer import effective_leverage
from ringfence.core.state import PositionKey, State


def _price(fraction, tick: int, long: bool) -> str | None:
    if fraction is None or fraction[0] <= 0:
        return None
    return format_units(mm.price_to_tick(fraction[:2], tick, round_up=long), decimals_of(tick))


def position_view(state: State, key: PositionKey) -> dict:
    account, market_name, side = key
    position = state.positions[key]
    market = state.markets[market_name]
    config = market.config
    brackets = config.brackets
    size, cost, margin, mark = position.size, position.cost, position.margin, market.mark
    long = size > 0
    tick, lot = config.tick_size, config.lot_size
    view = {
        "account": account,
        "market": market_name,
        "position_side": side,
        "size": format_units(size, decimals_of(lot)),
        "entry_price": format_decimal(mm.entry_price_units(size, cost)),
        "isolated_margin": format_decimal(margin),
        "leverage": effective_leverage(state, key),
        "mark_price": None,
        "unrealized_pnl": None,
        "margin_balance": None,
        "maintenance_margin": None,
        "margin_ratio": None,
        "liquidation_price": _price(mm.liquidation_price_fraction(brackets, size, cost, margin), tick, long),
        "bankruptcy_price": _price(mm.bankruptcy_price_fraction(size, cost, margin), tick, long),
        "status": "no_mark",
    }
    if mark:
        pnl = mm.unrealized_pnl_units(size, cost, mark)
        ratio = mm.margin_ratio_ceil(brackets, size, cost, margin, mark)
        view.update(
            mark_price=format_units(mark, decimals_of(tick)),
            unrealized_pnl=format_decimal(pnl),
            margin_balance=format_decimal(margin + pnl),
            maintenance_margin=format_decimal(mm.maintenance_margin_units(brackets, size, mark)),
            margin_ratio=None if ratio is None else format_units(ratio),
            status="liquidatable" if mm.is_liquidatable(brackets, size, cost, margin, mark) else "open",
        )
    if position.shortfall:
        view["margin_shortfall"] = format_decimal(position.shortfall)
    return view


def positions_view(state: State, account: str | None = None, market: str | None = None) -> list[dict]:
    keys = sorted(
        key
        for key in state.positions
        if (account is None or key[0] == account) and (market is None or key[1] == market)
    )
    return [position_view(state, key) for key in keys]


def wallets_view(state: State) -> list[dict]:
    return [
        {"account": account, "asset": asset, "balance": format_decimal(wallet.balance)}
        for (account, asset), wallet in sorted(state.wallets.items())
        if wallet.balance
    ]


def books_view(state: State) -> list[dict]:
    rows = []
    for name, book in (
        ("insurance_fund", state.insurance),
        ("fee_income", state.fee_income),
        ("clearing", state.clearing),
        ("net_deposits", state.net_deposits),
    ):
        rows.extend({"book": name, "key": key, "balance": format_decimal(value)} for key, value in sorted(book.items()))
    return rows
