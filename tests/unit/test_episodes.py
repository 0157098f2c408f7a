"""Liquidation episodes, scenario by scenario (issue 12; rules in docs/decisions.md)."""

import msgspec

from ringfence.core import model as m
from ringfence.core.digest import compute_digest
from ringfence.projections.liquidation import stuck_positions
from tests.helpers import BTC_BRACKETS, Book, d, market


def tags(outputs):
    return [o.__struct_config__.tag for o in outputs]


def alice_long(config=None) -> Book:
    """A BTCUSDT market (Binance brackets) and alice long 1 at 60,000, 10x: liquidation ~54,271, bankruptcy 54,000."""
    b = Book(liquidations=True)
    b.apply(config or market())
    b.deposit("alice", "100000")
    b.leverage("alice", 10)
    b.fill("alice", "buy", "1", "60000")
    return b


def flip_session(last_marks=("60000", "66000")):
    """Issue 12, item 1: alice's command is unanswered when she trades through zero."""
    b = Book(liquidations=True)
    b.market()
    b.deposit("alice", "100000")
    b.deposit("bob", "1000000")
    b.leverage("alice", 10)
    b.leverage("bob", 2)
    b.mark("60000")
    b.fill("alice", "buy", "1", "60000")
    b.fill("bob", "sell", "1", "60000")
    b.mark("54000")
    (first,) = b.commands()
    assert (first.side, first.qty, first.trigger_offset) == ("sell", "1.000", 8)
    b.fill("alice", "sell", "2", "54000")  # now short 1: the sell command would double the short
    b.fill("bob", "buy", "2", "54000")
    for price in last_marks:
        b.mark(price)
    return b, first


def test_a_flip_cancels_the_command_and_commands_the_new_side():
    b, first = flip_session(last_marks=("59200",))  # B = 200 > 0, MM 236.8: liquidatable, not bankrupt
    (cancel,) = b.cancels()
    assert (cancel.command_id, cancel.reason, cancel.trigger_offset) == (first.command_id, "position_changed", 9)
    assert cancel.trigger_event_id == "e9"
    new = b.commands()[-1]
    assert (new.account, new.side, new.qty) == ("alice", "buy", "1.000")
    assert [c.command_id for c in b.live()] == [new.command_id]
    assert not stuck_positions(b.state, b.projection)


def test_the_issue_session_ends_with_a_live_command_closing_the_short():
    b, first = flip_session()  # marks 60000 and 66000, as the issue feeds them
    assert b.position("alice").size == d("-1")
    (cancel,) = b.cancels()
    assert cancel.command_id == first.command_id
    # at 60000 alice is beyond bankruptcy (B = -600) and the fund is empty: the whole short is
    # deleveraged against bob's profitable long (a buy of 1.000 for alice, a sell for bob)
    (adl,) = [o for o in b.outputs if o.__struct_config__.tag == "adl"]
    assert (adl.bankrupt_account, adl.account, adl.side, adl.qty) == ("alice", "bob", "sell", "1.000")
    (live,) = b.live()
    assert live.command_id == adl.command_id and live.closing_side == "buy" and live.open_qty() == d("1")
    assert tags(b.outputs) == ["liquidate", "cancel", "adl"]  # 66000 repeats nothing
    assert not stuck_positions(b.state, b.projection)


def split_session():
    """Issue 12, item 2: a bankrupt position split into an ADL part and a market part."""
    b = Book(liquidations=True)
    b.apply(market(brackets=BTC_BRACKETS[:2]))
    b.deposit("L", "1000")
    b.deposit("S", "10000")
    b.leverage("L", 100)
    b.mark("60000")
    b.fill("L", "buy", "1", "60000")
    b.fill("S", "sell", "0.4", "60000")
    b.mark("59300")
    adl, liquidate = b.outputs
    assert (adl.account, adl.qty, adl.price, liquidate.account, liquidate.qty) == ("S", "0.400", "59400.0", "L", "0.600")
    return b, adl, liquidate


def test_the_adl_answer_of_a_split_episode_issues_nothing_new():
    b, adl, liquidate = split_session()
    assert b.adl_fill("S", "0.4", "59400", adl.command_id) is None
    assert b.liquidation("L", "0.4", "59400", command_id=adl.command_id) is None
    assert len(b.outputs) == 2  # no new liquidate for the 0.600 the live command covers, no new ADL
    (live,) = b.live()
    assert live.command_id == liquidate.command_id and live.open_qty() == b.position("L").size == d("0.6")
    assert b.liquidation("L", "0.6", "59000", command_id=liquidate.command_id) is None
    assert b.position("L") is None and not b.live() and len(b.outputs) == 2


