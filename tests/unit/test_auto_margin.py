"""Auto-add margin (Bybit / Bitget, isolated only), with the venues' numbers (issue 15; VENUE-RULES §5)."""

from ringfence.core import margin as mm
from ringfence.core import model as m
from ringfence.core.fixed import SCALE
from tests.helpers import Book, d

ONE_BRACKET = (m.Bracket(0, 10**9 * SCALE, 100, SCALE // 200, 0),)  # mmr 0.5 %, cum 0


def book_with(qty="5", price="8000", deposit="20000", leverage=10):
    book = Book(liquidations=True)
    book.market(brackets=ONE_BRACKET)
    book.deposit("alice", deposit)
    book.deposit("bob", "1000000")
    book.leverage("alice", leverage)
    book.leverage("bob", 2)
    book.fill("alice", "buy", qty, price)
    book.fill("bob", "sell", qty, price)
    book.mark(price)
    return book


def liquidation_price(book):
    position = book.position("alice")
    fraction = mm.liquidation_price_fraction(ONE_BRACKET, position.size, position.cost, position.margin)
    return mm.price_to_tick(fraction[:2], d("0.1"), round_up=True)


def test_bybit_example_one_top_up_of_the_initial_margin_moves_the_liquidation_price():
    """5 BTC @ 8,000 at 10x, mmr 0.5 %: IM 4,000. Liquidation price (Binance's formula, ours):
    (40,000 - 4,000) / (5 x 0.995) = 7,236.18 (Bybit's page shows 7,240 from its own approximation
    EP - (IM - MM) / N). At a mark below it the reducer first adds the IM, 4,000, from the wallet:
    (40,000 - 8,000) / 4.975 = 6,432.16 (Bybit: 6,440). The position is then not liquidatable: no command."""
    book = book_with()
    book.auto_margin("alice")
    assert liquidation_price(book) == d("7236.2")
    book.mark("7230")
    position = book.position("alice")
    assert position.margin == d("8000") and book.wallet("alice") == d("12000")
    assert liquidation_price(book) == d("6432.2")
    assert book.commands() == [] and book.state.auto_margin_added["USDT"] == d("4000") and book.conserved()
    assert book.state.top_ups == [(("alice", "BTCUSDT", "BOTH"), d("4000"))]


def test_bitget_example_adds_the_initial_margin():
    """0.1 BTC @ 27,249.5 at 10x: the top-up is the IM, 2,724.95 / 10 = 272.495."""
    book = book_with(qty="0.1", price="27249.5")
    book.auto_margin("alice")
    before = book.position("alice").margin
    book.mark(str(liquidation_price(book) / SCALE - 1))
    assert book.position("alice").margin - before == d("272.495")


def test_all_that_is_free_if_less_then_the_liquidation_if_still_liquidatable():
    """Free 1,000 after the 4,000 of IM: the mark 7,230 gets that 1,000 (B = 5,000 - 3,850 = 1,150 > MM 180.75:
    not liquidatable); at 7,000 nothing is free, B = 5,000 - 5,000 = 0 <= MM 175: liquidated."""
    book = book_with(deposit="5000")
    book.auto_margin("alice")
    book.mark("7230")
    assert book.position("alice").margin == d("5000") and book.wallet("alice") == 0
    assert len(book.commands()) == 0
    book.mark("7000")
    assert book.position("alice").margin == d("5000") and len(book.commands()) == 1 and book.conserved()


def test_it_stops_at_1x_off_and_other_positions_are_never_touched():
    book = book_with(leverage=1, deposit="50000")  # margin 40,000 = the notional: already 1x
    book.auto_margin("alice")
    book.fill("bob", "buy", "1", "8000", market="BTCUSDT")  # bob's own position (not enabled) unaffected
    book.mark("100")
    assert book.position("alice").margin == d("40000") and "USDT" not in book.state.auto_margin_added
    other = book_with()
    other.auto_margin("alice")
    other.auto_margin("alice", enabled=False)
    other.mark("7230")
    assert other.position("alice").margin == d("4000") and len(other.commands()) == 1


def test_an_auto_margin_for_an_unknown_market_is_a_dead_letter():
    book = book_with()
    book.auto_margin("alice", market="NOPE")
    assert book.verdicts[-1].kind == "deadletter" and book.verdicts[-1].reason == "unknown_market"


def test_a_position_with_nothing_free_is_topped_up_at_the_first_mark_after_a_deposit():
    """Free 0 after the 4,000 of IM: the mark 7,230 finds alice due with nothing to add (B = 4,000 - 3,850 = 150
    <= MM 180.75; the reducer parks her until her wallet or position changes). A liquidation command goes out.
    She deposits 10,000; at the next mark (7,231) the reducer adds her IM, 4,000: B = 8,000 - 3,845 = 4,155 > MM."""
    book = book_with(deposit="4000")
    book.auto_margin("alice")
    book.mark("7230")
    assert book.position("alice").margin == d("4000") and book.state.top_ups == []
    assert len(book.commands()) == 1
    book.deposit("alice", "10000")
    book.mark("7231")
    assert book.position("alice").margin == d("8000") and book.wallet("alice") == d("6000")
    assert book.state.top_ups == [(("alice", "BTCUSDT", "BOTH"), d("4000"))] and book.conserved()
