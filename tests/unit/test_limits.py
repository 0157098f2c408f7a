"""The limits of core/limits.py: each field at the edge, and what accumulates at the reducer.

Whatever passes them can be checkpointed into a real RocksDB store and restored with the same digest.
"""

import json

import pytest

from ringfence.core import limits as lim
from ringfence.core import model as m
from ringfence.core.digest import compute_digest
from ringfence.core.fixed import INT64_MAX, SCALE, format_decimal
from ringfence.events.json_codec import decode_line
from ringfence.projections.store import StateStore
from tests.helpers import Book

FILL = {"type": "fill", "id": "f1", "ts": 1, "account": "a", "market": "BTCUSDT", "side": "buy",
        "qty": "1", "price": "60000", "fee": "0"}  # fmt: skip


def record(**changes):
    return decode_line(json.dumps({**FILL, **changes}).encode())


def reason(**changes) -> str | None:
    decoded = record(**changes)
    return decoded.reason if type(decoded) is m.InvalidInput else None


def text(units: int) -> str:
    return format_decimal(units)


def test_the_limits_fit_what_the_store_keeps():
    # a fresh position from one trade is within the position's bounds, whatever the trade
    assert lim.MAX_QTY_UNITS <= lim.MAX_POSITION_QTY_UNITS <= INT64_MAX
    assert lim.MAX_TRADE_NOTIONAL_UNITS <= lim.MAX_POSITION_NOTIONAL_UNITS
    assert lim.MAX_TRADE_NOTIONAL_UNITS + lim.MAX_AMOUNT_UNITS + 1 <= lim.MAX_POSITION_BALANCE_UNITS <= INT64_MAX
    # a command's expiry and an ended command's retention stay within int64 (msgpack in the store)
    assert lim.MAX_TS_MS + lim.MAX_LIQUIDATION_TIMEOUT_MS + lim.ENDED_COMMANDS_MS <= INT64_MAX
    assert lim.MAX_PRICE_UNITS <= INT64_MAX and lim.MAX_WALLET_UNITS <= INT64_MAX


def test_the_fill_of_the_issue_is_beyond_the_notional_limit():
    decoded = record(qty="10000000", price="1000000")  # each fits int64 at 1e-8
    assert type(decoded) is m.InvalidInput and decoded.reason == "out_of_range" and "notional" in decoded.detail


@pytest.mark.parametrize("field, limit, signed", [
    ("qty", lim.MAX_QTY_UNITS, False),
    ("price", lim.MAX_PRICE_UNITS, False),
    ("fee", lim.MAX_AMOUNT_UNITS, True),
])  # fmt: skip
def test_each_fill_field_is_bounded(field, limit, signed):
    other = {"qty": "0.00000001"} if field == "price" else {"price": "0.00000001"}  # a notional within its limit
    assert reason(**{field: text(limit), **other}) is None
    assert reason(**{field: text(limit + 1), **other}) == "out_of_range"
    if signed:
        assert reason(**{field: text(-limit), **other}) is None
        assert reason(**{field: text(-limit - 1), **other}) == "out_of_range"


def test_a_trade_notional_at_the_limit_passes_and_one_unit_more_does_not():
    qty = lim.MAX_TRADE_NOTIONAL_UNITS // lim.MAX_PRICE_UNITS * SCALE  # qty x price exactly the limit
    assert reason(qty=text(qty), price=text(lim.MAX_PRICE_UNITS)) is None
    assert reason(qty=text(qty + 1), price=text(lim.MAX_PRICE_UNITS)) == "out_of_range"
    for kind in ("liquidation_fill", "adl_fill"):
        answer = {"type": kind, "id": "x", "ts": 1, "command_id": "c", "account": "a", "market": "M",
                  "qty": text(qty + 1), "price": text(lim.MAX_PRICE_UNITS)}  # fmt: skip
        assert decode_line(json.dumps(answer).encode()).reason == "out_of_range"


