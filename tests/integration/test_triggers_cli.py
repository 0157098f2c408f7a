"""Position triggers through the CLI and RocksDB: set, refused, kept across a restart, fired once, in history."""

import json

from tests.integration.test_policies_cli import _lines, _long_and_short

MARKET = {"type": "market", "id": "cfg", "ts": 1, "market": "BTCUSDT", "settle": "USDT", "tick_size": "0.1",
          "lot_size": "0.001", "brackets": [{"notional_floor": "0", "notional_cap": "1000000000", "max_leverage": 100,
                                             "mmr": "0.005", "maint_amount": "0"}]}  # fmt: skip


def _trigger(trigger_id, account, kind, price, **extra):
    return {"type": "position_trigger", "id": trigger_id, "ts": 5, "account": account, "market": "BTCUSDT",
            "kind": kind, "trigger_price": price, **extra}  # fmt: skip


def _json_rows(cli, *args, data):
    return [json.loads(line) for line in cli(*args, "--json", data=data)[1].splitlines()]


def test_triggers_are_refused_with_reasons_kept_across_a_restart_and_fire_once(tmp_path, cli):
    """alice long 1 @ 60,000 and bob short 1 @ 60,000 at 10x; mark 60,000. alice's stop-loss at 58,000 and bob's
    take-profit at 59,000 for 0.5 are set; six bad requests are refused, each with its reason. A second run
    (state from RocksDB) sees the mark 58,500: bob's take-profit fires (close buy 0.500); then 58,000 fires
    alice's stop-loss for her whole 1; marks that reach them again fire nothing."""
    data = tmp_path / "data"
    events = [MARKET, *_long_and_short("BTCUSDT", "1", "60000", "100000"),
              {"type": "mark", "id": "m1", "ts": 4, "market": "BTCUSDT", "price": "60000"},
              _trigger("sl", "alice", "stop_loss", "58000"),
              _trigger("tp", "bob", "take_profit", "59000", qty="0.5"),
              _trigger("wrong-side", "bob", "take_profit", "61000"),
              _trigger("off-tick", "alice", "take_profit", "61000.05"),
              _trigger("zero", "alice", "take_profit", "0"),
              _trigger("by-last", "alice", "take_profit", "61000", trigger_by="last"),
              _trigger("no-position", "carol", "stop_loss", "50000"),
              {"type": "position_trigger_cancel", "id": "c1", "ts": 5, "account": "bob", "trigger_id": "nope"}]  # fmt: skip
    (tmp_path / "session.jsonl").write_text(_lines(*events))
    cli("ingest", str(tmp_path / "session.jsonl"), data=data, check_rc=None)
    cli("run", data=data, check_rc=3)
    assert [(r["event_id"], r["reason"]) for r in _json_rows(cli, "rejections", data=data)] == [
        ("wrong-side", "trigger_would_fire"), ("no-position", "no_open_position"), ("c1", "unknown_trigger")]
    assert [r["reason"] for r in _json_rows(cli, "deadletters", data=data)] == [
        "price_not_on_tick", "not_positive", "invalid_value"]
    assert [(r["trigger_id"], r["qty"], r["status"]) for r in _json_rows(cli, "triggers", data=data)] == [
        ("sl", "whole", "waiting"), ("tp", "0.500", "waiting")]

    marks = [{"type": "mark", "id": f"m{n}", "ts": 10 + n, "market": "BTCUSDT", "price": price}
             for n, price in enumerate(("58500", "58000", "57000", "60000", "57000"), start=2)]  # fmt: skip
    (tmp_path / "marks.jsonl").write_text(_lines(*marks))
    cli("ingest", str(tmp_path / "marks.jsonl"), data=data, check_rc=None)
    cli("run", data=data, check_rc=None)
    closes = [(c["trigger_id"], c["account"], c["side"], c["qty"], c["trigger_event_id"])
              for c in _json_rows(cli, "commands", data=data) if c["type"] == "close"]  # fmt: skip
    assert closes == [("tp", "bob", "buy", "0.500", "m2"), ("sl", "alice", "sell", "1.000", "m3")]
    assert [r["status"] for r in _json_rows(cli, "triggers", data=data)] == ["fired", "fired"]
    history = _json_rows(cli, "history", "alice", "BTCUSDT", data=data)
    rows = [(row["type"], row["event_id"], row["commands"]) for row in history if row["type"] not in ("fill", "leverage")]
    # the edge's dead letters (zero, by-last) name no position; the reducer's (off-tick) does
    assert rows == [("position_trigger", "sl", []), ("position_trigger", "off-tick", []),
                    ("mark", "m3", [_close_id(cli, data, "sl")])]  # fmt: skip
    digest = cli("digest", data=data)[1]
    assert cli("replay", data=data)[1] == digest and cli("replay", "--verify", data=data)[0] == 0


def _close_id(cli, data, trigger_id):
    (close,) = [c for c in _json_rows(cli, "commands", data=data) if c.get("trigger_id") == trigger_id]
    return close["command_id"]
