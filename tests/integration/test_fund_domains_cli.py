"""Insurance-fund domains through the CLI and RocksDB: the views name them, the store keeps them."""

import json

BRACKETS = [{"notional_floor": "0", "notional_cap": "50000", "max_leverage": 125, "mmr": "0.004", "maint_amount": "0"},
            {"notional_floor": "50000", "notional_cap": "600000", "max_leverage": 100, "mmr": "0.005",
             "maint_amount": "50"}]  # fmt: skip


def _market(market: str, ts: int, **extra) -> dict:
    return {"type": "market", "id": f"cfg-{market}-{ts}", "ts": ts, "market": market, "settle": "USDT",
            "tick_size": "0.1", "lot_size": "0.001", "brackets": BRACKETS, **extra}  # fmt: skip


def _session() -> list[dict]:
    """alice goes bankrupt in BTCUSDT (its own fund) and bob in ETHUSDT (the USDT fund); then bad configs."""
    lines = [_market("BTCUSDT", 1, insurance_fund="BTCUSDT-fund"), _market("ETHUSDT", 2)]
    n = 0

    def event(kind: str, **fields) -> None:
        nonlocal n
        n += 1
        lines.append({"type": kind, "id": f"e{n}", "ts": 10 + n, **fields})

    for account in ("alice", "bob", "carol"):
        event("deposit", account=account, asset="USDT", amount="100000")
    for market, loser in (("BTCUSDT", "alice"), ("ETHUSDT", "bob")):
        event("leverage", account=loser, market=market, leverage=10)
        event("fill", account=loser, market=market, side="buy", qty="1", price="60000", fee="0")
        event("fill", account="carol", market=market, side="sell", qty="1", price="60000", fee="0")
        event("fill", account=loser, market=market, side="sell", qty="1", price="50000", fee="0")
        event("fill", account="carol", market=market, side="buy", qty="1", price="50000", fee="0")
    event("fill", account="carol", market="ETHUSDT", side="buy", qty="1", price="50000", fee="0")
    event("fill", account="alice", market="ETHUSDT", side="sell", qty="1", price="50000", fee="0")
    lines.append({**_market("ETHUSDT", 90, insurance_fund="majors"), "id": "move-with-positions"})
    lines.append({**_market("XBTUSD", 91, insurance_fund="BTCUSDT-fund"), "settle": "BTC", "id": "other-asset"})
    return lines


def test_fund_domains_in_the_views_and_across_a_restart(tmp_path, cli):
    data = tmp_path / "data"
    session = tmp_path / "session.jsonl"
    session.write_text("".join(json.dumps(line) + "\n" for line in _session()))
    cli("ingest", str(session), data=data)
    cli("run", data=data, check_rc=3)  # 3: some records were dead-lettered (below)
    books = [json.loads(line) for line in cli("books", "--json", data=data)[1].splitlines()]
    funds = {row["key"]: (row["asset"], row["balance"]) for row in books if row["book"] == "insurance_fund"}
    assert funds == {"BTCUSDT-fund": ("USDT", "-4000"), "USDT": ("USDT", "-4000")}
    assert {row["asset"] for row in books} == {"USDT"}
    positions = [json.loads(line) for line in cli("positions", "--json", data=data)[1].splitlines()]
    assert {(p["account"], p["market"], p["insurance_fund"]) for p in positions} == {
        ("carol", "ETHUSDT", "USDT"), ("alice", "ETHUSDT", "USDT")}  # fmt: skip
    markets = cli("markets", data=data)[1]
    assert {tuple(line.split()[:3]) for line in markets.splitlines()[1:]} == {
        ("BTCUSDT", "USDT", "BTCUSDT-fund"), ("ETHUSDT", "USDT", "USDT")}  # market, settle, insurance_fund
    dead = [json.loads(line) for line in cli("deadletters", "--json", data=data)[1].splitlines()]
    assert [(json.loads(row["raw"])["id"], row["reason"]) for row in dead] == [
        ("move-with-positions", "fund_domain_change_with_positions"), ("other-asset", "fund_domain_other_asset")]
    # a second run starts from the store: the domains and balances come back from RocksDB, not from a replay
    digest = cli("digest", data=data)[1]
    cli("run", data=data)
    assert cli("digest", data=data)[1] == digest
    assert cli("replay", data=data)[1] == digest
    assert cli("replay", "--verify", data=data)[0] == 0
    history = [json.loads(line) for line in cli("history", "alice", "BTCUSDT", "--json", data=data)[1].splitlines()]
    assert history and all(row["after"] is None or row["after"]["insurance_fund"] == "BTCUSDT-fund" for row in history)
