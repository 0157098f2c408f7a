"""Bounds make poison impossible (issue 13): strings, nesting depth and magnitudes at the edge.

Every record that passes validation can be stored (log, store, outputs); every one that does not is one
InvalidInput whose reason and detail can be stored too.
"""

import json

import pytest

from ringfence.core import model as m
from ringfence.events.json_codec import decode_line
from ringfence.events.log_codec import decode_record, encode_record
from ringfence.ops.partitioning import route
from ringfence.projections.runner import output_record

FILL = {"type": "fill", "id": "f1", "ts": 1, "account": "a", "market": "BTCUSDT", "side": "buy",
        "qty": "1", "price": "60000", "fee": "0"}  # fmt: skip


def line(**changes) -> bytes:
    """The fill with ``changes``, as JSON with every non-ASCII character escaped (lone surrogates as \\udxxx)."""
    return json.dumps({**FILL, **changes}).encode()


def storable(record) -> None:
    """The record and its dead letter encode (log record, output JSON) and decode back."""
    assert decode_record(encode_record(record)) == record
    verdict = m.Verdict("deadletter", record.reason, record.detail) if type(record) is m.InvalidInput else None
    if verdict is not None:
        json.loads(output_record(7, record, verdict)[1])


@pytest.mark.parametrize("name", [
    "\ud800", "a\udfff", "\udc00\ud800",  # lone surrogates: not Unicode scalar values
    "a\n", "a\r", "\n", "a\x00b", "a\x1f", "a\x7f", "a\x80", "a\x85", "\x9f",  # C0, DEL, C1
])  # fmt: skip
@pytest.mark.parametrize("field", ["id", "account", "market"])
def test_names_must_be_unicode_scalar_values_without_control_characters(field, name):
    record = decode_line(line(**{field: name}), "t:1")
    assert type(record) is m.InvalidInput and record.reason == "invalid_value", record
    storable(record)


@pytest.mark.parametrize("name", ["T000001", "\u00e9l\u00e8ve", "\U0001f600", "a b", "\u2028", "\ufffd", "x" * 128])
def test_other_names_are_accepted_and_stored(name):
    record = decode_line(line(account=name))
    assert type(record) is m.Fill and record.account == name
    storable(record)


@pytest.mark.parametrize("raw, reason", [
    (line()[:-1] + b', "\\ud800": 1}', "malformed_json"),  # an unknown field named by a lone surrogate
    (line(type="\ud800"), "malformed_json"),
    (line(side="\udc00"), "malformed_json"),
    (line(position_side="\x85"), "invalid_value"),
    (line(qty="1\ud800"), "invalid_decimal"),
    (line()[:-1] + b', "qty": "\\ud800"}', "duplicate_key"),
])  # fmt: skip
def test_a_bad_string_anywhere_gives_a_dead_letter_that_can_be_stored(raw, reason):
    record = decode_line(raw, "t:\udcff")  # a source named from a file name that is not UTF-8
    assert type(record) is m.InvalidInput and record.reason == reason, record
    storable(record)


def deep(depth: int) -> bytes:
    return line()[:-1] + b', "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_nesting_is_bounded_before_parsing():
    assert decode_line(deep(9000)).reason == "nested_too_deep"
    assert decode_line(b"[" * 60_000).reason == "nested_too_deep"
    assert decode_line(b'{"a":' * 9000).reason == "nested_too_deep"
    assert route(deep(9000), 4) == (None, (0,))  # publish sends it to partition 0, where it is dead-lettered


def test_the_depth_bound_counts_only_structure_outside_strings():
    from ringfence.core.limits import MAX_NESTING_DEPTH

    assert decode_line(deep(MAX_NESTING_DEPTH)).reason == "unknown_field"  # parsed: the bound is not hit
    assert decode_line(deep(MAX_NESTING_DEPTH + 1)).reason == "nested_too_deep"
    brackets = '[{"\\"' * 25  # quotes, escapes and brackets inside a string are not structure
    assert decode_line(line(id=brackets)).id == brackets
    assert decode_line(line(id="\\" * 100)).id == "\\" * 100


def test_a_market_with_the_most_brackets_is_within_the_depth_bound():
    from ringfence.core.limits import MAX_BRACKETS
    from ringfence.events.json_codec import encode_line
    from ringfence.ops.simulate import bracket_table

    tiers = [((n + 1) * 1000, max(1, 125 - n), 40 + n) for n in range(MAX_BRACKETS)]
    market = m.MarketConfig("cfg", 0, "X", "USDT", 10**7, 10**5, bracket_table(tiers))
    assert decode_line(encode_line(market)) == market

