"""Position triggers: stop-loss and take-profit by the mark (issue 16; VENUE-RULES §7).

The book: BTCUSDT (tick 0.1, lot 0.001, Binance's brackets), alice long 1 @ 60,000 at 10x (margin 6,000:
liquidatable below about 54,200), bob short 1 @ 60,000 at 10x, a mark of 60,000.
"""

import pytest

from ringfence.core import model as m
from tests.helpers import Book, d

SL, TP = m.STOP_LOSS, m.TAKE_PROFIT


def book_at_60000(config=None, mark_ts=0):
    """alice long and bob short 1 @ 60,000 at 10x (carol funded, flat), marked at 60,000; BTCUSDT as ``config``."""
    book = Book(liquidations=True)
    if config is None:
        book.market()
    else:
        book.apply(config)
    for trader in ("alice", "bob", "carol"):
        book.deposit(trader, "100000")
        book.leverage(trader, 10)
    book.fill("alice", "buy", "1", "60000")
    book.fill("bob", "sell", "1", "60000")
    book.mark("60000", ts=mark_ts)
    return book


def closes(book):
    return [(c.account, c.side, c.qty, c.kind, c.trigger_price, c.mark_price) for c in book.closes()]


@pytest.mark.parametrize(
    "account, kind, price, marks, fired_at",
    [
        ("alice", SL, "58000", ("59000", "58000.1", "58000"), "58000"),  # a long's stop-loss: at or below
        ("alice", TP, "62000", ("61999.9", "62500"), "62500"),  # a long's take-profit: at or above
        ("bob", SL, "62000", ("61000", "62000"), "62000"),  # a short's stop-loss: at or above
        ("bob", TP, "58000", ("58000.1", "57000"), "57000"),  # a short's take-profit: at or below
    ],
)
def test_each_kind_and_side_fires_once_when_the_mark_reaches_its_price(account, kind, price, marks, fired_at):
    book = book_at_60000()
    assert book.trigger(account, kind, price, trigger_id="t1") is None
    for mark in marks[:-1]:
        book.mark(mark)
        assert not book.closes(), mark
    book.mark(marks[-1])
    side = "sell" if account == "alice" else "buy"
    assert closes(book) == [(account, side, "1.000", kind, price, fired_at)]
    [close] = book.closes()
    assert close.trigger_id == "t1"
    book.mark(marks[-1])  # reached again: no second command
    book.mark("60000")
    book.mark(marks[-1])
    assert len(book.closes()) == 1


def test_a_trigger_is_refused_on_the_wrong_side_of_the_mark_or_without_a_position():
    book = book_at_60000()
    assert book.trigger("alice", SL, "60000").reason == "trigger_would_fire"  # at the mark: it would fire at once
    assert book.trigger("alice", TP, "59999.9").reason == "trigger_would_fire"
    assert book.trigger("bob", SL, "59000").reason == "trigger_would_fire"
    assert book.trigger("carol", SL, "50000").reason == "no_open_position"
    assert book.trigger("alice", SL, "50000", qty="2").reason == "trigger_exceeds_position"
    assert book.trigger("alice", SL, "50000.05").reason == "price_not_on_tick"
    assert book.trigger("alice", SL, "50000", qty="0.0005").reason == "qty_not_on_lot"
    assert book.trigger("alice", SL, "50000", market="NOPE").reason == "unknown_market"
    assert book.cancel_trigger("alice", "never-set").reason == "unknown_trigger"
    assert not book.state.triggers


def test_at_most_ten_triggers_a_position_and_a_live_id_cannot_be_set_again():
    book = book_at_60000()
    for n in range(10):
        assert book.trigger("alice", SL, str(50000 + n), trigger_id=f"t{n}") is None
    assert book.trigger("alice", SL, "49000").reason == "too_many_triggers"
    assert book.cancel_trigger("alice", "t3") is None
    assert book.trigger("alice", SL, "49000") is None
    verdict = book.apply(m.PositionTrigger("t4", 0, "alice", "BTCUSDT", "BOTH", SL, d("48000")))
    assert verdict.reason == "duplicate_id"


def test_a_cancelled_trigger_never_fires():
    book = book_at_60000()
    book.trigger("alice", SL, "58000", trigger_id="t1")
    assert book.cancel_trigger("alice", "t1") is None
    book.mark("57000")
    assert not book.closes() and not book.state.triggers
    assert book.cancel_trigger("alice", "t1").reason == "unknown_trigger"


