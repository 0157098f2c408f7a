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


def strict_reference(log, configs: dict[str, m.MarketConfig]) -> dict:
    """Slow: replay the history as logged; after every event test every open position with the strict brackets:
    the positions found liquidatable, each with the first offset it was.

    A position counts if it is liquidatable under them before its first liquidation in the log, or the first
    ADL trade against it (whatif replaces both with its own, so the position differs from then on), and auto-add
    margin is off for it (with it on, the stricter brackets may top it up instead).
    """
    state, found, liquidated = State(), {}, set()
    for offset, payload in log.read(0):
        event = decode_record(payload)
        if type(event) in (m.LiquidationFill, m.AdlFill):
            liquidated.add((event.account, event.market, event.position_side))
        apply_event(state, offset, event)
        for key, position in state.positions.items():
            mark = state.markets[key[1]].mark
            if key in state.auto_margin.get(key[1], ()):
                liquidated.add(key)  # from now on the product's path may differ: topped up, not liquidated
            if key not in liquidated and mark and mm.is_liquidatable(configs[key[1]].brackets, position.size,
                                                                      position.cost, position.margin, mark):  # fmt: skip
                found.setdefault(key, offset)
    return found


def test_whatif_with_the_logs_own_markets_reports_nothing(demo, cli):
    markets = demo.parent / "markets.jsonl"
    markets.write_text(cli("markets", "--json", data=demo)[1])
    rc, out, err = cli("whatif", "--market-config", str(markets), data=demo)
    assert out == "(none)\n" and "changes: 0 earlier, 0 later, 0 not at all, 0 new, 0 other amounts" in err
    for label in ("the log's own (its answers as logged; = `replay`)", "simulated baseline", "counterfactual"):
        assert label in err  # each outcome is labelled: the simulated baseline is not the log's own
    original = replay_with(EmbeddedLog(demo / "log", writable=False))
    assert len(original.liquidations) > 50  # the comparison had something to compare


def test_a_market_the_log_does_not_have_is_a_usage_error(demo, cli):
    typo = demo.parent / "typo.jsonl"
    typo.write_text(cli("markets", "--json", data=demo)[1].replace('"market":"ETHUSDT"', '"market":"ETHUSTD"'))
    rc, out, err = cli("whatif", "--market-config", str(typo), data=demo, check_rc=None)
    assert rc == 2 and err.count("\n") == 1 and "market ETHUSTD is not in the log" in err


def test_whatif_without_simulated_answers_is_the_replay_to_the_digest(demo, cli):
    actual = replay_with(EmbeddedLog(demo / "log", writable=False), simulate=False)
    offset, digest = cli("replay", data=demo)[1].split()
    assert actual.digest == digest and actual.costs  # the log's own answers were measured


def test_twice_as_strict_brackets_liquidate_at_least_what_a_slow_reference_finds(demo, cli):
    strict = demo.parent / "strict.jsonl"
    lines = [json.dumps(stricter(json.loads(line))) for line in cli("markets", "--json", data=demo)[1].splitlines()]
    strict.write_text("\n".join(lines) + "\n")
    configs = read_market_configs(strict.read_bytes().splitlines(), "strict.jsonl")
    log = EmbeddedLog(demo / "log", writable=False)
    original, alternative = replay_with(log), replay_with(log, configs)
    reference = strict_reference(log, configs)
    assert reference
    for key, offset in reference.items():  # liquidated, unless whatif's own ADL closed it (as the counterparty) first
        assert key in alternative.liquidations or alternative.deleveraged.get(key, offset + 1) <= offset, key
    rows = compare(original, alternative)
    assert {row["change"] for row in rows} >= {"earlier", "new"}
    assert all(row["change"] != "later" or row["original_offset"] < row["whatif_offset"] for row in rows)
    out = [json.loads(line) for line in cli("whatif", "--market-config", str(strict), "--json", data=demo)[1].splitlines()]
    money = ("original_trader_loss", "whatif_trader_loss", "original_fund_income", "whatif_fund_income")
    assert out == [{**row, **{k: format_decimal(row[k]) for k in money}} for row in rows]


