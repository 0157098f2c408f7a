"""Read models of the reduced state for people and tools (DESIGN.md §8.2).

Numbers leave as decimal strings, rounded the conservative way: a long's
liquidation and bankruptcy prices up to the tick, a short's down; maintenance
margin up; PnL down. The trigger itself is always the exact comparison.
"""

from ringfence.core import margin as mm
from ringfence.core.fixed import decimals_of, format_decimal, format_units
from ringfence.core.reducer import effective_leverage
from ringfence.core.state import PositionKey, State
from ringfence.projections.adl import AdlRankings
from ringfence.projections.episodes import other_side


def _price(fraction, tick: int, long: bool) -> str | None:
    if fraction is None or fraction[0] <= 0:
        return None
    return format_units(mm.price_to_tick(fraction[:2], tick, round_up=long), decimals_of(tick))


def margin_figures(config, size: int, cost: int, margin: int, mark: int) -> dict:
    """The display figures of one isolated position from its raw numbers (mark 0: no mark yet)."""
    brackets, tick, long = config.brackets, config.tick_size, size > 0
    figures = {
        "size": format_units(size, decimals_of(config.lot_size)),
        "entry_price": format_decimal(mm.entry_price_units(size, cost)),
        "isolated_margin": format_decimal(margin),
        "mark_price": None,
        "unrealized_pnl": None,
        "margin_balance": None,
        "maintenance_margin": None,
        "margin_ratio": None,
        "bracket": None,
        "liquidation_price": _price(mm.liquidation_price_fraction(brackets, size, cost, margin), tick, long),
        "bankruptcy_price": _price(mm.bankruptcy_price_fraction(size, cost, margin), tick, long),
        "status": "no_mark",
    }
    if mark:
        pnl = mm.unrealized_pnl_units(size, cost, mark)
        ratio = mm.margin_ratio_ceil(brackets, size, cost, margin, mark)
        figures.update(
            mark_price=format_units(mark, decimals_of(tick)),
            unrealized_pnl=format_decimal(pnl),
            margin_balance=format_decimal(margin + pnl),
            maintenance_margin=format_decimal(mm.maintenance_margin_units(brackets, size, mark)),
            margin_ratio=None if ratio is None else format_units(ratio),
            bracket=mm.bracket_index(brackets, abs(size) * mark) + 1,
            status="liquidatable" if mm.is_liquidatable(brackets, size, cost, margin, mark) else "open",
        )
    return figures


def exact(value: int, places: int) -> str:
    """``value`` units of 10**-places as an exact decimal string, every place shown."""
    whole, fraction = divmod(abs(value), 10**places)
    return f"{'-' if value < 0 else ''}{whole}.{fraction:0{places}d}"


def trigger_arithmetic(config, size: int, cost: int, margin: int, mark: int) -> dict:
    """The exact liquidation test at ``mark``, to the unit: B <= MM with the bracket that sets MM."""
    notional = abs(size) * mark  # 1e-16
    index = mm.bracket_index(config.brackets, notional)
    bracket = config.brackets[index]
    balance = margin * mm.S + size * mark - cost  # 1e-16
    maintenance = mm.maintenance_margin_e24(config.brackets, notional)  # 1e-24
    return {
        "mark_price": format_decimal(mark),
        "notional": exact(notional, 16),
        "bracket": index + 1,
        "mmr": format_decimal(bracket.mmr),
        "maint_amount": format_decimal(bracket.maint_amount),
        "margin_balance_B": exact(balance, 16),  # M + q * mark - C
        "maintenance_margin_MM": exact(maintenance, 24),  # N * mmr - maint_amount
        "liquidatable": balance * mm.S <= maintenance,  # B <= MM, exactly
    }


def position_view(state: State, key: PositionKey, adl_quantile: int | None = None) -> dict:
    """One position's figures; ``adl_quantile`` (AdlRankings.quantile, None without a mark) is shown as given."""
    account, market_name, side = key
    position = state.positions[key]
    market = state.markets[market_name]
    view = {"account": account, "market": market_name, "position_side": side}
    for name, value in margin_figures(market.config, position.size, position.cost, position.margin, market.mark).items():
        if name != "bracket":  # positions --json keeps the DESIGN.md §8.2 fields, leverage after the margin
            view[name] = value
        if name == "isolated_margin":
            view["leverage"] = effective_leverage(state, key)
    if position.shortfall:
        view["margin_shortfall"] = format_decimal(position.shortfall)
    view["insurance_fund"] = market.fund  # the domain that takes its liquidation's gain or loss
    view["adl_quantile"] = adl_quantile
    return view