def test_a_whole_position_trigger_is_resized_after_a_partial_close_and_a_sized_one_is_capped():
    """alice sells 0.4 of her 1: the whole-position stop-loss closes 0.600, the one set for 0.8 closes at most
    what is left, 0.600."""
    book = book_at_60000()
    book.trigger("alice", SL, "58000", trigger_id="whole")
    book.trigger("alice", SL, "57000", qty="0.8", trigger_id="part")
    book.fill("alice", "sell", "0.4", "60000")
    book.fill("bob", "buy", "0.4", "60000")
    book.mark("58000")
    book.mark("57000")
    assert [(c.trigger_id, c.qty) for c in book.closes()] == [("whole", "0.600"), ("part", "0.600")]


def test_a_flip_or_a_close_ends_the_positions_triggers():
    book = book_at_60000()
    book.trigger("alice", SL, "58000", trigger_id="t1")
    book.fill("alice", "sell", "2", "60000")  # now short 1: the long's stop-loss died with the long
    book.fill("bob", "buy", "2", "60000")
    assert not book.state.triggers
    book.mark("58000")
    assert not book.closes()
    book.trigger("alice", TP, "58000", trigger_id="t2")  # the short's take-profit
    book.fill("alice", "buy", "1", "60000")  # closed
    book.fill("bob", "sell", "1", "60000")
    assert not book.state.triggers and not book.state.position_triggers
    assert book.cancel_trigger("alice", "t2").reason == "unknown_trigger"


def test_a_liquidation_takes_precedence_over_a_stop_loss_on_the_same_mark():
    """alice's stop-loss at 54,000 is below her liquidation price (about 54,200): at the mark 54,000 she is
    liquidatable, so the liquidation is commanded and the trigger waits; the takeover closes her, and the trigger
    dies with the position."""
    book = book_at_60000()
    book.trigger("alice", SL, "54000", trigger_id="t1")
    book.mark("54000")
    assert [c.account for c in book.commands()] == ["alice"] and not book.closes()
    [command] = book.commands()
    book.liquidation("alice", "1", command.bankruptcy_price, command_id=command.command_id)
    assert "alice" not in {key[0] for key in book.state.positions} and not book.state.triggers


def test_no_trigger_fires_on_a_mark_that_jumps_beyond_the_band_until_a_mark_within_it():
    import msgspec

    from tests.helpers import market

    book = book_at_60000(msgspec.structs.replace(market(), mark_band=d("0.05")))
    book.trigger("bob", TP, "56000", trigger_id="t1")
    book.mark("55000")  # -8.3 %: paused, not trusted
    assert not book.closes()
    book.mark("55100")  # within 5 % of 55,000: resumes, and reaches the take-profit
    assert [(c.trigger_id, c.mark_price) for c in book.closes()] == [("t1", "55100")]


def test_close_command_ids_depend_on_the_trigger_not_on_offsets():
    one, other = book_at_60000(), book_at_60000()
    other.deposit("dave", "5")  # every later offset moves by one
    for book in (one, other):
        book.trigger("alice", SL, "58000", trigger_id="t1", ts=7)
        book.mark("57000")
    assert one.closes()[0].command_id == other.closes()[0].command_id
    assert one.closes()[0].trigger_offset != other.closes()[0].trigger_offset


def test_no_trigger_fires_on_a_stale_mark():
    """BTCUSDT with mark_stale_ms 60,000: an ETHUSDT mark 60,001 ms after BTCUSDT's pauses it. A late BTCUSDT
    mark (its ts 60 s and more behind) reaching bob's take-profit does not fire it; a fresh one does."""
    import msgspec

    from tests.helpers import market

    book = book_at_60000(msgspec.structs.replace(market(), mark_stale_ms=60_000), mark_ts=1_000)
    book.apply(market(name="ETHUSDT"))
    book.trigger("bob", TP, "59000", trigger_id="t1")
    book.mark("3000", market="ETHUSDT", ts=61_001)
    assert [o.reason for o in book.outputs if o.__struct_config__.tag == "alert"] == ["mark_stale"]
    book.mark("58000", ts=1_000)  # late: applied by the reducer, not trusted
    assert not book.closes()
    book.mark("58000", ts=61_001)
    assert [(c.trigger_id, c.mark_price) for c in book.closes()] == [("t1", "58000")]
