"""Margin formulas: published vectors, bracket edges and the rounding direction of each."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.core import margin as mm
from ringfence.core.model import Bracket
from tests.helpers import BTC_BRACKETS, d

TICK = d("0.01")


def single(mmr, cum):
    return (Bracket(0, d("1000000000"), 125, d(mmr), d(cum)),)


def exact_price(fraction):
    return Fraction(fraction[0], fraction[1]) / 10**8


def test_binance_eth_vector():
    # long ETH, isolated wallet 1,535,443.01, 3,683.979 @ 1,456.84, mmr 10 % / cum 135,365 => 1,114.78
    size = d("3683.979")
    lp = mm.liquidation_price_fraction(single("0.10", "135365"), size, size * d("1456.84"), d("1535443.01"))
    # Binance publishes the exact value (1114.78496...) rounded to the nearest cent; our display of a
    # long's liquidation price rounds up (conservative), so it shows one cent more.
    assert abs(exact_price(lp) - Fraction("1114.78")) < Fraction("0.005")
    assert mm.price_to_tick(lp[:2], TICK, round_up=True) == d("1114.79")


def test_binance_btc_vector():
    size = d("109.488")
    lp = mm.liquidation_price_fraction(single("0.025", "16300"), size, size * d("32481.98"), d("1535443.01"))
    assert abs(exact_price(lp) - Fraction("18778.73")) < Fraction("0.005")
    assert mm.price_to_tick(lp[:2], TICK, round_up=True) == d("18778.73")


def test_liquidation_price_uses_the_self_consistent_bracket():
    # long 10 BTC @ 60,000, 30,000 isolated: entry notional 600k sits in the 0.65 % bracket, but at the
    # liquidation price the notional (~572.8k) is in the 0.5 % / 50 bracket
    size, margin = d("10"), d("30000")
    lp = mm.liquidation_price_fraction(BTC_BRACKETS, size, size * d("60000"), margin)
    assert lp[2] == 1
    assert mm.price_to_tick(lp[:2], TICK, round_up=True) == d("57281.41")
    naive = mm.liquidation_price_fraction(single("0.0065", "950"), size, size * d("60000"), margin)
    assert abs(exact_price(naive) - Fraction("57277.30")) < Fraction("0.005")  # the wrong, naive answer
    short = mm.liquidation_price_fraction(BTC_BRACKETS, -size, -size * d("60000"), margin)
    assert short[2] == 2
    assert mm.price_to_tick(short[:2], TICK, round_up=False) == d("62687.53")


def test_bankruptcy_prices():
    size, margin = d("10"), d("30000")
    assert exact_price(mm.bankruptcy_price_fraction(size, size * d("60000"), margin)) == 57000
    assert exact_price(mm.bankruptcy_price_fraction(-size, -size * d("60000"), margin)) == 63000


def test_trigger_one_tick_either_side_of_liquidation_price():
    size, margin = d("10"), d("30000")
    cost = size * d("60000")
    tick = d("0.1")
    lp_up = mm.price_to_tick(mm.liquidation_price_fraction(BTC_BRACKETS, size, cost, margin)[:2], tick, True)
    assert not mm.is_liquidatable(BTC_BRACKETS, size, cost, margin, lp_up)
    assert mm.is_liquidatable(BTC_BRACKETS, size, cost, margin, lp_up - tick)
    lp_down = mm.price_to_tick(mm.liquidation_price_fraction(BTC_BRACKETS, -size, -cost, margin)[:2], tick, False)
    assert not mm.is_liquidatable(BTC_BRACKETS, -size, -cost, margin, lp_down)
    assert mm.is_liquidatable(BTC_BRACKETS, -size, -cost, margin, lp_down + tick)


def test_fully_collateralised_long_has_no_liquidation_price():
    size = d("1")
    assert mm.liquidation_price_fraction(BTC_BRACKETS, size, size * d("60000"), d("60000")) is None
    assert mm.liquidation_price_fraction(BTC_BRACKETS, 0, 0, 0) is None


@pytest.mark.parametrize(
    "notional, index", [("0", 0), ("49999.99", 0), ("50000", 1), ("599999.99", 1), ("600000", 2), ("1800000000", 11),
                        ("90000000000", 11)],
)  # fmt: skip
def test_bracket_edges(notional, index):
    assert mm.bracket_index(BTC_BRACKETS, d(notional) * 10**8) == index


def test_maintenance_margin_is_continuous_at_bracket_floors():
    for bracket in BTC_BRACKETS[1:]:
        at = mm.maintenance_margin_e24(BTC_BRACKETS, bracket.notional_floor * 10**8)
        below = mm.maintenance_margin_e24(BTC_BRACKETS, bracket.notional_floor * 10**8 - 1)
        assert 0 <= at - below < 10**24  # continuous: one 1e-16 step of notional changes MM by < 1 unit


def test_rounding_directions_favour_the_exchange():
    size, cost = d("0.003"), d("0.003") * d("33333.3")
    mark = d("33333.4")
    # requirement up, credit down
    assert mm.maintenance_margin_units(BTC_BRACKETS, size, mark) == -(-(size * mark * BTC_BRACKETS[0].mmr) // 10**16)
    assert mm.unrealized_pnl_units(-size, -cost, mark) == (-size * mark + cost) // 10**8
    assert mm.initial_margin_units(d("0.001"), d("33333.3"), 7) == -(-(d("0.001") * d("33333.3")) // (10**8 * 7))
    # funding: a payer pays rounded up, a receiver receives rounded down
    assert mm.funding_payment_units(1, 1, 1) == 1
    assert mm.funding_payment_units(-1, 1, 1) == 0
    assert mm.funding_payment_units(d("2"), d("50000"), d("0.0001")) == d("10")


def test_max_removable_margin_follows_binance_rule():
    size, margin, mark = d("1"), d("6000"), d("60000")
    cost = size * d("60000")
    # IM - MM = 6000 - 240 = 5760; B - N/L at 20x = 6000 - 3000 = 3000
    assert mm.max_removable_margin(BTC_BRACKETS, size, cost, margin, mark, 20) == d("3000")
    # at 2x, B - N/L is negative: nothing can be removed
    assert mm.max_removable_margin(BTC_BRACKETS, size, cost, margin, mark, 2) == 0


def test_margin_ratio():
    size, margin, mark = d("1"), d("6000"), d("60000")
    cost = size * d("60000")
    assert mm.margin_ratio_ceil(BTC_BRACKETS, size, cost, margin, mark) == d("0.04166667")  # (300 - 50) / 6000, rounded up
    assert mm.margin_ratio_ceil(BTC_BRACKETS, size, cost, margin, d("54000")) is None  # B = 0


@settings(max_examples=400, deadline=None)
@given(
    qty=st.integers(1, 10**14), entry=st.integers(1, 10**14), leverage=st.integers(1, 200),
    long=st.booleans(), tiered=st.booleans(),
)  # fmt: skip
def test_liquidation_price_is_the_root_of_b_equals_mm(qty, entry, leverage, long, tiered):
    """The solved price p is where B = MM: liquidatable at floor(p) but not one unit safer (and None means none)."""
    brackets = BTC_BRACKETS if tiered else single("0.004", "0")
    size = qty if long else -qty
    cost, margin = size * entry, qty * entry // (10**8 * leverage)
    solved = mm.liquidation_price_fraction(brackets, size, cost, margin)
    if solved is None:
        # no positive root: a long is safe at every mark, a short liquidatable at every mark
        assert mm.is_liquidatable(brackets, size, cost, margin, 1) is not long
        return
    numerator, denominator, index = solved
    price = Fraction(numerator, denominator)
    notional = qty * price
    assert brackets[index].notional_floor * 10**8 <= notional
    assert index == len(brackets) - 1 or notional < brackets[index].notional_cap * 10**8
    balance = margin * 10**8 + size * price - cost
    assert balance * 10**8 == notional * brackets[index].mmr - brackets[index].maint_amount * 10**16
    edge = numerator // denominator if long else -(-numerator // denominator)  # the trigger side of p
    if edge > 0:  # a root below one price unit has no mark on its trigger side
        assert mm.is_liquidatable(brackets, size, cost, margin, edge)
    safer = edge + 1 if long else edge - 1
    if safer > 0:
        assert not mm.is_liquidatable(brackets, size, cost, margin, safer)
