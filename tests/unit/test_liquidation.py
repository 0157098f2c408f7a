"""The liquidation projection, scenario by scenario (DESIGN.md §3, issue 3)."""

import pytest

from ringfence.core import margin as mm
from tests.helpers import Book, d

TICK = d("0.1")


@pytest.fixture
def book():
    b = Book(liquidations=True)
    b.market()
    for trader in ("alice", "bob", "carol"):
        b.deposit(trader, "100000")
        b.leverage(trader, 10)
    b.fill("alice", "buy", "1", "60000")  # long, margin 6000
    b.fill("bob", "sell", "1", "60000")  # short, margin 6000
    b.mark("60000")
    return b


def liquidation_price(book, account):
    position = book.position(account)
    fraction = mm.liquidation_price_fraction(book.state.markets["BTCUSDT"].config.brackets, position.size,
                                             position.cost, position.margin)  # fmt: skip
    return mm.price_to_tick(fraction[:2], TICK, round_up=position.size > 0)


def text(units, places=1):
    from ringfence.core.fixed import format_units

    return format_units(units, places)


def test_one_tick_above_liquidates_nothing_one_tick_below_liquidates(book):
    price = liquidation_price(book, "alice")  # the displayed price: the exact one rounded up to the tick
    book.mark(text(price + TICK))
    book.mark(text(price))  # not exactly on the solved price: B > MM still
    assert book.commands() == []
    book.mark(text(price - TICK))
    (command,) = book.commands()
    assert (command.account, command.side, command.qty) == ("alice", "sell", "1.000")
    assert command.trigger_offset == book.state.offset and command.command_id == f"liq-{book.state.offset}-0"


def test_short_side_mirror(book):
    price = liquidation_price(book, "bob")
    book.mark(text(price - TICK))
    book.mark(text(price))
    assert book.commands() == []
    book.mark(text(price + TICK))
    (command,) = book.commands()
    assert (command.account, command.side) == ("bob", "buy")
    assert command.bankruptcy_price == "66000.0"


def test_exactly_one_command_per_episode(book):
    book.mark("50000")
    book.mark("49000")
    book.funding("0.001", "49000")
    book.transfer("alice", "1")
    assert len(book.commands()) == 1
    book.liquidation("alice", "1", "50000")  # executed: the episode ends with the position
    assert book.position("alice") is None and not book.projection.outstanding
    book.mark("48000")
    assert len(book.commands()) == 1


def test_partial_execution_is_commanded_again_for_the_rest(book):
    book.mark("50000")
    book.liquidation("alice", "0.4", "50000")
    first, second = book.commands()
    assert first.qty == "1.000" and second.qty == "0.600"
    assert second.trigger_offset == book.state.offset  # judged again at the fill


def test_stale_mark_liquidates_nothing(book):
    book.mark("60000", ts=100)
    assert book.mark("1", ts=50).reason == "stale_mark"
    assert book.commands() == []


def test_funding_can_trigger_a_liquidation(book):
    price = liquidation_price(book, "alice")
    book.mark(text(price + TICK))
    book.funding("0.01", "60000")  # alice pays 600: her liquidation price rises above the mark
    (command,) = book.commands()
    assert command.account == "alice"


def test_a_trader_closing_ends_the_episode(book):
    book.mark("50000")
    book.fill("alice", "sell", "1", "50000")
    assert not book.projection.outstanding


def test_liquidation_is_isolated(book):
    book.fill("alice", "buy", "1", "60000", position_side="BOTH")
    book.fill("carol", "sell", "2", "60000")
    other = (book.position("bob").margin, book.position("carol").margin)
    wallets = (book.wallet("alice"), book.wallet("bob"), book.wallet("carol"))
    book.mark("50000")
    book.liquidation("alice", "2", "49000")  # beyond bankruptcy: the fund pays
    assert (book.position("bob").margin, book.position("carol").margin) == other
    assert (book.wallet("alice"), book.wallet("bob"), book.wallet("carol")) == wallets
    assert book.conserved()


def test_replay_emits_the_same_command_ids():
    def session():
        b = Book(liquidations=True)
        b.market()
        for n in range(30):
            b.deposit(f"t{n}", "10000")
            b.leverage(f"t{n}", 5 + n)
            b.fill(f"t{n}", "buy" if n % 2 else "sell", "0.1", "60000")
        for price in ("58000", "62000", "55000", "66000", "60000"):
            b.mark(price)
        return [c.command_id for c in b.commands()]

    first = session()
    assert first and first == session()


def test_mark_jump_beyond_the_band_pauses_and_alerts():
    b = Book(liquidations=True)
    b.market_with_band("0.05")
    b.deposit("alice", "100000")
    b.leverage("alice", 20)
    b.fill("alice", "buy", "1", "60000")
    b.mark("60000")
    b.mark("50000")  # -16.7 % in one step: untrusted
    assert [o.reason for o in b.outputs] == ["mark_jump"] and not b.commands()
    b.mark("40000")  # still jumping
    assert not b.commands()
    b.mark("40100")  # within 5 % of the previous mark: trusted again, and it liquidates
    assert [o.__struct_config__.tag for o in b.outputs] == ["alert", "alert", "liquidate"]
    assert b.outputs[1].reason == "mark_resumed"
