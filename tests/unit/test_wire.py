"""Every way a JSON line can be bad gives exactly one InvalidInput with a stable reason."""

import json

import pytest

from ringfence.core import model as m
from ringfence.events.json_codec import decode_line, encode_line
from ringfence.ops.simulate import generate

FILL = {"type": "fill", "id": "f1", "ts": 1, "account": "a", "market": "BTCUSDT", "side": "buy",
        "qty": "1", "price": "60000", "fee": "0"}  # fmt: skip


def line(**changes) -> bytes:
    record = {**FILL, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


def reason(raw: bytes) -> str:
    record = decode_line(raw, "t:1")
    assert type(record) is m.InvalidInput, record
    assert record.raw == raw[:2048] and record.source == "t:1"
    return record.reason


@pytest.mark.parametrize(
    "raw, expected",
    [
        (line(price="NaN"), "invalid_decimal"),
        (line(price="Infinity"), "invalid_decimal"),
        (line(price="1e400"), "invalid_decimal"),
        (line().replace(b'"60000"', b"NaN"), "invalid_decimal"),
        (line().replace(b'"60000"', b"Infinity"), "invalid_decimal"),
        (line().replace(b'"60000"', b"1e400"), "invalid_type"),
        (line().replace(b'"60000"', b"60000.5"), "invalid_type"),
        (line(price="60000.123456789"), "too_many_decimals"),
        (line(qty="-1"), "negative_value"),
        (line(qty="0"), "not_positive"),
        (line(price="0"), "not_positive"),
        (line(type="teleport"), "unknown_type"),
        (line(type=...), "unknown_type"),
        (line(qty=...), "missing_field"),
        (line(qty=1), "invalid_type"),
        (line(ts="1"), "invalid_type"),
        (line(side="hold"), "invalid_value"),
        (line(account=""), "invalid_value"),
        (line(account="a\u0000b"), "invalid_value"),
        (line(extra="1"), "unknown_field"),
        (line(ts=2**70), "out_of_range"),
        (line(ts=-1), "out_of_range"),
        (line(qty=str(2**70)), "out_of_range"),
        (line()[:-1] + b',"qty":"2"}', "duplicate_key"),
        (line()[:40], "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b"[" * 60_000, "nested_too_deep"),
        (b'{"type": "fill"' + b" " * (70 * 1024) + b"}", "record_too_large"),
    ],
)
def test_malformed_lines(raw, expected):
    assert reason(raw) == expected


@pytest.mark.parametrize(
    "brackets, expected",
    [
        ([], "invalid_value"),
        ([{"notional_floor": "10", "notional_cap": "100", "max_leverage": 10, "mmr": "0.01", "maint_amount": "0"}],
         "invalid_brackets"),
        ([{"notional_floor": "0", "notional_cap": "100", "max_leverage": 10, "mmr": "0.01", "maint_amount": "0"},
          {"notional_floor": "100", "notional_cap": "1000", "max_leverage": 5, "mmr": "0.02", "maint_amount": "2"}],
         "invalid_brackets"),  # continuous would be maint_amount 1
        ([{"notional_floor": "0", "notional_cap": "100", "max_leverage": 10, "mmr": "1", "maint_amount": "0"}],
         "out_of_range"),
        ([{"notional_floor": "0", "notional_cap": "100", "max_leverage": 0, "mmr": "0.1", "maint_amount": "0"}],
         "out_of_range"),
        # 1/max_leverage at or below mmr: a position at the bracket's leverage is liquidatable on its own fill
        ([{"notional_floor": "0", "notional_cap": "100", "max_leverage": 20, "mmr": "0.05", "maint_amount": "0"}],
         "invalid_brackets"),
        ([{"notional_floor": "0", "notional_cap": "100", "max_leverage": 125, "mmr": "0.004", "maint_amount": "0"},
          {"notional_floor": "100", "notional_cap": "1000", "max_leverage": 100, "mmr": "0.011",
           "maint_amount": "0.7"}],
         "invalid_brackets"),
    ],
)  # fmt: skip
def test_bad_bracket_tables(brackets, expected):
    raw = json.dumps({"type": "market", "id": "m", "ts": 0, "market": "X", "settle": "USDT", "tick_size": "0.1",
                      "lot_size": "0.001", "brackets": brackets}).encode()  # fmt: skip
    assert reason(raw) == expected


def test_a_bracket_just_inside_the_leverage_bound_is_accepted_and_its_position_is_not_liquidatable_on_entry():
    """max_leverage 20 and mmr 0.04999999: IM 1/20 = 0.05 of the notional is above MM by 1e-8 of it."""
    from ringfence.core import margin as mm

    raw = json.dumps({"type": "market", "id": "m", "ts": 0, "market": "X", "settle": "USDT", "tick_size": "0.1",
                      "lot_size": "0.001", "brackets": [{"notional_floor": "0", "notional_cap": "1000000",
                      "max_leverage": 20, "mmr": "0.04999999", "maint_amount": "0"}]}).encode()  # fmt: skip
    market = decode_line(raw)
    assert type(market).__name__ == "MarketConfig"
    qty, price = 10**8, 1000 * 10**8  # 1 X at 1000: notional 1000, IM 50
    assert not mm.is_liquidatable(market.brackets, qty, qty * price, 50 * 10**8, price)
    assert mm.is_liquidatable(market.brackets, qty, qty * price, 49_99999 * 10**3, price)


def test_every_generated_event_round_trips_through_json():
    for event in generate(seed=3, count=3000, traders=30):
        assert decode_line(encode_line(event)) == event


def test_position_side_defaults_to_both():
    assert decode_line(line()).position_side == "BOTH"
    assert decode_line(line(position_side="LONG")).position_side == "LONG"


@pytest.mark.parametrize("value, expected", [(-1, "out_of_range"), (86_400_001, "out_of_range"), ("60000", "invalid_type"),
                                             (1.5, "invalid_type"), (2**70, "out_of_range")])  # fmt: skip
def test_a_bad_mark_stale_ms_is_a_dead_letter(value, expected):
    raw = json.dumps({"type": "market", "id": "m", "ts": 0, "market": "X", "settle": "USDT", "tick_size": "0.1",
                      "lot_size": "0.001", "mark_stale_ms": value, "brackets": [{"notional_floor": "0",
                      "notional_cap": "100", "max_leverage": 10, "mmr": "0.01", "maint_amount": "0"}]}).encode()  # fmt: skip
    assert reason(raw) == expected


def test_mark_stale_ms_defaults_to_never_and_round_trips():
    base = {"type": "market", "id": "m", "ts": 0, "market": "X", "settle": "USDT", "tick_size": "0.1",
            "lot_size": "0.001", "brackets": [{"notional_floor": "0", "notional_cap": "100", "max_leverage": 10,
                                               "mmr": "0.01", "maint_amount": "0"}]}  # fmt: skip
    assert decode_line(json.dumps(base).encode()).mark_stale_ms == 0
    event = decode_line(json.dumps({**base, "mark_stale_ms": 30_000}).encode())
    assert event.mark_stale_ms == 30_000 and decode_line(encode_line(event)) == event


MARKET = {"type": "market", "id": "m", "ts": 0, "market": "X", "settle": "USDT", "tick_size": "0.1", "lot_size": "0.001",
          "brackets": [{"notional_floor": "0", "notional_cap": "100", "max_leverage": 10, "mmr": "0.01",
                        "maint_amount": "0"}]}  # fmt: skip


def market_line(**changes) -> bytes:
    return json.dumps({**MARKET, **changes}).encode()


@pytest.mark.parametrize("policy, expected", [
    ({"kind": "smart"}, "unknown_liquidation_policy"),
    ({"kind": 3}, "invalid_type"),
    ({}, "missing_field"),
    ({"kind": "fraction"}, "invalid_liquidation_policy"),  # fraction is required
    ({"kind": "fraction", "fraction": "0"}, "invalid_liquidation_policy"),
    ({"kind": "fraction", "fraction": "1"}, "invalid_liquidation_policy"),
    ({"kind": "fraction", "fraction": "0.00999999"}, "invalid_liquidation_policy"),  # below 1 %: lot by lot
    ({"kind": "fraction", "fraction": "1.5"}, "invalid_liquidation_policy"),
    ({"kind": "fraction", "fraction": "-0.2"}, "negative_value"),
    ({"kind": "fraction", "fraction": "0.2", "cooldown_ms": -1}, "invalid_liquidation_policy"),
    ({"kind": "fraction", "fraction": "0.2", "cooldown_ms": 86_400_001}, "invalid_liquidation_policy"),
    ({"kind": "fraction", "fraction": "0.2", "backstop_ratio": "1"}, "invalid_liquidation_policy"),
    ({"kind": "fraction", "fraction": "0.2", "min_notional": "1e5"}, "invalid_decimal"),
    ({"kind": "fraction", "fraction": "0.2", "steps": 2}, "invalid_liquidation_policy"),  # another kind's field
    ({"kind": "tier_step", "steps": 0}, "invalid_liquidation_policy"),
    ({"kind": "tier_step", "steps": 32}, "invalid_liquidation_policy"),
    ({"kind": "tier_step", "fraction": "0.2"}, "invalid_liquidation_policy"),
    ({"kind": "full", "steps": 1}, "invalid_liquidation_policy"),
    ({"kind": "full", "extra": 1}, "unknown_field"),
    ("full", "invalid_type"),
])  # fmt: skip
def test_a_bad_liquidation_policy_is_one_dead_letter_with_a_stable_reason(policy, expected):
    assert reason(market_line(liquidation_policy=policy)) == expected


@pytest.mark.parametrize("rate, expected", [("1", "out_of_range"), ("1.5", "out_of_range"), ("-0.01", "negative_value")])
def test_a_fee_rate_of_one_or_more_is_a_dead_letter(rate, expected):
    assert reason(market_line(liquidation_fee_rate=rate)) == expected


@pytest.mark.parametrize("policy", [
    {"kind": "full"},
    {"kind": "tier_step"},
    {"kind": "tier_step", "steps": 2},
    {"kind": "fraction", "fraction": "0.2", "min_notional": "100000", "cooldown_ms": 30000, "backstop_ratio": "0.6666"},
    {"kind": "fraction", "fraction": "0.01"},
])  # fmt: skip
def test_liquidation_policies_decode_and_round_trip(policy):
    event = decode_line(market_line(liquidation_policy=policy))
    assert event.liquidation_policy.kind == policy["kind"] and decode_line(encode_line(event)) == event
    assert decode_line(market_line()).liquidation_policy == m.FULL_POLICY == decode_line(
        market_line(liquidation_policy={"kind": "full"})).liquidation_policy


def test_a_liquidation_fill_names_its_order_and_an_adl_fill_has_none():
    answer = {"type": "liquidation_fill", "id": "a", "ts": 1, "command_id": "liq-1", "account": "a", "market": "X",
              "qty": "1", "price": "2"}  # fmt: skip
    assert decode_line(json.dumps(answer).encode()).order == m.TAKEOVER
    event = decode_line(json.dumps({**answer, "order": "market"}).encode())
    assert event.order == m.MARKET and decode_line(encode_line(event)) == event
    assert reason(json.dumps({**answer, "order": "limit"}).encode()) == "invalid_value"
    assert reason(json.dumps({**answer, "type": "adl_fill", "order": "market"}).encode()) == "unknown_field"


def test_auto_margin_on_the_wire():
    record = {"type": "auto_margin", "id": "a1", "ts": 1, "account": "a", "market": "BTCUSDT", "enabled": True}
    event = decode_line(json.dumps(record).encode())
    assert (event.position_side, event.enabled) == ("BOTH", True) and decode_line(encode_line(event)) == event
    assert reason(json.dumps({**record, "enabled": "yes"}).encode()) == "invalid_type"
    assert reason(json.dumps({**record, "enabled": 1}).encode()) == "invalid_type"
    assert reason(json.dumps({k: v for k, v in record.items() if k != "enabled"}).encode()) == "missing_field"
    assert reason(json.dumps({**record, "position_side": "UP"}).encode()) == "invalid_value"
