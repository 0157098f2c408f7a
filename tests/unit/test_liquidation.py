"""The liquidation projection, scenario by scenario (DESIGN.md §3, issue 3)."""

import pytest

from ringfence.core import margin as mm
from ringfence.core import model as m
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
    assert command.trigger_offset == book.state.offset and command.trigger_event_id == f"e{book.serial}"
    assert command.command_id.startswith("liq-") and len(command.command_id) == 24


def test_short_side_mirror(book):
    price = liquidation_price(book, "bob")
    book.mark(text(price - TICK))
    book.mark(text(price))
    assert book.commands() == []
    book.mark(text(price + TICK))
    (command,) = book.commands()
    assert (command.account, command.side) == ("bob", "buy")
    assert command.bankruptcy_price == "66000.0"


def test_exactly_one_live_command_per_episode_and_changes_supersede_it(book):
    book.mark("54200")  # below the liquidation price (~54,271), above bankruptcy (54,000)
    book.mark("54100")  # marks do not repeat a live command
    (first,) = book.commands()
    book.funding("0.0001", "54100")  # funding changes the position: cancel, judge again, command again
    book.transfer("alice", "1")  # so does a margin transfer
    cancels = book.cancels()
    assert [c.reason for c in cancels] == ["position_changed", "position_changed"]
    assert [c.command_id for c in cancels] == [c.command_id for c in book.commands()[:2]]
    (live,) = book.live()
    assert live.command_id == book.commands()[-1].command_id != first.command_id and live.qty == d("1")
    book.liquidation("alice", "1", "50000")  # executed: the episode ends with the position
    assert book.position("alice") is None and not book.live()
    book.mark("48000")
    assert len(book.commands()) == 3 and len(book.cancels()) == 2


def test_partial_execution_leaves_the_command_live_for_the_rest(book):
    book.mark("54200")
    book.liquidation("alice", "0.4", "54200")
    (command,) = book.commands()
    assert command.qty == "1.000" and not book.cancels()
    (live,) = book.live()
    assert live.open_qty() == d("0.6") == book.position("alice").size


def test_stale_mark_liquidates_nothing(book):
    book.mark("60000", ts=100)
    assert book.mark("1", ts=50).reason == "stale_mark"
    assert book.commands() == []


def test_funding_can_trigger_a_liquidation(book):
    price = liquidation_price(book, "alice")
    book.mark(text(price + TICK))
    book.funding("0.001", "60000")  # alice pays 60: her liquidation price rises above the mark
    (command,) = book.commands()
    assert command.account == "alice"


def test_a_trader_closing_ends_the_episode(book):
    book.mark("54200")
    book.fill("alice", "sell", "1", "54200")
    assert not book.live()
    (cancel,) = book.cancels()
    assert cancel.reason == "position_closed" and cancel.command_id == book.commands()[0].command_id


def test_liquidation_is_isolated(book):
    book.fill("alice", "buy", "1", "60000", position_side="BOTH")
    book.fill("carol", "sell", "2", "60000")
    other = (book.position("bob").margin, book.position("carol").margin)
    wallets = (book.wallet("alice"), book.wallet("bob"), book.wallet("carol"))
    book.mark("56000")
    book.liquidation("alice", "2", "55000")  # beyond bankruptcy (57,000 on 2 BTC): the fund pays
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


def test_a_gap_beyond_the_fund_deleverages_the_top_ranked_opposite_positions():
    """Alice's long is bankrupted by a gap; the fund is empty; shorts in profit are deleveraged by rank."""
    from fractions import Fraction

    b = Book(liquidations=True)
    b.market()
    b.deposit("alice", "100000")
    b.leverage("alice", 10)
    b.fill("alice", "buy", "3", "60000")  # margin 18000, bankruptcy 54000
    shorts = {"s1": (5, "1"), "s2": (20, "1"), "s3": (50, "0.5"), "s4": (2, "2")}
    for name, (leverage, qty) in shorts.items():
        b.deposit(name, "100000")
        b.leverage(name, leverage)
        b.fill(name, "sell", qty, "60000")
    b.deposit("late", "100000")
    b.fill("late", "sell", "1", "70000")  # a short in loss at 50,000? no: in profit, but opened later
    b.mark("60000")
    b.mark("50000")  # the gap: alice is 4000 x 3 beyond bankruptcy, the fund holds nothing
    adl = [o for o in b.outputs if o.__struct_config__.tag == "adl"]
    assert not b.commands()  # nothing left for the market: the fund cannot absorb any of it
    # the documented rank, highest first: U * N / (IM * (IM + U))
    def rank(key):
        p = b.state.positions[key]
        pnl, notional, margin = p.size * d("50000") - p.cost, abs(p.size) * d("50000"), p.margin * 10**8
        return Fraction(pnl * notional, margin * (margin + pnl))
    keys = sorted((k for k in b.state.positions if k[0] != "alice"), key=lambda k: (-rank(k), k))
    assert [c.account for c in adl] == [k[0] for k in keys][: len(adl)]
    assert sum(d(c.qty) for c in adl) == d("3")
    assert {c.price for c in adl} == {"54000.0"} and all(c.bankrupt_account == "alice" for c in adl)
    # the matching engine answers each ADL command with both sides at the bankruptcy price
    from ringfence.core import model as m

    for n, command in enumerate(adl):
        assert b.apply(m.AdlFill(f"adl{n}", 0, command.command_id, command.account, "BTCUSDT", "BOTH",
                                 d(command.qty), d(command.price))) is None  # fmt: skip
        assert b.apply(m.LiquidationFill(f"bk{n}", 0, command.command_id, "alice", "BTCUSDT", "BOTH",
                                         d(command.qty), d(command.price))) is None  # fmt: skip
        assert len(b.outputs) == len(adl)  # the episode goes on: nothing new is commanded meanwhile
    assert b.position("alice") is None
    assert b.state.insurance.get("USDT", 0) >= 0  # the fund ends at zero (plus rounding dust), not below
    assert not b.live() and not b.projection.book.targets
    assert b.conserved()


