"""The incremental ADL order (projections.adl.AdlRankings) against a full sort per event.

The reference is the full ranking the projection used before issue 14
(``adl.rank``: one sort per call, equal integer parts re-sorted by Fraction;
the golden sessions pin that order). After every event of a session, the liquidation projection's own
``adl_rankings`` (fed by its event handlers) must give the same keys in the
same order for every market and side, and quantiles from that order. A
failure prints its seed; ``RINGFENCE_SEED=N pytest tests/property/test_adl_ranking.py``
replays the hostile session (``RINGFENCE_COUNT`` events); the tie-heavy
sessions replay with hypothesis' own reproduction (it prints the failing example).
"""

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.core import model as m
from ringfence.core.state import MarketState, State
from ringfence.projections.adl import AdlRankings, rank
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.views import adl_quantile_counts, positions_view
from tests.helpers import Book, market
from tests.property.streams import adversarial_stream


def reference_rank(state, market_name: str, long: bool) -> list:
    """The full sort: adl.rank, as the projection called it per event before issue 14."""
    return rank(state, market_name, long)


def reference_quantile(state, key) -> int | None:
    """docs/decisions.md, "ADL ranking and quantile (issue 14)", from the reference order."""
    position = state.positions.get(key)
    if position is None or state.markets[key[1]].mark == 0:
        return None
    keys = reference_rank(state, key[1], position.size > 0)
    return 4 - 4 * keys.index(key) // len(keys) if key in keys else 0


def check_against_reference(state, projection: LiquidationProjection, rng: random.Random, where: str) -> None:
    """Compare some sides now (a side not asked for stays unbuilt, so both paths run), and some quantiles."""
    rankings = projection.adl_rankings
    for name in sorted(state.markets):
        if state.markets[name].mark == 0:
            continue
        for long in (True, False):
            if rng.random() < 0.6:
                assert list(rankings.ranked(state, name, long)) == reference_rank(state, name, long), \
                    f"{where}: {name} {'long' if long else 'short'}"  # fmt: skip
    keys = sorted(state.positions)
    for key in rng.sample(keys, min(3, len(keys))):
        assert rankings.quantile(state, key) == reference_quantile(state, key), f"{where}: quantile of {key}"


def replay_hostile(seed: int, count: int) -> int:
    projection = LiquidationProjection()
    rng = random.Random(seed ^ 0xAD1)
    events = 0
    for event, state in adversarial_stream(seed, count, projection=projection):
        events += 1
        where = f"RINGFENCE_SEED={seed} RINGFENCE_COUNT={count}: offset {state.offset}, {type(event).__name__} {event.id}"
        check_against_reference(state, projection, rng, where)
    return events


def test_incremental_ranking_on_a_long_session_or_the_given_seed():
    """RINGFENCE_SEED=N replays a seed a failure printed (count: RINGFENCE_COUNT)."""
    assert replay_hostile(int(os.environ.get("RINGFENCE_SEED", 20261203)), int(os.environ.get("RINGFENCE_COUNT", 3000)))


@settings(max_examples=40, deadline=None)
@given(session=st.tuples(st.integers(0, 2**32 - 1), st.integers(50, 600)))  # seed, events
def test_incremental_ranking_equals_the_full_sort_on_hostile_sessions(session):
    replay_hostile(*session)


# -- tie-heavy sessions: few accounts, few prices and sizes, so equal ranks and IM <= 0 are common ---------

ACCOUNTS = ["A", "B", "C", "D", "E", "F"]
HEDGED = {"E", "F"}
U = 10**8  # LONG and SHORT legs of one account in one market
QTY, PRICE = st.sampled_from(["0.001", "0.002", "0.004"]), st.sampled_from(["95", "100", "105"])
step = st.one_of(
    st.tuples(st.just("fill"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), QTY, PRICE),
    # two traders trade the same with one counterparty: equal positions (an exact tie) when both were flat
    st.tuples(st.just("twins"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS),
              QTY, PRICE, st.booleans()),
    st.tuples(st.just("mark"), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["90", "99", "100", "101", "110"])),
    st.tuples(st.just("funding"), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["0.01", "-0.01", "2", "-2"])),
    st.tuples(st.just("transfer"), st.sampled_from(ACCOUNTS), st.sampled_from(["0.01", "-0.001", "1"])),
    st.tuples(st.just("config"), st.sampled_from(["BTCUSDT", "ETHUSDT"])),
)  # fmt: skip


def play(book: Book, action: tuple, rng: random.Random) -> None:
    kind = action[0]
    name = rng.choice(["BTCUSDT", "ETHUSDT"])
    if kind == "fill":
        _, buyer, seller, qty, price = action
        if buyer == seller:
            return
        book.fill(buyer, m.BUY, qty, price, market=name, position_side=m.LONG if buyer in HEDGED else m.BOTH)
        book.fill(seller, m.SELL, qty, price, market=name, position_side=m.SHORT if seller in HEDGED else m.BOTH)
    elif kind == "twins":
        _, first, second, counterparty, qty, price, buying = action
        if counterparty in (first, second):
            return
        for trader in (first, second):
            play(book, ("fill", trader, counterparty, qty, price) if buying else ("fill", counterparty, trader, qty, price),
                 random.Random(name))
    elif kind == "mark":
        book.mark(action[2], market=action[1])
    elif kind == "funding":
        book.funding(action[2], "100", market=action[1])
    elif kind == "transfer":
        side = rng.choice((m.LONG, m.SHORT)) if action[1] in HEDGED else m.BOTH
        book.transfer(action[1], action[2], market=name, side=side)
    else:
        book.market(name=action[1], ts=book.serial)


