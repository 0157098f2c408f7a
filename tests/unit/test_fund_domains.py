"""Insurance-fund domains: a market field names the fund its liquidations pay into and are covered by."""

import json

import pytest

from ringfence.core import model as m
from ringfence.core.digest import compute_digest
from ringfence.events.json_codec import decode_line, encode_line
from tests.helpers import BTC_BRACKETS, Book, d

TWO_BRACKETS = BTC_BRACKETS[:2]


def _bankrupt_at_close(book: Book, market: str) -> None:
    """alice opens 1 at 60000 with 6000 margin and closes at 50000: a bankruptcy loss of 4000 for the market's fund."""
    book.fill("alice", "buy", "1", "60000", market=market)
    book.fill("bob", "sell", "1", "60000", market=market)
    book.fill("alice", "sell", "1", "50000", market=market)
    book.fill("bob", "buy", "1", "50000", market=market)


@pytest.fixture
def book():
    b = Book()
    b.market(name="BTCUSDT", fund="BTCUSDT-fund")
    b.market(name="ETHUSDT")  # the default: the USDT fund
    for account in ("alice", "bob"):
        b.deposit(account, "100000")
        for market in ("BTCUSDT", "ETHUSDT"):
            b.leverage(account, 10, market=market)
    return b


def test_a_loss_in_a_market_is_its_own_funds(book):
    _bankrupt_at_close(book, "BTCUSDT")
    assert book.state.insurance == {"BTCUSDT-fund": -d("4000")}
    _bankrupt_at_close(book, "ETHUSDT")
    assert book.state.insurance == {"BTCUSDT-fund": -d("4000"), "USDT": -d("4000")}
    assert book.state.fund_assets == {"BTCUSDT-fund": "USDT", "USDT": "USDT"}
    assert book.conserved()


def test_a_domain_holds_one_asset(book):
    digest = compute_digest(book.state)
    verdict = book.apply(m.MarketConfig("c-btc", 0, "BTCUSD-COIN", "BTC", d("0.1"), d("0.001"), BTC_BRACKETS,
                                        insurance_fund="BTCUSDT-fund"))  # fmt: skip
    assert verdict.kind == "deadletter" and verdict.reason == "fund_domain_other_asset"
    assert "holds USDT" in verdict.detail
    book.state.offset -= 1
    assert compute_digest(book.state) == digest
    # an asset's default domain is its name: a USDT market cannot name "BTC" once BTC markets use it
    book.apply(m.MarketConfig("c-btc2", 0, "BTCUSD-COIN", "BTC", d("0.1"), d("0.001"), BTC_BRACKETS))
    verdict = book.apply(m.MarketConfig("c-x", 0, "XUSDT", "USDT", d("0.1"), d("0.001"), BTC_BRACKETS, insurance_fund="BTC"))
    assert verdict.reason == "fund_domain_other_asset"


def test_a_market_moves_to_another_fund_only_when_flat(book):
    book.fill("alice", "buy", "1", "60000", market="BTCUSDT")
    book.fill("bob", "sell", "1", "60000", market="BTCUSDT")
    digest = compute_digest(book.state)
    verdict = book.market(name="BTCUSDT", fund="shared", ts=1)
    assert verdict.kind == "deadletter" and verdict.reason == "fund_domain_change_with_positions"
    assert "2 open positions" in verdict.detail
    book.state.offset -= 1
    assert compute_digest(book.state) == digest
    assert book.state.markets["BTCUSDT"].fund == "BTCUSDT-fund"
    # the same config that keeps the domain applies with positions open
    assert book.market(name="BTCUSDT", fund="BTCUSDT-fund", ts=2) is None
    book.fill("alice", "sell", "1", "50000", market="BTCUSDT")  # bankrupt: the old domain's loss
    book.fill("bob", "buy", "1", "50000", market="BTCUSDT")
    assert book.market(name="BTCUSDT", fund="shared", ts=3) is None
    _bankrupt_at_close(book, "BTCUSDT")
    assert book.state.insurance == {"BTCUSDT-fund": -d("4000"), "shared": -d("4000")}  # the old one keeps its balance
    assert book.state.fund_assets["shared"] == "USDT"
    assert book.conserved()


def test_the_liquidation_projection_covers_a_bankrupt_position_from_its_markets_fund():
    """The ADL decision reads the market's domain: a rich USDT fund does not cover a market with its own fund."""

    def session(fund: str) -> list:
        book = Book(liquidations=True)
        book.market(name="ETHUSDT", tick="0.01", brackets=TWO_BRACKETS)
        book.market(name="BTCUSDT", brackets=TWO_BRACKETS, fund=fund)
        book.deposit("L", "1000")
        book.deposit("S", "10000")
        book.deposit("e", "100000")
        book.deposit("f", "100000")
        # earn the USDT fund 1000: e long ETH 10 @ 3000 (margin 1500), liquidated at 2900 above its bankruptcy 2850
        book.leverage("e", 20, market="ETHUSDT")
        book.fill("e", "buy", "10", "3000", market="ETHUSDT")
        book.fill("f", "sell", "10", "3000", market="ETHUSDT")
        book.mark("2860", market="ETHUSDT")
        book.liquidation("e", "10", "2950", market="ETHUSDT")
        assert book.state.insurance["USDT"] == d("1000")
        book.leverage("L", 100, market="BTCUSDT")
        book.mark("60000")
        book.fill("L", "buy", "1", "60000")
        book.fill("S", "sell", "1", "60000")
        book.mark("59300")  # L: balance -100, expected to cost its fund 100
        return [o.__struct_config__.tag for o in book.outputs if o.__struct_config__.tag in ("liquidate", "adl")]

    assert session(fund="") == ["liquidate", "liquidate"]  # the USDT fund (1000) covers L's 100
    assert session(fund="BTCUSDT-fund") == ["liquidate", "adl"]  # its own fund is empty: S deleverages L


def test_the_wire_field():
    base = {"type": "market", "id": "m", "ts": 0, "market": "X", "settle": "USDT", "tick_size": "0.1",
            "lot_size": "0.001", "brackets": [{"notional_floor": "0", "notional_cap": "100", "max_leverage": 10,
                                               "mmr": "0.01", "maint_amount": "0"}]}  # fmt: skip

    def decoded(**changes):
        return decode_line(json.dumps({**base, **changes}).encode(), "t:1")

    assert decoded().insurance_fund == ""
    assert decoded(insurance_fund="USDT").insurance_fund == ""  # its own asset's fund is the default, one form
    named = decoded(insurance_fund="majors")
    assert named.insurance_fund == "majors"
    assert decode_line(encode_line(named)) == named
    assert b"insurance_fund" not in encode_line(decoded())  # the default is not named
    for bad, reason in ((5, "invalid_type"), ("", "invalid_value"), ("a\u0000b", "invalid_value"),
                        ("x" * 10_000, "invalid_value"), (None, "invalid_type"), (["majors"], "invalid_type")):  # fmt: skip
        record = decoded(insurance_fund=bad)
        assert type(record) is m.InvalidInput and record.reason == reason, (bad, record)