def test_a_fund_large_enough_absorbs_the_gap_without_adl(book):
    # seed the fund with a profitable liquidation first
    book.mark("54200")
    book.liquidation("alice", "1", "56000")  # 2000 above bankruptcy: +2000 to the fund
    assert book.state.insurance["USDT"] == d("2000")
    book.deposit("dave", "100000")
    book.leverage("dave", 10)
    book.fill("dave", "buy", "1", "54200")  # margin 5420, bankruptcy 48780
    book.mark("47000")  # 1780 beyond bankruptcy, the fund holds 2000
    tags = [o.__struct_config__.tag for o in book.outputs]
    assert "adl" not in tags and book.commands()[-1].account == "dave"


def test_a_stale_mark_pauses_its_market_at_the_next_barrier_and_its_next_mark_resumes_it():
    """BTCUSDT with mark_stale_ms 60,000 (first bracket: mmr 0.4 %), ETHUSDT without a limit.

    alice long 1 @ 60,000 at 10x (margin 6,000); carol long 1 @ 60,300 at 10x (margin 6,030).
    Mark 54,300 at ts 10,000: carol's B = 6,030 - 6,000 = 30 <= MM = 217.2 -> liquidate; alice's
    B = 300 > 217.2. An ETHUSDT mark at ts 70,001 is a barrier 60,001 ms after the last BTCUSDT mark:
    BTCUSDT pauses (mark_stale), carol's command is cancelled (market_paused). Funding at 0.2 % then
    costs alice 108.6: B = 191.4 <= 217.2, liquidatable at a mark nobody trusts: nothing is issued.
    The next BTCUSDT mark (ts 90,000, the same price) resumes the market and commands both.
    """
    import msgspec

    from tests.helpers import market

    b = Book(liquidations=True)
    b.apply(msgspec.structs.replace(market(), mark_stale_ms=60_000))
    b.apply(market(name="ETHUSDT"))
    for trader in ("alice", "bob", "carol"):
        b.deposit(trader, "100000")
        b.leverage(trader, 10)
    b.fill("alice", "buy", "1", "60000")
    b.fill("carol", "buy", "1", "60300")
    b.fill("bob", "sell", "2", "60000")
    b.mark("60000")
    b.mark("3000", market="ETHUSDT")
    b.mark("54300", ts=10_000)
    assert [(c.account, c.qty) for c in b.commands()] == [("carol", "1.000")]
    b.mark("3000", market="ETHUSDT", ts=70_000)  # exactly the limit: not yet stale
    assert not [o for o in b.outputs if o.__struct_config__.tag == "alert"]
    b.mark("3001", market="ETHUSDT", ts=70_001)
    [alert] = [o for o in b.outputs if o.__struct_config__.tag == "alert"]
    assert (alert.market, alert.reason, alert.mark_price, alert.ts) == ("BTCUSDT", "mark_stale", "54300", 70_001)
    assert [(c.account, c.reason) for c in b.cancels()] == [("carol", "market_paused")] and not b.live()
    b.apply(m.Funding("fund-1", 80_000, "BTCUSDT", d("0.002"), d("54300")))
    assert b.position("alice").margin == d("5891.4") and not b.live()  # liquidatable, but paused
    b.mark("54300", ts=90_000)
    alerts = [o.reason for o in b.outputs if o.__struct_config__.tag == "alert"]
    assert alerts == ["mark_stale", "mark_resumed"]
    assert sorted(c.account for c in b.live()) == ["alice", "carol"] and b.conserved()


