"""`ringfence whatif`: the history with other market settings, against a slow reference."""

import json

import pytest

from ringfence.core import margin as mm
from ringfence.core import model as m
from ringfence.core.fixed import format_decimal, parse_decimal
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.log_codec import decode_record
from ringfence.replay.whatif import compare, read_market_configs, replay_with


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo session with liquidations and ADL answered by the demo's matching engine."""
    from tests.integration.conftest import ringfence

    data = tmp_path_factory.mktemp("whatif") / "demo"
    ringfence("demo", "--seed", "4", "--events", "30000", "--traders", "150", "--data", str(data), data=data)
    return data

CAP = parse_decimal("0.9")  # a rate stays below 1


def stricter(config: dict, factor: int = 2) -> dict:
    """Every bracket's maintenance rate times ``factor``, maint_amount kept continuous; capped below 1 and below
    1/max_leverage (the edge refuses a bracket whose positions are liquidatable on their own fills)."""
    brackets, previous = [], None
    for bracket in config["brackets"]:
        mmr = min(parse_decimal(bracket["mmr"]) * factor, CAP, 10**8 // bracket["max_leverage"] - 1)
        floor = parse_decimal(bracket["notional_floor"])
        cum = 0 if previous is None else previous[1] + floor * (mmr - previous[0]) // 10**8
        brackets.append({**bracket, "mmr": format_decimal(mmr), "maint_amount": format_decimal(cum)})
        previous = (mmr, cum)
    return {**config, "brackets": brackets}


def strict_reference(log, configs: dict[str, m.MarketConfig]) -> set:
    """Slow: replay the history as logged; after every event test every open position with the strict brackets.

    A position counts if it is liquidatable under them before its first liquidation in the log, or the first
    ADL trade against it (whatif replaces both with its own, so the position differs from then on).
    """
    state, found, liquidated = State(), set(), set()
    for offset, payload in log.read(0):
        event = decode_record(payload)
        if type(event) in (m.LiquidationFill, m.AdlFill):
            liquidated.add((event.account, event.market, event.position_side))
        apply_event(state, offset, event)
        for key, position in state.positions.items():
            mark = state.markets[key[1]].mark
            if key not in liquidated and mark and mm.is_liquidatable(configs[key[1]].brackets, position.size,
                                                                      position.cost, position.margin, mark):  # fmt: skip
                found.add(key)
    return found


def test_whatif_with_the_logs_own_markets_reports_nothing(demo, cli):
    markets = demo.parent / "markets.jsonl"
    markets.write_text(cli("markets", "--json", data=demo)[1])
    rc, out, err = cli("whatif", "--market-config", str(markets), data=demo)
    assert out == "(none)\n" and "(0 earlier, 0 later, 0 not at all, 0 new)" in err
    original = replay_with(EmbeddedLog(demo / "log", writable=False))
    assert len(original.liquidations) > 50  # the comparison had something to compare


def test_twice_as_strict_brackets_liquidate_at_least_what_a_slow_reference_finds(demo, cli):
    strict = demo.parent / "strict.jsonl"
    lines = [json.dumps(stricter(json.loads(line))) for line in cli("markets", "--json", data=demo)[1].splitlines()]
    strict.write_text("\n".join(lines) + "\n")
    configs = read_market_configs(strict.read_bytes().splitlines(), "strict.jsonl")
    log = EmbeddedLog(demo / "log", writable=False)
    original, alternative = replay_with(log), replay_with(log, configs)
    reference = strict_reference(log, configs)
    assert reference and reference <= set(alternative.liquidations)
    rows = compare(original, alternative)
    assert {row["change"] for row in rows} >= {"earlier", "new"}
    assert all(row["change"] != "later" or row["original_offset"] < row["whatif_offset"] for row in rows)
    out = [json.loads(line) for line in cli("whatif", "--market-config", str(strict), "--json", data=demo)[1].splitlines()]
    assert out == rows


def test_a_bad_market_config_file_is_one_line(demo, cli, tmp_path):
    for text, message in (("not json\n", "bad.jsonl:1: malformed_json"),
                          ('{"type":"mark","id":"x","ts":1,"market":"BTCUSDT","price":"1"}\n', "only market events"),
                          ("\n", "holds no market event")):  # fmt: skip
        (tmp_path / "bad.jsonl").write_text(text)
        err = cli("whatif", "--market-config", str(tmp_path / "bad.jsonl"), data=demo, check_rc=2)[2]
        assert len(err.strip().splitlines()) == 1 and message in err