def positions_view(state: State, account: str | None = None, market: str | None = None) -> list[dict]:
    keys = sorted(
        key
        for key in state.positions
        if (account is None or key[0] == account) and (market is None or key[1] == market)
    )
    rankings = AdlRankings()  # each side ranked once for all its positions
    return [position_view(state, key, rankings.quantile(state, key)) for key in keys]


def adl_quantile_counts(state: State) -> list[int]:
    """How many open positions have each ADL quantile 0..4 (positions of markets without a mark are not counted)."""
    counts = [0] * 5
    rankings = AdlRankings()
    for key in state.positions:  # a count: the order does not matter
        quantile = rankings.quantile(state, key)
        if quantile is not None:
            counts[quantile] += 1
    return counts


def wallets_view(state: State) -> list[dict]:
    return [
        {"account": account, "asset": asset, "balance": format_decimal(wallet.balance)}
        for (account, asset), wallet in sorted(state.wallets.items())
        if wallet.balance
    ]


def books_view(state: State) -> list[dict]:
    """Every named balance outside the positions and wallets, with its asset (an insurance fund's key is its domain)."""
    rows = []
    for name, book, asset_of in (
        ("insurance_fund", state.insurance, state.fund_assets.__getitem__),
        ("fee_income", state.fee_income, str),
        ("clearing", state.clearing, lambda market: state.markets[market].config.settle),
        ("net_deposits", state.net_deposits, str),
        # not balances: the part of each insurance fund that came from clearance fees, and of the positions'
        # margins that auto-add margin moved from wallets
        ("clearance_fees_in_fund", state.clearance_fees, state.fund_assets.__getitem__),
        ("auto_margin_added", state.auto_margin_added, str),
    ):
        rows.extend({"book": name, "key": key, "asset": asset_of(key), "balance": format_decimal(value)}
                    for key, value in sorted(book.items()))  # fmt: skip
    return rows


def live_commands_view(state: State, book) -> list[dict]:
    """Live liquidation and ADL commands (projections.episodes), named as their command records name them.

    A ``liquidate`` row names the position it closes; an ``adl`` row the
    counterparty (``account``, ``side`` its closing side, ``open_qty`` its leg)
    and the bankrupt position (``bankrupt_open_qty`` that leg). The age is the
    market's last mark ``ts`` minus the ``ts`` the command was issued at: the
    clock its time-out runs on.
    """
    rows = []
    for command in book.live():
        market = state.markets[command.market]
        lot = decimals_of(market.config.lot_size)
        adl = bool(command.target_account)
        bankrupt_open = format_units(command.qty - command.filled, lot)
        rows.append({
            "type": "adl" if adl else "liquidate", "command_id": command.command_id,
            "account": command.target_account if adl else command.account, "market": command.market,
            "position_side": command.target_side if adl else command.position_side,
            "side": other_side(command.closing_side) if adl else command.closing_side,
            "qty": format_units(command.qty, lot),
            "open_qty": format_units(command.qty - command.target_filled, lot) if adl else bankrupt_open,
            "bankrupt_account": command.account if adl else None,
            "bankrupt_position_side": command.position_side if adl else None,
            "bankrupt_open_qty": bankrupt_open if adl else None,
            "issued_ts": command.issued_ts, "expires_ts": command.expires_ts,
            "age_ms": max(0, market.mark_ts - command.issued_ts),
        })  # fmt: skip
    return rows


def triggers_view(state: State, triggers, account: str | None = None) -> list[dict]:
    """Live position triggers (core.state.Trigger), in the order each position set them, with whether they fired
    (``triggers``: the liquidation projection's TriggerIndex). A fired trigger stays until its position closes or
    it is cancelled; it never fires twice."""
    rows = []
    for key in sorted(state.position_triggers):
        if account is not None and key[0] != account:
            continue
        market = state.markets[key[1]]
        for trigger_id in state.position_triggers[key]:
            trigger = state.triggers[(key[0], trigger_id)]
            rows.append({
                "account": key[0], "trigger_id": trigger_id, "market": key[1], "position_side": key[2],
                "kind": trigger.kind, "trigger_price": format_decimal(trigger.price),
                "qty": format_units(trigger.qty, decimals_of(market.config.lot_size)) if trigger.qty else "whole",
                "fires_when_mark": "<= trigger_price" if trigger.below else ">= trigger_price",
                "mark_price": format_decimal(market.mark),
                "status": "fired" if triggers.has_fired((key[0], trigger_id), trigger) else "waiting",
                "set_ts": trigger.ts,
            })  # fmt: skip
    return rows