def carol_commanded(band="0"):
    """BTCUSDT (mark_stale_ms 60,000, optional band) and ETHUSDT; carol long 1 @ 60,300 at 10x is liquidatable at
    54,300 (B = 30 <= MM = 217.2) and commanded at that mark, ts 10,000 (bob short; dave funded, flat)."""
    import msgspec

    from tests.helpers import market

    b = Book(liquidations=True)
    b.apply(msgspec.structs.replace(market(), mark_stale_ms=60_000, mark_band=d(band)))
    b.apply(market(name="ETHUSDT"))
    for trader in ("bob", "carol", "dave"):
        b.deposit(trader, "100000")
        b.leverage(trader, 10)
    b.fill("carol", "buy", "1", "60300")
    b.fill("bob", "sell", "1", "60300")
    b.mark("57000")
    b.mark("54300", ts=10_000)
    assert [c.account for c in b.live()] == ["carol"]
    return b


def stale_book(band="0"):
    """carol_commanded, then an ETHUSDT mark at ts 100,000 pauses BTCUSDT."""
    b = carol_commanded(band)
    b.mark("3000", market="ETHUSDT", ts=100_000)
    assert [o.reason for o in b.outputs if o.__struct_config__.tag == "alert"] == ["mark_stale"] and not b.live()
    return b


def test_a_late_mark_does_not_resume_a_stale_market():
    b = stale_book()
    b.mark("54300", ts=10_000)  # the same mark again: applied by the reducer, but 90 s behind the clock
    b.mark("54300", ts=39_999)  # still more than 60 s behind
    assert [o.reason for o in b.outputs if o.__struct_config__.tag == "alert"] == ["mark_stale"] and not b.live()
    b.mark("54300", ts=40_000)  # exactly 60 s behind the clock: fresh enough
    assert [o.reason for o in b.outputs if o.__struct_config__.tag == "alert"] == ["mark_stale", "mark_resumed"]
    assert [c.account for c in b.live()] == ["carol"]


def test_a_stale_market_resumed_by_a_jump_stays_paused_by_the_band_until_a_config_lifts_the_band():
    import msgspec

    from tests.helpers import market

    b = stale_book(band="0.05")
    b.mark("49000", ts=100_000)  # fresh, but -9.8 % from 54,300: paused by the band now
    assert [o.reason for o in b.outputs if o.__struct_config__.tag == "alert"] == ["mark_stale", "mark_jump"]
    b.apply(msgspec.structs.replace(market(), id="no-band", ts=100_001, mark_stale_ms=60_000))  # band 0
    assert not b.live()
    b.mark("40000", ts=100_002)  # no band any more: resumes at once
    assert [o.reason for o in b.outputs if o.__struct_config__.tag == "alert"][-1] == "mark_resumed"
    assert [c.account for c in b.live()] == ["carol"]


def test_a_positions_own_event_past_the_limit_holds_it_until_the_markets_next_mark():
    """carol_commanded, before any barrier finds BTCUSDT stale: carol (long 1 @ 60,300 at 10x) is commanded at the
    mark 54,300 of ts 10,000. At ts 75,000, 65 s after that mark and with no barrier since, carol adds 10 to her
    margin (B = 40 <= MM 217.2: still liquidatable) and dave buys 1 @ 60,300 at 10x (B = 30 <= 217.2). Both are
    their own events past the 60 s limit: carol's command is cancelled (mark_stale: superseded, and nothing
    replaces it) and nothing is issued for either; no alert (no barrier has seen the market stale). The BTCUSDT mark of ts 80,000 (54,300, fresh)
    commands both. An answer 70 s after that mark, for half of carol's takeover, leaves the other half
    unanswered: its command is cancelled (mark_stale), nothing issued, until the next mark."""
    b = carol_commanded()
    b.transfer("carol", "10", ts=70_000)  # 60 s after the mark: exactly the limit, not stale; superseded, reissued
    assert [c.account for c in b.live()] == ["carol"]
    b.transfer("carol", "10", ts=75_000)
    assert [(c.account, c.reason) for c in b.cancels()][-1] == ("carol", "mark_stale") and not b.live()
    b.fill("dave", "buy", "1", "60300", ts=75_000)
    b.fill("bob", "sell", "1", "60300", ts=75_000)
    assert not b.live() and not [o for o in b.outputs if o.__struct_config__.tag == "alert"]
    assert b.position("carol").margin == d("6050") and b.position("dave").margin == d("6030")
    b.mark("54300", ts=80_000)
    assert sorted(c.account for c in b.live()) == ["carol", "dave"] and b.conserved()
    [carols] = [c for c in b.live() if c.account == "carol"]
    assert b.liquidation("carol", "0.5", "54250", command_id=carols.command_id, ts=150_000) is None  # bankruptcy price
    assert [(c.account, c.reason) for c in b.cancels()][-1] == ("carol", "mark_stale")
    assert [c.account for c in b.live()] == ["dave"] and b.position("carol").size == d("0.5")
    b.mark("54300", ts=150_001)
    assert sorted(c.account for c in b.live()) == ["carol", "dave"] and b.conserved()