@pytest.mark.parametrize("line, limit", [
    ({"type": "deposit", "id": "x", "ts": 1, "account": "a", "asset": "U", "amount": "{}"}, lim.MAX_AMOUNT_UNITS),
    ({"type": "withdrawal", "id": "x", "ts": 1, "account": "a", "asset": "U", "amount": "{}"}, lim.MAX_AMOUNT_UNITS),
    ({"type": "margin_transfer", "id": "x", "ts": 1, "account": "a", "market": "M", "amount": "-{}"},
     lim.MAX_AMOUNT_UNITS),
    ({"type": "mark", "id": "x", "ts": 1, "market": "M", "price": "{}"}, lim.MAX_PRICE_UNITS),
    ({"type": "funding", "id": "x", "ts": 1, "market": "M", "rate": "0.001", "mark_price": "{}"}, lim.MAX_PRICE_UNITS),
])  # fmt: skip
def test_each_amount_and_price_is_bounded(line, limit):
    def decoded(units):
        return decode_line(json.dumps({k: v.format(text(units)) if type(v) is str else v for k, v in line.items()}).encode())

    assert type(decoded(limit)) is not m.InvalidInput
    assert decoded(limit + 1).reason == "out_of_range"


def test_event_time_is_bounded():
    assert reason(ts=lim.MAX_TS_MS) is None
    assert reason(ts=lim.MAX_TS_MS + 1) == "out_of_range"


# -- what accumulates: the reducer refuses the event that would exceed a bound -----------------------------

ONE_BRACKET = (m.Bracket(0, INT64_MAX, 1, 10**6, 0),)  # leverage 1 at every notional


@pytest.fixture
def book():
    b = Book(liquidations=True)
    b.market(tick="0.00000001", lot="0.00000001")
    b.mark("1")
    return b


def refused(book, apply) -> str:
    """Apply an event that must be refused whole: its reason; the state (digest) is unchanged."""
    before = compute_digest(book.state)
    verdict = apply()
    assert verdict is not None and verdict.kind == "deadletter", verdict
    book.state.offset -= 1  # the digest includes the offset, which the refused event moved on
    assert compute_digest(book.state) == before
    book.state.offset += 1
    return verdict.reason


def checkpoint_restores(book, tmp_path) -> None:
    with StateStore(tmp_path / "state") as store:
        store.checkpoint(book.state, [], book.projection)
        restored = store.load()
    assert compute_digest(restored) == compute_digest(book.state)
    assert book.conserved()


def big(units: int) -> str:
    return text(units)


