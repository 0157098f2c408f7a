"""One scenario per rule of DESIGN.md §3 and per reason code the reducer can give."""

import pytest

from ringfence.core import model as m
from ringfence.core.check import InvariantError
from ringfence.core.digest import compute_digest
from tests.helpers import Book, d


@pytest.fixture
def book():
    b = Book()
    b.market()
    b.deposit("alice", "100000")
    b.deposit("bob", "100000")
    b.leverage("alice", 10)
    b.leverage("bob", 10)
    return b


def test_opening_fill_moves_initial_margin_and_fee(book):
    assert book.fill("alice", "buy", "1", "60000", fee="30") is None
    position = book.position("alice")
    assert (position.size, position.cost, position.margin, position.shortfall) == (d(1), d(1) * d(60000), d(6000), 0)
    assert book.wallet("alice") == d("100000") - d("6000") - d("30")
    assert book.state.fee_income["USDT"] == d("30")
    assert book.conserved()


def test_thin_wallet_leaves_position_thinly_margined_and_recorded(book):
    book.deposit("carol", "100")
    book.leverage("carol", 10)
    assert book.fill("carol", "buy", "1", "60000", fee="30") is None  # a fill is a fact
    position = book.position("carol")
    assert book.wallet("carol") == 0
    assert position.margin == d("70")  # 100 - 30 fee
    assert position.shortfall == d("6000") - d("70")
    assert book.conserved()


def test_fee_the_wallet_cannot_cover_comes_from_margin(book):
    book.deposit("dave", "10")
    book.fill("dave", "buy", "0.001", "60000", fee="20")  # initial margin 6, fee 20
    position = book.position("dave")
    assert book.wallet("dave") == 0
    assert position.margin == d("-10")
    assert book.conserved()


def test_reducing_fill_realizes_pnl_then_releases_the_closed_share(book):
    book.fill("alice", "buy", "2", "60000")
    book.fill("alice", "sell", "1", "61000", fee="10")
    position = book.position("alice")
    # margin 12000 + pnl 1000 - fee 10 = 12990, half released
    assert position.margin == d("6495")
    assert book.wallet("alice") == d("100000") - d("12000") + d("6495")
    assert position.size == d(1) and position.cost == d(1) * d(60000)
    assert book.state.clearing["BTCUSDT"] == -d("1000")
    assert book.conserved()


def test_full_close_returns_all_margin(book):
    book.fill("alice", "buy", "1", "60000")
    book.fill("alice", "sell", "1", "59000", fee="5")
    assert book.position("alice") is None
    assert book.wallet("alice") == d("100000") - d("1000") - d("5")
    assert book.conserved()


def test_fill_crossing_zero_closes_and_reopens_with_fee_split(book):
    book.fill("alice", "buy", "1", "60000")
    book.fill("alice", "sell", "3", "60000", fee="30")
    position = book.position("alice")
    assert position.size == -d(2) and position.cost == -d(2) * d(60000)
    assert position.margin == d("12000")  # the new short's initial margin
    assert book.state.fee_income["USDT"] == d("30")  # 10 on the close, 20 on the open
    assert book.wallet("alice") == d("100000") - d("10") - d("12000") - d("20")
    assert book.conserved()


def test_rebate_is_paid_from_fee_income(book):
    book.fill("alice", "buy", "1", "60000", fee="-6")
    assert book.wallet("alice") == d("100000") - d("6000") + d("6")
    assert book.state.fee_income["USDT"] == -d("6")
    assert book.conserved()


def test_bankruptcy_loss_at_full_close_is_the_funds_not_the_wallets(book):
    book.fill("alice", "buy", "1", "60000")  # margin 6000
    wallet = book.wallet("alice")
    book.fill("alice", "sell", "1", "50000")  # loss 10000 > margin
    assert book.wallet("alice") == wallet  # never touched by the loss
    assert book.state.insurance["USDT"] == -d("4000")
    assert book.conserved()