def test_the_legs_of_an_adl_trade_may_come_in_either_order():
    b, adl, liquidate = split_session()
    assert b.liquidation("L", "0.4", "59400", command_id=adl.command_id) is None  # the bankrupt leg first
    assert len(b.outputs) == 2
    assert b.adl_fill("S", "0.4", "59400", adl.command_id) is None  # its target leg is still live
    assert len(b.outputs) == 2 and b.position("S") is None


def test_a_forged_answer_is_a_dead_letter_and_changes_nothing():
    b = alice_long()
    b.mark("60000")  # margin ratio ~8 %: healthy
    before = compute_digest(b.state, b.projection.canonical_sections())
    verdict = b.liquidation("alice", "1", "54000", command_id="liq-00000000000000000000")
    assert (verdict.kind, verdict.reason) == ("deadletter", "unknown_command")
    assert b.position("alice").size == d("1") and b.state.insurance.get("USDT", 0) == 0
    b.state.offset -= 1  # the offset is the only thing a dead letter moves
    assert compute_digest(b.state, b.projection.canonical_sections()) == before


def test_answers_that_do_not_fit_their_command_are_dead_letters():
    b, adl, liquidate = split_session()
    # a command of other accounts only is unknown: with several partitions another one may hold it
    assert b.liquidation("S", "0.4", "59400", command_id=liquidate.command_id).reason == "unknown_command"
    assert b.adl_fill("L", "0.4", "59400", adl.command_id).reason == "command_for_other_position"  # wrong leg
    assert b.adl_fill("S", "0.4", "59400", liquidate.command_id).reason == "unknown_command"
    assert b.liquidation("L", "0.7", "59400", command_id=liquidate.command_id).reason == "answer_exceeds_command"
    assert b.liquidation("L", "0.4", "59400", command_id=adl.command_id) is None
    assert b.liquidation("L", "0.001", "59400", command_id=adl.command_id).reason == "answer_exceeds_command"  # twice
    assert b.adl_fill("S", "0.4", "59400", adl.command_id) is None
    assert b.adl_fill("S", "0.001", "59400", adl.command_id).reason == "adl_exceeds_position"  # S is flat now
    assert len(b.outputs) == 2 and b.conserved()


def test_a_fill_for_a_cancelled_command_applies_within_the_position_and_is_judged_again():
    b = alice_long()
    b.mark("54200")
    (first,) = b.commands()
    b.transfer("alice", "10")  # supersedes: cancel, and (still liquidatable) a new command for 1.000
    second = b.commands()[-1]
    assert [c.command_id for c in b.cancels()] == [first.command_id] and second.qty == "1.000"
    assert b.liquidation("alice", "0.4", "54100", command_id=first.command_id) is None  # it raced the cancel
    # the live command (1.000) is now larger than the position (0.600): cancelled, commanded again for 0.600
    assert b.cancels()[-1].command_id == second.command_id and b.commands()[-1].qty == "0.600"
    (live,) = b.live()
    assert live.open_qty() == b.position("alice").size
    assert b.liquidation("alice", "0.6", "54100", command_id=first.command_id) is None  # 0.6 of its 1.0 left
    assert b.position("alice") is None and b.cancels()[-1].reason == "position_closed"


def test_adl_never_picks_the_bankrupt_accounts_own_hedge_leg():
    b = Book(liquidations=True)
    b.market()
    b.deposit("h", "100000")
    b.leverage("h", 100, side="LONG")
    b.leverage("h", 50, side="SHORT")
    b.deposit("other", "1000000")
    b.leverage("other", 2)
    b.fill("h", "buy", "1", "60000", position_side="LONG")  # margin 600
    b.fill("h", "sell", "1", "60000", position_side="SHORT")  # its own hedge: the best-ranked profitable short
    b.fill("other", "sell", "1", "60000")
    b.mark("60000")
    b.mark("58000")  # h's LONG is beyond bankruptcy, the fund is empty
    (adl,) = [o for o in b.outputs if o.__struct_config__.tag == "adl"]
    assert (adl.bankrupt_account, adl.bankrupt_position_side, adl.account) == ("h", "LONG", "other")