def test_a_wallet_of_many_deposits_is_bounded(book, tmp_path):
    for _ in range(lim.MAX_WALLET_UNITS // lim.MAX_AMOUNT_UNITS):
        assert book.deposit("a", big(lim.MAX_AMOUNT_UNITS)) is None
    assert refused(book, lambda: book.deposit("a", big(lim.MAX_AMOUNT_UNITS))) == "balance_overflow"
    checkpoint_restores(book, tmp_path)


def test_a_position_of_many_fills_is_bounded_in_size(book, tmp_path):
    qty = big(lim.MAX_QTY_UNITS)  # at the smallest price: a small notional, the largest size
    for _ in range(lim.MAX_POSITION_QTY_UNITS // lim.MAX_QTY_UNITS):
        assert book.fill("a", "buy", qty, "0.00000001") is None
    assert refused(book, lambda: book.fill("a", "buy", qty, "0.00000001")) == "balance_overflow"
    checkpoint_restores(book, tmp_path)


def test_a_position_of_many_fills_is_bounded_in_cost(book, tmp_path):
    qty, price = big(lim.MAX_TRADE_NOTIONAL_UNITS // lim.MAX_PRICE_UNITS * SCALE), big(lim.MAX_PRICE_UNITS)
    for _ in range(lim.MAX_POSITION_NOTIONAL_UNITS // lim.MAX_TRADE_NOTIONAL_UNITS):
        assert book.fill("a", "sell", qty, price) is None
    assert refused(book, lambda: book.fill("a", "sell", qty, price)) == "balance_overflow"
    assert book.fill("a", "buy", qty, price) is None  # reducing it is fine
    checkpoint_restores(book, tmp_path)


def test_the_shortfall_of_many_thin_fills_is_bounded(book, tmp_path):
    """A wallet that covers nothing: each opening fill adds its initial margin to the shortfall, which never shrinks."""
    qty, price = big(lim.MAX_TRADE_NOTIONAL_UNITS // lim.MAX_PRICE_UNITS * SCALE), big(lim.MAX_PRICE_UNITS)
    book.market(id="one-bracket", tick="0.00000001", lot="0.00000001", brackets=ONE_BRACKET)
    book.leverage("a", 1)
    assert book.fill("a", "buy", "0.00000001", "1") is None  # keeps the position open throughout
    cycles = 0
    while book.position("a").shortfall + lim.MAX_TRADE_NOTIONAL_UNITS <= lim.MAX_POSITION_BALANCE_UNITS:
        assert book.fill("a", "buy", qty, price) is None  # shortfall += its notional (leverage 1, no wallet)
        assert book.fill("a", "sell", qty, price) is None  # and back: the cost shrinks, the shortfall stays
        cycles += 1
    assert cycles >= lim.MAX_POSITION_BALANCE_UNITS // lim.MAX_TRADE_NOTIONAL_UNITS - 1
    assert refused(book, lambda: book.fill("a", "buy", qty, price)) == "balance_overflow"
    checkpoint_restores(book, tmp_path)


def test_the_margin_of_many_transfers_is_bounded(book, tmp_path):
    book.fill("a", "buy", "1", "1")
    for _ in range(lim.MAX_POSITION_BALANCE_UNITS // lim.MAX_AMOUNT_UNITS):
        book.deposit("a", big(lim.MAX_AMOUNT_UNITS))
        assert book.transfer("a", big(lim.MAX_AMOUNT_UNITS)) is None
    book.deposit("a", big(lim.MAX_AMOUNT_UNITS))
    assert refused(book, lambda: book.transfer("a", big(lim.MAX_AMOUNT_UNITS))) == "balance_overflow"
    checkpoint_restores(book, tmp_path)


def test_the_margin_of_many_funding_receipts_is_bounded(book, tmp_path):
    """A short receives funding on every event: the funding that would take its margin past the bound applies to nobody."""
    qty, price = big(lim.MAX_TRADE_NOTIONAL_UNITS // lim.MAX_PRICE_UNITS * SCALE), big(lim.MAX_PRICE_UNITS)
    book.deposit("a", "1000")
    book.deposit("b", "1000")
    book.fill("a", "sell", qty, price)
    book.fill("b", "buy", "0.00000001", "1")
    verdicts = [book.funding("0.99999999", price) for _ in range(10)]  # each receipt ~ the notional
    receipts = lim.MAX_POSITION_BALANCE_UNITS // lim.MAX_TRADE_NOTIONAL_UNITS - 1
    assert verdicts[:receipts] == [None] * receipts
    verdict = verdicts[receipts]
    assert verdict.reason == "balance_overflow" and "applies to no position" in verdict.detail
    checkpoint_restores(book, tmp_path)


def test_the_fill_of_the_issue_already_in_a_log_is_refused_by_the_reducer(book, tmp_path):
    """A log written before the edge limits may carry it: the reducer's own bounds still keep the state storable."""
    qty, price = 10_000_000 * SCALE, 1_000_000 * SCALE
    book.deposit("a", big(lim.MAX_AMOUNT_UNITS))
    assert refused(book, lambda: book.apply(m.Fill("huge", 0, "a", "BTCUSDT", "BOTH", "buy", qty, price, 0))) \
        == "balance_overflow"
    book.fill("a", "sell", "1", "1")  # and as a fill that crosses zero: nothing of it is closed either
    crossing = m.Fill("cross", 0, "a", "BTCUSDT", "BOTH", "buy", qty + SCALE, price, 0)
    assert refused(book, lambda: book.apply(crossing)) == "balance_overflow"
    assert book.position("a").size == -SCALE
    checkpoint_restores(book, tmp_path)