def test_hedge_mode_legs_are_isolated(book):
    book.fill("alice", "buy", "1", "60000", position_side="LONG")
    book.fill("alice", "sell", "1", "60000", position_side="SHORT")
    assert book.position("alice", side="LONG").size == d(1)
    assert book.position("alice", side="SHORT").size == -d(1)
    verdict = book.fill("alice", "sell", "2", "60000", position_side="LONG")
    assert verdict.reason == "reduce_exceeds_position"
    verdict = book.fill("alice", "buy", "1", "60000")
    assert verdict.reason == "position_mode_conflict"
    assert book.conserved()


def test_margin_transfer_in_and_out(book):
    book.fill("alice", "buy", "1", "60000")
    book.mark("60000")
    assert book.transfer("alice", "1000") is None
    assert book.position("alice").margin == d("7000")
    # max out = min(IM - MM, B - N/L) = min(7000 - 250, 7000 - 6000) = 1000
    verdict = book.transfer("alice", "-1000.00000001")
    assert verdict.kind == "rejection" and verdict.reason == "margin_transfer_exceeds_max"
    assert book.position("alice").margin == d("7000")
    assert book.transfer("alice", "-1000") is None
    assert book.transfer("alice", "1000000").reason == "insufficient_balance"
    assert book.transfer("alice", "5", side="LONG").reason == "no_open_position"
    assert book.conserved()


def test_margin_transfer_out_needs_a_mark(book):
    book.fill("alice", "buy", "1", "60000")
    assert book.transfer("alice", "-1").reason == "no_mark_price"


def test_withdrawal_only_from_the_free_balance(book):
    book.fill("alice", "buy", "1", "60000")
    verdict = book.withdraw("alice", "94000.00000001")
    assert verdict.kind == "rejection" and verdict.reason == "insufficient_balance"
    assert book.withdraw("alice", "94000") is None
    assert book.wallet("alice") == 0
    assert book.state.net_deposits["USDT"] == d("106000")
    assert book.conserved()


def test_funding_moves_between_margins_and_clearing(book):
    book.fill("alice", "buy", "2", "60000")
    book.fill("bob", "sell", "2", "60000")
    book.funding("0.0001", "60000")  # longs pay 2 * 60000 * 0.0001 = 12
    assert book.position("alice").margin == d("12000") - d("12")
    assert book.position("bob").margin == d("12000") + d("12")
    assert book.state.clearing.get("BTCUSDT", 0) == 0
    book.funding("-0.00000001", "60000.1")  # longs receive 0.00120001 (down), shorts pay it (up)
    assert book.position("alice").margin == d("12000") - d("12") + d("0.0012")
    assert book.position("bob").margin == d("12000") + d("12") - d("0.00120001")
    assert book.state.clearing["BTCUSDT"] == 1  # the rounding dust is the exchange's
    assert book.conserved()


def test_stale_mark_is_rejected(book):
    assert book.mark("60000", ts=10) is None
    assert book.mark("60001", ts=10) is None  # same time is not older
    verdict = book.mark("1", ts=9)
    assert verdict.kind == "rejection" and verdict.reason == "stale_mark"
    assert book.state.markets["BTCUSDT"].mark == d("60001")


def test_liquidation_fill_closes_at_bankruptcy_and_residual_goes_to_the_fund(book):
    book.fill("alice", "buy", "1", "60000")  # margin 6000, bankruptcy 54000
    book.fill("bob", "sell", "1", "60000")
    wallet = book.wallet("alice")
    assert book.liquidation("alice", "0.5", "55000") is None
    position = book.position("alice")
    assert position.margin == d("3000")  # lost exactly half of the margin
    assert book.wallet("alice") == wallet
    assert book.state.insurance["USDT"] == d("500")  # 0.5 * (55000 - 54000)
    book.liquidation("alice", "0.5", "53000")  # below bankruptcy: the fund pays 500
    assert book.position("alice") is None
    assert book.state.insurance["USDT"] == 0
    assert book.wallet("alice") == wallet
    assert book.conserved()