def test_an_unanswered_command_times_out_in_event_time_and_is_issued_again():
    b = alice_long(msgspec.structs.replace(market(), liquidation_timeout_ms=5_000))
    b.mark("54200", ts=1_000)
    (first,) = b.commands()
    b.mark("54150", ts=5_999)  # 4,999 ms: still live
    assert not b.cancels()
    b.mark("54150", ts=6_000)  # 5,000 ms after it was issued
    (cancel,) = b.cancels()
    assert (cancel.command_id, cancel.reason) == (first.command_id, "timed_out")
    second = b.commands()[-1]
    assert second.command_id != first.command_id and second.qty == "1.000" and second.ts == 6_000
    assert b.liquidation("alice", "1", "54000", command_id=first.command_id) is None  # a late answer still counts
    assert b.position("alice") is None and b.cancels()[-1].reason == "position_closed"


def test_a_mark_jump_cancels_the_markets_live_commands_and_a_recovery_cancels_one():
    b = Book(liquidations=True)
    b.market_with_band("0.05")
    for name in ("alice", "bob"):
        b.deposit(name, "100000")
        b.leverage(name, 10)
    b.fill("alice", "buy", "1", "60000")
    b.fill("bob", "sell", "1", "60000")
    b.mark("60000")
    b.mark("57000")
    b.mark("54200")  # alice liquidatable
    (command,) = b.commands()
    b.mark("60000")  # +10.7 %: a jump, the market pauses
    assert tags(b.outputs)[-2:] == ["alert", "cancel"] and b.cancels()[-1].reason == "market_paused"
    assert not b.live()
    b.mark("59000")  # resumed; alice healthy at 59,000, nothing commanded
    assert b.outputs[-1].reason == "mark_resumed" and not b.live()
    b.mark("56000")
    b.mark("54200")
    b.mark("54250")  # still liquidatable
    b.mark("56000")  # healthy again: the live command goes
    assert b.cancels()[-1].reason == "no_longer_liquidatable" and not b.live()
    assert not stuck_positions(b.state, b.projection)


def test_command_ids_do_not_depend_on_offsets():
    """The same session with unrelated events interleaved (as another partition's layout would differ) keeps its ids."""

    def session(noise: bool):
        b = Book(liquidations=True)
        b.market()
        events = [m.Deposit("d-a", 1, "alice", "USDT", d("100000")), m.SetLeverage("l-a", 2, "alice", "BTCUSDT", 10),
                  m.Fill("f-a", 3, "alice", "BTCUSDT", "BOTH", "buy", d("1"), d("60000"), 0),
                  m.MarkPrice("m-1", 4, "BTCUSDT", d("54200")), m.MarginTransfer("t-a", 5, "alice", "BTCUSDT", "BOTH", d("5")),
                  m.MarkPrice("m-2", 6, "BTCUSDT", d("54100"))]  # fmt: skip
        for n, event in enumerate(events):
            if noise:
                b.apply(m.Deposit(f"noise-{n}", 0, f"other{n}", "USDT", d("1")))
            b.apply(event)
        return [(o.__struct_config__.tag, o.command_id, o.trigger_event_id) for o in b.outputs]

    quiet, noisy = session(False), session(True)
    assert quiet == noisy and len(quiet) == 3


def test_ended_commands_are_remembered_for_an_hour_of_event_time_across_a_reopen():
    b = alice_long()
    b.mark("54200", ts=1_000)
    (first,) = b.commands()
    b.fill("alice", "sell", "1", "54200")  # the trader closes: position_closed
    b.fill("alice", "buy", "0.5", "54200")  # and reopens, healthy at the mark
    assert b.cancels()[-1].reason == "position_closed" and not b.live()
    b.mark("54200", ts=3_599_999)  # not yet an hour after the cancel (stamped 0, the fill's ts)
    assert b.liquidation("alice", "0.2", "54100", command_id=first.command_id) is None  # the race: still a fact
    assert b.position("alice").size == d("0.3")
    b.mark("54200", ts=3_600_000)  # an hour after the cancel: forgotten
    assert b.liquidation("alice", "0.1", "54100", command_id=first.command_id).reason == "unknown_command"
    assert b.position("alice").size == d("0.3")
