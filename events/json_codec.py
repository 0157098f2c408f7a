"""JSON Lines <-> domain events, with one stable reason code for every way a line can be bad."""

import json
import re

import msgspec

from ringfence.core import model as m
from ringfence.core import reasons as r
from ringfence.core.fixed import format_decimal
from ringfence.core.limits import DEADLETTER_RAW_BYTES, MAX_LINE_BYTES, MAX_NESTING_DEPTH
from ringfence.events.wire import POLICY_FIELDS, WIRE_TYPES, InvalidRecord, WireEvent, to_domain


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail


def _pairs_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _Rejected(r.DUPLICATE_KEY, f"key {duplicate!r} appears more than once")
    return result


def _no_float(text: str):
    raise _Rejected(r.INVALID_TYPE, f"JSON number {text[:40]} where a decimal string or an integer is expected")


def _no_constant(text: str):
    raise _Rejected(r.INVALID_DECIMAL, f"{text} is not a number ringfence accepts")


_loads = json.JSONDecoder(
    object_pairs_hook=_pairs_without_duplicates, parse_float=_no_float, parse_constant=_no_constant
).decode


# a JSON string (its end optional: an unterminated one is the parser's to reject) or one structural bracket
_STRUCTURE = re.compile(rb'"(?:[^"\\]+|\\.)*"?|[\[\]{}]', re.DOTALL)


def too_deep(line: bytes) -> bool:
    """Do arrays and objects nest more than MAX_NESTING_DEPTH deep in ``line`` (outside strings)?

    Checked before parsing, so no parser recurses deeper. Most lines have fewer
    brackets than the bound in all (two counts); the others are scanned.
    """
    if line.count(b"[") + line.count(b"{") <= MAX_NESTING_DEPTH:
        return False
    depth = 0
    for token in _STRUCTURE.findall(line):
        first = token[0]
        if first == 0x5B or first == 0x7B:  # [ {
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                return True
        elif first != 0x22:  # ] } (0x22: a string)
            depth -= 1
    return False


def _reason_of(error: msgspec.ValidationError) -> str:
    text = str(error)
    if text.startswith("Object missing required field"):
        return r.UNKNOWN_TYPE if "`type`" in text else r.MISSING_FIELD
    if text.startswith("Object contains unknown field"):
        return r.UNKNOWN_FIELD
    if "`$.type`" in text:
        return r.UNKNOWN_TYPE
    if text.startswith("Expected `int` >=") or text.startswith("Expected `int` <="):
        return r.OUT_OF_RANGE
    if text.startswith("Expected") and ", got `" in text:
        return r.INVALID_TYPE
    return r.INVALID_VALUE  # right type, but a length, pattern or enum it does not meet


def bounded_raw(raw: bytes) -> bytes:
    return raw[:DEADLETTER_RAW_BYTES]


def _storable(text: str) -> str:
    """``text`` with any lone surrogate (from the input, or a file name that is not UTF-8) as its escape.

    A detail quotes the input (an unknown field's name, a bad value), and a
    str that is not valid Unicode cannot be encoded in the log or a dead letter.
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def invalid(reason: str, detail: str, raw: bytes, source: str = "") -> m.InvalidInput:
    """The InvalidInput of a bad line: its reason, a storable detail and source, and the start of the line."""
    return m.InvalidInput(reason, _storable(detail), bounded_raw(raw), _storable(source))


def too_large(start: bytes, size: int, source: str = "") -> m.InvalidInput:
    """The dead letter of a line of ``size`` bytes, of which only ``start`` need have been read."""
    return invalid(r.RECORD_TOO_LARGE, f"line of {size} bytes exceeds {MAX_LINE_BYTES}", start, source)


def decode_line(line: bytes, source: str = "") -> m.Event | m.InvalidInput:
    """One JSON line -> a domain event, or an InvalidInput carrying the reason and the bounded raw line."""
    if len(line) > MAX_LINE_BYTES:
        return too_large(line, len(line), source)
    try:
        if line.count(b"[") + line.count(b"{") > MAX_NESTING_DEPTH and too_deep(line):  # too_deep's test, inline
            raise _Rejected(r.NESTED_TOO_DEEP, f"JSON nested more than {MAX_NESTING_DEPTH} deep")
        try:
            obj = _loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise _Rejected(r.MALFORMED_JSON, f"not UTF-8: {error.reason}") from None
        except ValueError as error:  # json.JSONDecodeError
            raise _Rejected(r.MALFORMED_JSON, f"not JSON: {error}") from None
        if not isinstance(obj, dict):
            raise _Rejected(r.NOT_AN_OBJECT, f"a record is a JSON object, got {type(obj).__name__}")
        # convert to the tagged class directly: msgspec rebuilds a Union's type
        # info on every call (7x slower); the Union gives the error for a bad type
        tag = obj.get("type")
        target = WIRE_TYPES.get(tag, WireEvent) if type(tag) is str else WireEvent
        try:
            wire = msgspec.convert(obj, target, strict=True)
        except msgspec.ValidationError as error:
            raise _Rejected(_reason_of(error), str(error)) from None
        except UnicodeEncodeError:
            # a lone surrogate (only a \ud800-\udfff escape makes one) in a key, a type or an enum, which
            # msgspec matches as UTF-8; in a name it fails the name's pattern, in a decimal its syntax
            raise _Rejected(r.MALFORMED_JSON, "not Unicode text: a \\u escape names a lone surrogate") from None
        return to_domain(wire)
    except (_Rejected, InvalidRecord) as error:
        return invalid(error.reason, error.detail, line, source)


_DECIMAL_FIELDS = {
    "amount", "qty", "price", "fee", "rate", "mark_price", "tick_size", "lot_size", "liquidation_fee_rate", "mark_band",
    "notional_floor", "notional_cap", "mmr", "maint_amount", "fraction", "min_notional", "backstop_ratio",
    "trigger_price",
}  # fmt: skip


def to_wire(event: m.Event) -> dict:
    """A domain event as its wire JSON object (decimals as exact strings)."""
    out: dict = {"type": event.__struct_config__.tag}
    for field in event.__struct_fields__:
        value = getattr(event, field)
        if field == "insurance_fund" and not value:
            continue  # the default fund is not named (an empty name is not valid input)
        if (field == "liquidation_policy" and value == m.FULL_POLICY) or (field == "order" and value == m.TAKEOVER):
            continue  # the defaults (an adl_fill has no order)
        if field == "qty" and not value and type(event) is m.PositionTrigger:
            continue  # the whole position
        if field == "liquidation_policy":
            value = {"kind": value.kind, **{f: (format_decimal(getattr(value, f)) if f in _DECIMAL_FIELDS else getattr(value, f))
                                            for f in POLICY_FIELDS[value.kind]}}  # fmt: skip
        if field == "brackets":
            value = [
                {f: (format_decimal(getattr(b, f)) if f in _DECIMAL_FIELDS else getattr(b, f)) for f in b.__struct_fields__}
                for b in value
            ]
        elif field in _DECIMAL_FIELDS:
            value = format_decimal(value)
        out[field] = value
    return out


_json_encode = msgspec.json.Encoder().encode


def encode_line(event: m.Event) -> bytes:
    return _json_encode(to_wire(event))