def test_liquidation_beyond_the_position_is_dead_lettered(book):
    book.fill("alice", "buy", "1", "60000")
    assert book.liquidation("alice", "2", "55000").reason == "liquidation_exceeds_position"
    assert book.liquidation("bob", "1", "55000").reason == "liquidation_exceeds_position"


def test_leverage_is_capped_by_the_bracket(book):
    assert book.leverage("alice", 125) is None  # flat: first bracket allows 125x
    book.fill("alice", "buy", "10", "60000")  # 600k notional: 75x bracket
    verdict = book.leverage("alice", 100)
    assert verdict.kind == "rejection" and verdict.reason == "leverage_exceeds_bracket"
    assert book.leverage("alice", 75) is None


def test_opening_uses_the_bracket_cap_when_configured_leverage_is_higher(book):
    book.leverage("bob", 125)
    book.fill("bob", "buy", "10", "60000")  # 600k notional allows 75x at most
    assert book.position("bob").margin == d("8000")


def test_duplicate_id_is_dead_lettered_and_changes_nothing(book):
    event = m.Deposit("same", 0, "alice", "USDT", d("5"))
    assert book.apply(event) is None
    digest = compute_digest(book.state)
    verdict = book.apply(event)
    assert verdict.reason == "duplicate_id"
    # only the offset moved
    book.state.offset -= 1
    assert compute_digest(book.state) == digest


@pytest.mark.parametrize(
    "event, reason",
    [
        (m.Fill("x1", 0, "alice", "ETHUSDT", "BOTH", "buy", d(1), d(1), 0), "unknown_market"),
        (m.Fill("x2", 0, "alice", "BTCUSDT", "BOTH", "buy", d(1), d("60000.05"), 0), "price_not_on_tick"),
        (m.Fill("x3", 0, "alice", "BTCUSDT", "BOTH", "buy", d("0.0005"), d(1), 0), "qty_not_on_lot"),
        (m.MarkPrice("x4", 0, "NOPE", d(1)), "unknown_market"),
        (m.Funding("x5", 0, "NOPE", 1, d(1)), "unknown_market"),
        (m.SetLeverage("x6", 0, "alice", "NOPE", 5), "unknown_market"),
        (m.MarginTransfer("x7", 0, "alice", "NOPE", "BOTH", d(1)), "unknown_market"),
        (m.InvalidInput("malformed_json", "bad", b"{"), "malformed_json"),
    ],
)
def test_dead_letters_change_nothing_but_the_offset(book, event, reason):
    book.fill("alice", "buy", "1", "60000")
    digest_before = compute_digest(book.state)
    verdict = book.apply(event)
    assert verdict.kind == "deadletter" and verdict.reason == reason
    book.state.offset -= 1
    assert compute_digest(book.state) == digest_before


def test_market_settle_cannot_change(book):
    verdict = book.market(settle="USDC", ts=5)
    assert verdict.reason == "immutable_market_field"


def test_offsets_must_increase(book):
    from ringfence.core.reducer import apply_event

    with pytest.raises(InvariantError):
        apply_event(book.state, book.state.offset, m.Deposit("z", 0, "a", "USDT", 1))


def test_a_withdrawal_of_rebates_from_an_asset_nobody_deposited_applies():
    """Found by tests/property/test_extremes.py: net deposits of the asset go negative, they did not exist (KeyError)."""
    b = Book()
    b.market()
    assert b.fill("maker", "buy", "0.001", "60000", fee="-5") is None  # a rebate, no deposit
    assert b.withdraw("maker", "2") is None  # the rebate less the initial margin (60 / 20)
    assert b.state.net_deposits["USDT"] == -d("2") and b.conserved()