def test_whatif_switches_a_policy_and_fee_and_reports_the_losses_and_fund_income_either_way(demo, cli):
    """The demo's ETHUSDT liquidates a fifth at a time at market with a 1.25 % clearance fee; as `full` with no
    fee every liquidation is a takeover at the bankruptcy price: the same positions, other amounts."""
    full = demo.parent / "full.jsonl"
    lines = []
    for line in cli("markets", "--json", data=demo)[1].splitlines():
        config = json.loads(line)
        if config["market"] == "ETHUSDT":
            assert config["liquidation_policy"]["kind"] == "fraction"
            config = {**config, "liquidation_policy": {"kind": "full"}, "liquidation_fee_rate": "0"}
        lines.append(json.dumps(config))
    full.write_text("\n".join(lines) + "\n")
    log = EmbeddedLog(demo / "log", writable=False)
    original = replay_with(log)
    alternative = replay_with(log, read_market_configs(full.read_bytes().splitlines(), "full.jsonl"))
    rows = compare(original, alternative)
    eth = [row for row in rows if row["market"] == "ETHUSDT"]
    assert eth and all(row["market"] == "ETHUSDT" for row in rows if row["change"] == "other amounts")
    # both sides' trader losses are reported; on this session they are equal (each ETHUSDT position's steps end in a
    # takeover, which costs the trader the whole position either way), so the fund's income is what moves; a step
    # that restores a position, where the losses differ, is test_policies_cli's worked whatif
    assert all(type(row["original_trader_loss"]) is int and type(row["whatif_trader_loss"]) is int for row in eth)
    # a takeover hands the fund what is left of the margin; a market close leaves it with the trader (minus the fee)
    assert sum(r["whatif_fund_income"] for r in eth) != sum(r["original_fund_income"] for r in eth)
    err = cli("whatif", "--market-config", str(full), data=demo)[2]
    assert "counterfactual (full.jsonl" in err


def test_a_bad_market_config_file_is_one_line(demo, cli, tmp_path):
    for text, message in (("not json\n", "bad.jsonl:1: malformed_json"),
                          ('{"type":"mark","id":"x","ts":1,"market":"BTCUSDT","price":"1"}\n', "only market events"),
                          ("\n", "holds no market event")):  # fmt: skip
        (tmp_path / "bad.jsonl").write_text(text)
        err = cli("whatif", "--market-config", str(tmp_path / "bad.jsonl"), data=demo, check_rc=2)[2]
        assert len(err.strip().splitlines()) == 1 and message in err


def _log_of(path, events):
    from ringfence.events.log_codec import encode_record

    log = EmbeddedLog(path)
    for event in events:
        log.append(encode_record(event))
    log.commit()
    return log


def test_whatif_judges_duplicates_over_the_logs_window_and_takes_any_number_of_answers(tmp_path):
    """A deposit sent again 300 events later is a duplicate in `run` (the window is 50,000 offsets): the simulated
    baseline says so too (its virtual offsets once shrank the window to 50). And one mark that liquidates 1,100
    positions gets 1,100 simulated answers (more than 999 once crashed it)."""
    from tests.helpers import BTC_BRACKETS

    U = 10**8
    events = [m.MarketConfig("cfg", 0, "BTCUSDT", "USDT", U // 10, U // 1000, BTC_BRACKETS),
              m.Deposit("dep-0", 1, "whale", "USDT", 10**9 * U)]  # fmt: skip
    for n in range(1100):
        trader = f"t{n:04d}"
        events += [m.Deposit(f"dep-{trader}", 1, trader, "USDT", 10_000 * U),
                   m.SetLeverage(f"lev-{trader}", 1, trader, "BTCUSDT", 20),
                   m.Fill(f"buy-{trader}", 2, trader, "BTCUSDT", "BOTH", m.BUY, U // 10, 60_000 * U, 0),
                   m.Fill(f"sell-{trader}", 2, "whale", "BTCUSDT", "BOTH", m.SELL, U // 10, 60_000 * U, 0)]  # fmt: skip
    events += [m.Deposit("dep-0", 3, "whale", "USDT", 10**9 * U),  # the same id, thousands of offsets later
               m.MarkPrice("mark-0", 4, "BTCUSDT", 60_000 * U), m.MarkPrice("crash", 5, "BTCUSDT", 57_100 * U)]  # fmt: skip
    log = _log_of(tmp_path / "log", events)
    baseline = replay_with(log)
    assert [reason for _, event_id, reason in baseline.deadletters] == ["duplicate_id"]
    assert baseline.deadletters[0][0] == len(events) - 3  # at the log's own offset
    assert len(baseline.liquidations) == 1100 and len(baseline.costs) == 1100
    assert replay_with(log, simulate=False).deadletters == baseline.deadletters