@settings(max_examples=150, deadline=None)
@given(actions=st.lists(step, min_size=1, max_size=60), seed=st.integers(0, 2**16))
def test_incremental_ranking_equals_the_full_sort_with_ties_and_no_margin(actions, seed):
    rng = random.Random(seed)
    book = Book(liquidations=True)
    book.market(name="BTCUSDT")
    book.market(name="ETHUSDT")
    for account in ACCOUNTS:
        book.deposit(account, "1000000")
    book.mark("100", market="BTCUSDT")
    book.mark("100", market="ETHUSDT")
    for number, action in enumerate(actions):
        play(book, action, rng)
        check_against_reference(book.state, book.projection, rng, f"step {number} {action}")


# -- quantile ----------------------------------------------------------------------------------------------


def test_quantile_by_quarter_of_the_ranking_and_zero_out_of_profit():
    book = Book(liquidations=True)
    book.market()
    for account in "ABCDEFGHI":
        book.deposit(account, "100000")
    # eight longs at 100 with margins 10..80 (the smallest margin ranks first), one short counterparty
    for number, account in enumerate("ABCDEFGH"):
        book.fill(account, m.BUY, "1", "100")
        book.fill("I", m.SELL, "1", "100")
        book.transfer(account, str(10 * (8 - number)))  # A the most margin: ranks last
    rankings = book.projection.adl_rankings
    assert rankings.quantile(book.state, ("A", "BTCUSDT", "BOTH")) is None  # no mark yet
    book.mark("110")
    order = list(rankings.ranked(book.state, "BTCUSDT", True))
    assert order == [(a, "BTCUSDT", "BOTH") for a in "HGFEDCBA"]
    quantiles = [rankings.quantile(book.state, key) for key in order]
    assert quantiles == [4, 4, 3, 3, 2, 2, 1, 1]
    assert rankings.quantile(book.state, ("I", "BTCUSDT", "BOTH")) == 0  # the short is at a loss
    assert rankings.quantile(book.state, ("Z", "BTCUSDT", "BOTH")) is None
    book.mark("99")  # every long at a loss now, the short in profit: alone, so in the top quarter
    assert [rankings.quantile(book.state, key) for key in order] == [0] * 8
    assert rankings.quantile(book.state, ("I", "BTCUSDT", "BOTH")) == 4


# -- equal integer parts, different exact ranks: the Fraction tie-break ------------------------------------


@settings(max_examples=100, deadline=None)
@given(offsets=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 2)), min_size=2, max_size=12),
       changes=st.lists(st.tuples(st.integers(0, 11), st.integers(1, 4), st.integers(0, 2), st.booleans()), max_size=20))  # fmt: skip
def test_equal_integer_parts_are_ordered_exactly_as_the_full_sort(offsets, changes):
    """Ranks below 2^-64 (a 1e-16 profit against a 1M margin) share the integer part 0 and differ exactly."""
    state = State()
    state.markets["BTCUSDT"] = MarketState(market(), mark=100 * U)
    size = 10**5  # 0.001
    rankings = AdlRankings()

    def put(key, pnl, extra):
        position = state.positions.get(key) or state.add_position(key)
        position.size, position.cost, position.margin = size, size * 100 * U - pnl, 10**14 + extra
        rankings.changed(state, key)

    for number, (pnl, extra) in enumerate(offsets):
        put((f"T{number:02d}", "BTCUSDT", "BOTH"), pnl, extra)
    assert list(rankings.ranked(state, "BTCUSDT", True)) == reference_rank(state, "BTCUSDT", True)
    for number, pnl, extra, close in changes:
        key = (f"T{number:02d}", "BTCUSDT", "BOTH")
        if close and key in state.positions:
            state.remove_position(key)
            rankings.changed(state, key)
        else:
            put(key, pnl, extra)
        assert list(rankings.ranked(state, "BTCUSDT", True)) == reference_rank(state, "BTCUSDT", True)


def test_positions_view_and_the_metrics_counts_carry_the_quantile():
    book = Book(liquidations=True)
    book.market()
    for account in "ABC":
        book.deposit(account, "100000")
    book.fill("A", m.BUY, "1", "100")
    book.fill("B", m.BUY, "1", "100")
    book.fill("C", m.SELL, "2", "100")
    assert [row["adl_quantile"] for row in positions_view(book.state)] == [None, None, None]  # no mark
    assert adl_quantile_counts(book.state) == [0, 0, 0, 0, 0]
    book.transfer("A", "5")  # more margin: A ranks below B
    book.mark("110")
    assert [row["adl_quantile"] for row in positions_view(book.state)] == [2, 4, 0]
    assert adl_quantile_counts(book.state) == [1, 0, 1, 0, 1]
