"""Liquidation policies through the CLI and RocksDB: a Hyperliquid step, its answer, the fee in the books, a restart."""

import json

BRACKETS = [{"notional_floor": "0", "notional_cap": "1000000000", "max_leverage": 50, "mmr": "0.01", "maint_amount": "0"}]
POLICY = {"kind": "fraction", "fraction": "0.2", "min_notional": "100000", "cooldown_ms": 30000, "backstop_ratio": "0.6666"}


def _lines(*records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def _long_and_short(market: str, qty: str, price: str, deposit: str) -> list[dict]:
    """alice long and bob short ``qty`` at ``price``, both at 10x."""
    events = []
    for n, (account, side) in enumerate((("alice", "buy"), ("bob", "sell"))):
        events += [{"type": "deposit", "id": f"d{n}", "ts": 2, "account": account, "asset": "USDT", "amount": deposit},
                   {"type": "leverage", "id": f"l{n}", "ts": 2, "account": account, "market": market, "leverage": 10},
                   {"type": "fill", "id": f"f{n}", "ts": 3, "account": account, "market": market, "side": side,
                    "qty": qty, "price": price, "fee": "0"}]  # fmt: skip
    return events


def test_a_fraction_step_its_market_answer_and_the_fee_survive_a_restart_and_replay(tmp_path, cli):
    """Long 100 ETH @ 3,000 at 10x (margin 30,000), fee 0.05 %; mark 2,727: a market command for 20.

    Its answer at 2,727: PnL -5,460, fee 20 x 2,727 x 0.0005 = 27.27; margin 24,512.73 stays with the 80 left.
    """
    data, session = tmp_path / "data", tmp_path / "session.jsonl"
    market = {"type": "market", "id": "cfg", "ts": 1, "market": "ETHUSDT", "settle": "USDT", "tick_size": "0.01",
              "lot_size": "0.001", "brackets": BRACKETS, "liquidation_fee_rate": "0.0005", "liquidation_policy": POLICY}
    events = [market, *_long_and_short("ETHUSDT", "100", "3000", "1000000")]
    events += [{"type": "mark", "id": "m1", "ts": 4, "market": "ETHUSDT", "price": "3000"},
               {"type": "mark", "id": "m2", "ts": 5, "market": "ETHUSDT", "price": "2727"},
               {**market, "id": "bad", "liquidation_policy": {"kind": "fraction", "fraction": "1"}}]  # fmt: skip
    session.write_text(_lines(*events))
    cli("ingest", str(session), data=data, check_rc=None)
    cli("run", data=data, check_rc=3)  # 3: the bad policy is a dead letter
    (dead,) = [json.loads(line) for line in cli("deadletters", "--json", data=data)[1].splitlines()]
    assert dead["reason"] == "invalid_liquidation_policy"
    markets = cli("markets", data=data)[1]
    assert "fraction fraction=0.2 min_notional=100000 cooldown_ms=30000 backstop_ratio=0.6666" in markets
    (command,) = [json.loads(line) for line in cli("commands", "--json", data=data)[1].splitlines()]
    assert (command["order"], command["qty"], command["bankruptcy_price"]) == ("market", "20.000", "2700.00")

    answer = {"type": "liquidation_fill", "id": "a1", "ts": 6, "command_id": command["command_id"], "account": "alice",
              "market": "ETHUSDT", "qty": "20", "price": "2727", "order": "market"}  # fmt: skip
    (tmp_path / "answers.jsonl").write_text(_lines(answer, {**answer, "id": "a2", "price": "2699.99"}))
    cli("ingest", str(tmp_path / "answers.jsonl"), data=data, check_rc=None)
    cli("run", data=data, check_rc=3)  # the fill beyond the protection price is a dead letter
    reasons = [json.loads(line)["reason"] for line in cli("deadletters", "--json", data=data)[1].splitlines()]
    assert reasons == ["invalid_liquidation_policy", "answer_beyond_protection"]
    (position,) = [json.loads(line) for line in cli("positions", "--json", data=data)[1].splitlines()
                   if json.loads(line)["account"] == "alice"]  # fmt: skip
    assert (position["size"], position["isolated_margin"]) == ("80.000", "24512.73")
    books = {(row["book"], row["key"]): row["balance"]
             for row in map(json.loads, cli("books", "--json", data=data)[1].splitlines())}  # fmt: skip
    assert books[("insurance_fund", "USDT")] == books[("clearance_fees_in_fund", "USDT")] == "27.27"
    # the state came back from RocksDB for the second run; a replay from offset 0 gives the same digest
    digest = cli("digest", data=data)[1]
    assert cli("replay", data=data)[1] == digest and cli("replay", "--verify", data=data)[0] == 0


def test_auto_margin_through_the_cli_restart_and_history(tmp_path, cli):
    """Bybit's example (5 BTC @ 8,000, 10x, mmr 0.5 %): at the mark 7,230 the reducer adds the IM 4,000; `history`
    shows it on the mark's row; the setting and the books come back from RocksDB (a second run's digest = replay's)."""
    data, session = tmp_path / "data", tmp_path / "session.jsonl"
    market = {"type": "market", "id": "cfg", "ts": 1, "market": "BTCUSDT", "settle": "USDT", "tick_size": "0.1",
              "lot_size": "0.001", "brackets": [{"notional_floor": "0", "notional_cap": "1000000000", "max_leverage": 100,
                                                 "mmr": "0.005", "maint_amount": "0"}]}  # fmt: skip
    events = [market, *_long_and_short("BTCUSDT", "5", "8000", "100000")]
    events += [{"type": "auto_margin", "id": "am", "ts": 4, "account": "alice", "market": "BTCUSDT", "enabled": True},
               {"type": "auto_margin", "id": "am2", "ts": 4, "account": "alice", "market": "NOPE", "enabled": True},
               {"type": "mark", "id": "m1", "ts": 5, "market": "BTCUSDT", "price": "8000"}]  # fmt: skip
    session.write_text(_lines(*events))
    cli("ingest", str(session), data=data, check_rc=None)
    cli("run", data=data, check_rc=3)  # the unknown market is a dead letter
    (tmp_path / "more.jsonl").write_text(_lines({"type": "mark", "id": "m2", "ts": 6, "market": "BTCUSDT", "price": "7230"}))
    cli("ingest", str(tmp_path / "more.jsonl"), data=data, check_rc=None)
    cli("run", data=data, check_rc=None)  # from the store: the setting is read back from RocksDB
    (dead,) = [json.loads(line) for line in cli("deadletters", "--json", data=data)[1].splitlines()]
    assert dead["reason"] == "unknown_market"
    assert cli("commands", "--json", data=data)[1].strip() == ""  # topped up: not liquidatable
    (alice,) = [p for p in map(json.loads, cli("positions", "--json", data=data)[1].splitlines()) if p["account"] == "alice"]
    assert (alice["isolated_margin"], alice["liquidation_price"]) == ("8000", "6432.2")
    books = {(row["book"], row["key"]): row["balance"]
             for row in map(json.loads, cli("books", "--json", data=data)[1].splitlines())}  # fmt: skip
    assert books[("auto_margin_added", "USDT")] == "4000"
    history = [json.loads(line) for line in cli("history", "alice", "BTCUSDT", "--json", data=data)[1].splitlines()]
    (row,) = [r for r in history if r.get("auto_margin_added")]
    assert (row["type"], row["event_id"], row["auto_margin_added"]) == ("mark", "m2", "4000")
    digest = cli("digest", data=data)[1]
    assert cli("replay", data=data)[1] == digest and cli("replay", "--verify", data=data)[0] == 0


def test_whatif_of_a_restoring_fraction_step_as_full_shows_both_losses(tmp_path, cli):
    """The session of the first test, up to the mark 2,727: ETHUSDT's fraction policy steps alice down 20 at market.
    whatif's simulated engine fills it at the mark: the trader loses only the fee, 20 x 2,727 x 0.0005 = 27.27
    (PnL at the mark was hers already), which the fund gets; the 80 left are safe. As `full` with no fee, the
    whole 100 is taken over at the bankruptcy price: she loses her equity at the mark, 30,000 - 100 x 273 =
    2,700, and the fund gets it. Same offset, other amounts."""
    data, session = tmp_path / "data", tmp_path / "session.jsonl"
    market = {"type": "market", "id": "cfg", "ts": 1, "market": "ETHUSDT", "settle": "USDT", "tick_size": "0.01",
              "lot_size": "0.001", "brackets": BRACKETS, "liquidation_fee_rate": "0.0005", "liquidation_policy": POLICY}
    events = [market, *_long_and_short("ETHUSDT", "100", "3000", "1000000"),
              {"type": "mark", "id": "m1", "ts": 4, "market": "ETHUSDT", "price": "3000"},
              {"type": "mark", "id": "m2", "ts": 5, "market": "ETHUSDT", "price": "2727"}]  # fmt: skip
    session.write_text(_lines(*events))
    cli("ingest", str(session), data=data, check_rc=None)
    cli("run", data=data)
    full = tmp_path / "full.jsonl"
    full.write_text(_lines({**market, "liquidation_policy": {"kind": "full"}, "liquidation_fee_rate": "0"}))
    rows = [json.loads(line) for line in cli("whatif", "--market-config", str(full), "--json", data=data)[1].splitlines()]
    (row,) = [row for row in rows if row["account"] == "alice"]
    assert row["change"] == "other amounts" and row["original_offset"] == row["whatif_offset"]
    assert (row["original_trader_loss"], row["original_fund_income"]) == ("27.27", "27.27")
    assert (row["whatif_trader_loss"], row["whatif_fund_income"]) == ("2700", "2700")
