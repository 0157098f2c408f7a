"""Liquidation policies through the CLI and RocksDB: a Hyperliquid step, its answer, the fee in the books, a restart."""

import json

BRACKETS = [{"notional_floor": "0", "notional_cap": "1000000000", "max_leverage": 50, "mmr": "0.01", "maint_amount": "0"}]
POLICY = {"kind": "fraction", "fraction": "0.2", "min_notional": "100000", "cooldown_ms": 30000, "backstop_ratio": "0.6666"}


def _lines(*records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def test_a_fraction_step_its_market_answer_and_the_fee_survive_a_restart_and_replay(tmp_path, cli):
    """Long 100 ETH @ 3,000 at 10x (margin 30,000), fee 0.05 %; mark 2,727: a market command for 20.

    Its answer at 2,727: PnL -5,460, fee 20 x 2,727 x 0.0005 = 27.27; margin 24,512.73 stays with the 80 left.
    """
    data, session = tmp_path / "data", tmp_path / "session.jsonl"
    market = {"type": "market", "id": "cfg", "ts": 1, "market": "ETHUSDT", "settle": "USDT", "tick_size": "0.01",
              "lot_size": "0.001", "brackets": BRACKETS, "liquidation_fee_rate": "0.0005", "liquidation_policy": POLICY}
    events = [market]
    for n, (account, side) in enumerate((("alice", "buy"), ("bob", "sell"))):
        events += [{"type": "deposit", "id": f"d{n}", "ts": 2, "account": account, "asset": "USDT", "amount": "1000000"},
                   {"type": "leverage", "id": f"l{n}", "ts": 2, "account": account, "market": "ETHUSDT", "leverage": 10},
                   {"type": "fill", "id": f"f{n}", "ts": 3, "account": account, "market": "ETHUSDT", "side": side,
                    "qty": "100", "price": "3000", "fee": "0"}]  # fmt: skip
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
