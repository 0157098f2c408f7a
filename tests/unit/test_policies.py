"""Liquidation policies and the clearance fee, scenario by scenario, with the numbers worked by hand (issue 15).

BTCUSDT brackets (Binance's table, ops.simulate): [0, 50k) mmr 0.4 % cum 0;
[50k, 600k) 0.5 % cum 50; [600k, 3M) 0.65 % cum 950; [3M, 12M) 1 % cum 11,450.
"""

import pytest

from ringfence.core import model as m
from ringfence.core.fixed import SCALE
from tests.helpers import Book, d

ETH_ONE_BRACKET = (m.Bracket(0, 10**9 * SCALE, 50, SCALE // 100, 0),)  # mmr 1 % (Hyperliquid: 1 / (2 x 50))
HYPERLIQUID = m.LiquidationPolicy(m.FRACTION, fraction=d("0.2"), min_notional=d("100000"), cooldown_ms=30_000,
                                  backstop_ratio=d("0.6666"))  # fmt: skip


def opened(policy, fee_rate="0", qty="20", deposit="1000000", **market):
    """alice long ``qty`` BTC at 60,000 at 10x (margin = notional / 10), bob the short at 2x."""
    book = Book(liquidations=True)
    book.market(policy=policy, fee_rate=fee_rate, **market)
    for trader in ("alice", "bob"):
        book.deposit(trader, deposit)
    book.leverage("alice", 10)
    book.leverage("bob", 2)
    book.fill("alice", "buy", qty, "60000")
    book.fill("bob", "sell", qty, "60000")
    book.mark("60000")
    return book


def only_live(book, account="alice"):
    (command,) = book.projection.book.live_for((account, "BTCUSDT", "BOTH"))
    return command


def test_bybit_tier_step_from_bracket_3_then_bracket_2_then_the_takeover_at_the_lowest():
    """Long 20 @ 60,000, margin 120,000, fee rate 0.05 %.

    Mark 54,300: N = 1,086,000 (bracket 3), B = 120,000 - 20 x 5,700 = 6,000,
    MM = 1,086,000 x 0.0065 - 950 = 6,109: liquidatable, not bankrupt.
    One step down is bracket 2 (cap 600,000): keep 11.049 (599,960.70 < 600,000),
    close 8.951. Fee = 8.951 x 54,300 x 0.0005 = 243.01965; B after = 5,756.98035
    > MM at 599,960.70 = 2,999.8035 - 50 = 2,949.8035: a market command for
    8.951, protected at the bankruptcy price (1,200,000 - 120,000) / 20 = 54,000.
    Filled at 54,300: PnL -51,020.7, fee 243.01965: margin 68,736.28035 stays
    with the 11.049 left (B = 5,756.98035, not liquidatable).
    Mark 54,000: B = 68,736.28035 - 66,294 = 2,442.28035 <= MM = 2,983.23 - 50:
    step to bracket 1 (cap 50,000): keep 0.925 (49,950), close 10.124, fee 273.348.
    Then at the lowest bracket the rest is taken over at the bankruptcy price.
    """
    book = opened(m.LiquidationPolicy(m.TIER_STEP), fee_rate="0.0005")
    book.mark("54300")
    (first,) = book.commands()
    assert (first.order, first.side, first.qty, first.bankruptcy_price) == ("market", "sell", "8.951", "54000.0")
    book.liquidation("alice", "8.951", "54300")
    position = book.position("alice")
    assert (position.size, position.margin) == (d("11.049"), d("68736.28035"))
    assert book.state.insurance["USDT"] == d("243.01965")
    assert book.wallet("alice") == d("880000")  # nothing released: the margin stays with what is left
    assert not book.projection.book.live_for(("alice", "BTCUSDT", "BOTH")) and book.conserved()

    book.mark("54000")
    second = book.commands()[-1]
    assert (second.order, second.qty) == ("market", "10.124")
    book.liquidation("alice", "10.124", "54000")
    position = book.position("alice")
    # PnL 10.124 x -6,000 = -60,744; fee 546,696 x 0.0005 = 273.348
    assert (position.size, position.margin) == (d("0.925"), d("68736.28035") - d("60744") - d("273.348"))
    assert book.state.insurance["USDT"] == d("243.01965") + d("273.348")

    # 0.925 left, margin 7,718.93235, cost 55,500: bankruptcy (55,500 - 7,718.93235) / 0.925 = 51,655.21; below
    # the liquidation price at 51,800 (B = 7,718.93235 - 0.925 x 8,200 = 133.93235 <= MM = 47,915 x 0.004 = 191.66)
    book.mark("51800")
    last = book.commands()[-1]
    assert (last.order, last.qty, last.bankruptcy_price) == ("takeover", "0.925", "51655.3")
    book.liquidation("alice", "0.925", "51800")
    assert book.position("alice") is None
    # the takeover: the fund gets the residual 133.93235 (PnL -7,585 against the margin 7,718.93235) besides the fees
    assert book.state.insurance["USDT"] == d("243.01965") + d("273.348") + d("133.93235")
    assert book.wallet("alice") == d("880000") and book.conserved()


def test_okx_steps_two_brackets_where_bybit_one_step_would_not_restore_the_position():
    """Long 60 @ 60,000, margin 360,000, fee rate 0.05 %; mark 54,300.

    N = 3,258,000 (bracket 4, mmr 1 %, cum 11,450), B = 360,000 - 342,000 = 18,000,
    MM = 32,580 - 11,450 = 21,130: liquidatable.
    One step (Bybit): keep 55.248 (2,999,966.40 < 3M), close 4.752, fee 129.0168:
    B after 17,870.9832 <= MM 2,999,966.40 x 0.0065 - 950 = 18,549.7816: the step
    would not restore it, so the whole position is taken over.
    Two steps (OKX): keep 11.049 in bracket 2, close 48.951, fee 1,329.01965:
    B after 16,670.98035 > 2,949.8035: a market command for 48.951.
    """
    bybit = opened(m.LiquidationPolicy(m.TIER_STEP, steps=1), fee_rate="0.0005", qty="60", deposit="2000000")
    bybit.mark("54300")
    (command,) = bybit.commands()
    assert (command.order, command.qty) == ("takeover", "60.000")

    okx = opened(m.LiquidationPolicy(m.TIER_STEP, steps=2), fee_rate="0.0005", qty="60", deposit="2000000")
    okx.mark("54300")
    (command,) = okx.commands()
    assert (command.order, command.qty, command.bankruptcy_price) == ("market", "48.951", "54000.0")
    okx.liquidation("alice", "48.951", "54300")
    position = okx.position("alice")
    # 360,000 - 48.951 x 5,700 (279,020.7) - 1,329.01965
    assert (position.size, position.margin) == (d("11.049"), d("79650.28035"))
    assert okx.state.insurance["USDT"] == d("1329.01965") and okx.conserved()
    assert not okx.projection.book.live_for(("alice", "BTCUSDT", "BOTH"))  # B 16,670.98 > MM 2,949.80


def eth_book(policy=HYPERLIQUID, fee_rate="0", **kw):
    book = Book(liquidations=True)
    book.market(name="ETHUSDT", tick="0.01", brackets=ETH_ONE_BRACKET, policy=policy, fee_rate=fee_rate, **kw)
    for trader in ("alice", "bob"):
        book.deposit(trader, "1000000")
        book.leverage(trader, 10, market="ETHUSDT")
    return book


def eth_open(book, qty, ts=0):
    book.fill("alice", "buy", qty, "3000", market="ETHUSDT")
    book.fill("bob", "sell", qty, "3000", market="ETHUSDT")
    book.mark("3000", market="ETHUSDT", ts=ts)


def eth_live(book):
    return book.projection.book.live_for(("alice", "ETHUSDT", "BOTH"))


def test_hyperliquid_a_20_percent_step_then_the_cooldown_then_20_percent_again():
    """Long 100 ETH @ 3,000 at 10x: margin 30,000, mmr 1 %, time-out 10 s.

    Mark 2,727 at ts 1,000: B = 30,000 - 27,300 = 2,700 <= MM 2,727, above the
    backstop 0.6666 x 2,727 = 1,817.82, N 272,700 > 100,000: a market command for
    20 % = 20, protected at the bankruptcy price 2,700. Filled at 2,727 (ts 2,000):
    PnL -5,460, margin 24,540 stays; 80 left: B = 24,540 - 21,840 = 2,700 > MM 2,181.6.
    Mark 2,715 at ts 5,000: B = 24,540 - 22,800 = 1,740 <= MM 2,172, above the backstop
    1,447.86; within the 30 s cooldown of the partial liquidation: the whole 80.
    Unanswered, it times out at ts 15,000 and is issued again for the whole (still
    cooling); at ts 32,000 the cooldown is over: 20 % of 80 = 16.
    """
    book = eth_book(timeout_ms=10_000)
    eth_open(book, "100")
    book.mark("2727", market="ETHUSDT", ts=1_000)
    (first,) = book.commands()
    assert (first.order, first.qty, first.bankruptcy_price) == ("market", "20.000", "2700.00")
    book.liquidation("alice", "20", "2727", market="ETHUSDT", ts=2_000)
    position = book.position("alice", market="ETHUSDT")
    assert (position.size, position.margin) == (d("80"), d("24540")) and not eth_live(book)
    book.mark("2715", market="ETHUSDT", ts=5_000)
    (whole,) = eth_live(book)
    assert (whole.order, whole.qty) == ("market", d("80"))
    book.mark("2715", market="ETHUSDT", ts=15_000)  # timed out: issued again, still in the cooldown
    (again,) = eth_live(book)
    assert again.command_id != whole.command_id and again.qty == d("80")
    book.mark("2715", market="ETHUSDT", ts=32_000)  # 2,000 + 30,000: the cooldown is over
    (fraction,) = eth_live(book)
    assert (fraction.order, fraction.qty) == ("market", d("16"))
    assert [c.reason for c in book.cancels()] == ["timed_out", "timed_out"] and book.conserved()


def test_hyperliquid_backstop_below_two_thirds_of_mm_hands_position_and_margin_to_the_fund():
    """Long 100 @ 3,000, margin 30,000; mark 2,712: B = 1,200 <= MM 2,712, and 1,200 < 0.6666 x 2,712 = 1,807.82.

    The backstop: the whole position taken over at the bankruptcy price 2,700.
    Filled at 2,712: the trader loses the whole margin, the fund gets PnL + margin
    = -28,800 + 30,000 = 1,200 (the MM is not returned).
    """
    book = eth_book()
    eth_open(book, "100")
    book.mark("2712", market="ETHUSDT")
    (command,) = book.commands()
    assert (command.order, command.qty, command.bankruptcy_price) == ("takeover", "100.000", "2700.00")
    book.liquidation("alice", "100", "2712", market="ETHUSDT")
    assert book.position("alice", market="ETHUSDT") is None
    assert book.state.insurance["USDT"] == d("1200") and book.wallet("alice") == d("970000") and book.conserved()


@pytest.mark.parametrize("price, kept, fee", [
    # PnL 30 x -240 = -7,200: margin 1,800; fee 82,800 x 1.25 % = 1,035; the trader keeps 765
    ("2760", "765", "1035"),
    # PnL 30 x -273 = -8,190: margin 810; the fee 81,810 x 1.25 % = 1,022.625 is capped at 810
    ("2727", "0", "810"),
])  # fmt: skip
def test_the_clearance_fee_to_the_unit_capped_by_the_margin(price, kept, fee):
    """Long 30 ETH @ 3,000 (N 90,000 <= min_notional 100,000), margin 9,000, fee rate 1.25 %.

    Mark 2,727: B = 810 <= MM 818.1, above the backstop 545.35: one market command
    for all 30. The trader keeps margin - loss - fee; the fund gets the fee.
    """
    book = eth_book(fee_rate="0.0125")
    eth_open(book, "30")
    book.mark("2727", market="ETHUSDT")
    (command,) = book.commands()
    assert (command.order, command.qty) == ("market", "30.000")
    book.liquidation("alice", "30", price, market="ETHUSDT")
    assert book.position("alice", market="ETHUSDT") is None
    assert book.wallet("alice") == d("1000000") - d("9000") + d(kept)
    assert book.state.insurance["USDT"] == d(fee) == book.state.clearance_fees["USDT"] and book.conserved()


def test_an_answer_must_settle_the_way_its_command_was_issued():
    book = eth_book()
    eth_open(book, "30")
    book.mark("2727", market="ETHUSDT")
    (command,) = book.commands()
    # a takeover's answer for a market command; a market fill below the protection price 2,700
    book.liquidation("alice", "30", "2727", market="ETHUSDT", order=m.TAKEOVER)
    book.liquidation("alice", "30", "2699.99", market="ETHUSDT")
    assert [v.reason for v in book.verdicts[-2:]] == ["answer_order_mismatch", "answer_beyond_protection"]
    assert book.position("alice", market="ETHUSDT").size == d("30")  # nothing applied
    book.liquidation("alice", "30", "2700", market="ETHUSDT")  # at the protection price: applied
    assert book.verdicts[-1] is None and book.position("alice", market="ETHUSDT") is None


def test_a_step_whose_position_goes_bankrupt_works_until_it_times_out_then_the_fund_stage_takes_it_over():
    """A market step for 20 of 100 (margin 30,000) is live at 2,727 (time-out 10 s); the mark falls to 2,690 (B = -1,000).

    Half the step fills at 2,700 (its protection price): PnL -3,000, margin 27,000,
    90 left with B = 27,000 - 90 x 310 = -900 < 0. The rest of the step stays live
    (what is live must not depend on when a position is judged); when it times out
    the position is bankrupt with nothing live, awaits the barrier, and the fund
    stage takes all 90 over at the bankruptcy price.
    """
    book = eth_book(timeout_ms=10_000)
    eth_open(book, "100")
    book.mark("2727", market="ETHUSDT")
    book.mark("2690", market="ETHUSDT")
    (step,) = eth_live(book)
    assert step.qty == d("20")
    book.liquidation("alice", "10", "2700", market="ETHUSDT")
    (rest,) = eth_live(book)
    assert rest.command_id == step.command_id and rest.open_qty() == d("10") and not book.cancels()
    book.mark("2690", market="ETHUSDT", ts=10_000)
    assert [c.reason for c in book.cancels()] == ["timed_out"]
    (taken,) = eth_live(book)
    assert (taken.order, taken.qty) == (m.TAKEOVER, d("90")) and book.conserved()


def test_the_notional_below_which_the_fee_alone_bankrupts_a_liquidated_position():
    """Binance's BTCUSDT table with its historical 1.25 % fee: MM - fee x N < 0 up to bracket 5 (mmr 2 %, cum 131,450):
    N* = 131,450 / (0.02 - 0.0125) = 17,526,666.67. With 0.5 %: bracket 3 (0.65 %, cum 950): 950 / 0.0015."""
    from ringfence.core.policy import fee_bankrupt_notional
    from tests.helpers import BTC_BRACKETS

    assert fee_bankrupt_notional(BTC_BRACKETS, d("0.0125")) == d("17526666.66666666")
    assert fee_bankrupt_notional(BTC_BRACKETS, d("0.005")) == d("633333.33333333")
    assert fee_bankrupt_notional(BTC_BRACKETS, 0) == 0 == fee_bankrupt_notional(BTC_BRACKETS, d("0.003"))
    assert fee_bankrupt_notional(BTC_BRACKETS, d("0.6")) is None  # above every mmr: every notional
    # a position of 1 BTC at 60,000 liquidated at B = MM = 240 pays a 1.25 % fee of 750: bankrupt by the fee
    assert d("60000") < fee_bankrupt_notional(BTC_BRACKETS, d("0.0125"))
