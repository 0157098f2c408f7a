import pytest

from ringfence.core.fixed import (
    INT64_MAX, DecimalError, decimals_of, div_ceil, div_floor, format_decimal, format_units, mul_div_ceil,
    mul_div_floor, parse_decimal,
)  # fmt: skip


@pytest.mark.parametrize(
    "text, units",
    [("0", 0), ("1", 10**8), ("0.00000001", 1), ("60000.5", 6_000_050_000_000), ("1.500000000000", 150_000_000),
     ("92233720368.54775807", INT64_MAX)],
)  # fmt: skip
def test_parse_exact(text, units):
    assert parse_decimal(text) == units


@pytest.mark.parametrize(
    "text, reason",
    [("NaN", "invalid_decimal"), ("Infinity", "invalid_decimal"), ("-Infinity", "invalid_decimal"),
     ("1e400", "invalid_decimal"), ("1E5", "invalid_decimal"), ("+1", "invalid_decimal"), (" 1", "invalid_decimal"),
     ("1.", "invalid_decimal"), (".5", "invalid_decimal"), ("", "invalid_decimal"), ("0x10", "invalid_decimal"),
     ("١", "invalid_decimal"), ("0.000000001", "too_many_decimals"), ("92233720368.54775808", "out_of_range"),
     (str(2**70), "out_of_range"), ("1" * 41, "out_of_range"), ("-1", "negative_value")],
)  # fmt: skip
def test_parse_rejects(text, reason):
    with pytest.raises(DecimalError) as info:
        parse_decimal(text)
    assert info.value.reason == reason


def test_negative_only_when_allowed():
    assert parse_decimal("-0.5", allow_negative=True) == -50_000_000
    assert parse_decimal("-0") == 0


@pytest.mark.parametrize("a, b, d", [(7, 3, 2), (-7, 3, 2), (7, -3, 2), (10, 10, 5), (0, 5, 3), (-1, 1, 10**8)])
def test_rounding_directions(a, b, d):
    exact = a * b / d
    assert mul_div_floor(a, b, d) <= exact <= mul_div_ceil(a, b, d)
    assert mul_div_ceil(a, b, d) - mul_div_floor(a, b, d) == (0 if (a * b) % d == 0 else 1)
    assert div_floor(-1, 3) == -1 and div_ceil(-1, 3) == 0 and div_ceil(1, 3) == 1


def test_formatting():
    assert format_decimal(6_000_000_000_000) == "60000"
    assert format_decimal(-150_000_000) == "-1.5"
    assert format_decimal(1) == "0.00000001"
    assert format_units(5_728_141_000_000, 2) == "57281.41"
    assert format_units(-1, 8) == "-0.00000001"
    assert decimals_of(10**6) == 2 and decimals_of(10**8) == 0 and decimals_of(1) == 8
