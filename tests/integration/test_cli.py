"""The CLI end to end, in fresh processes, on a real RocksDB store and the embedded log."""

import json
from pathlib import Path

from ringfence.events.json_codec import encode_line
from ringfence.ops.simulate import generate

EXAMPLE_EVENTS = 1500


def session_file(tmp_path, seed=11, count=EXAMPLE_EVENTS, traders=25):
    path = tmp_path / f"session-{seed}.jsonl"
    path.write_bytes(b"".join(encode_line(e) + b"\n" for e in generate(seed, count, traders)))
    return path


def digest_of(out: str) -> tuple[int, str]:
    offset, digest = out.split()
    return int(offset), digest


def test_same_log_same_digest_in_fresh_processes_with_different_hash_seeds(tmp_path, cli):
    source = session_file(tmp_path)
    digests = set()
    for hash_seed in ("1", "2", "random"):
        data = tmp_path / f"data-{hash_seed}"
        env = {"PYTHONHASHSEED": hash_seed}
        cli("ingest", str(source), data=data, env=env)
        cli("run", data=data, env=env, check_rc=None)
        digests.add(digest_of(cli("digest", data=data, env=env)[1]))
        digests.add(digest_of(cli("replay", data=data, env=env)[1]))
    assert len(digests) == 1
    offset, _ = digests.pop()
    assert offset == EXAMPLE_EVENTS - 1


def test_checkpoint_stop_resume_equals_one_run(tmp_path, cli):
    lines = session_file(tmp_path, seed=12).read_bytes().splitlines(keepends=True)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    (tmp_path / "all.jsonl").write_bytes(b"".join(lines))
    cli("ingest", str(tmp_path / "all.jsonl"), data=whole)
    cli("run", data=whole, check_rc=None)
    for index, cut in enumerate((0, 1, 400, 401, 999, len(lines))):
        start = (0, 1, 400, 401, 999, len(lines))[index - 1] if index else 0
        chunk = tmp_path / f"chunk{index}.jsonl"
        chunk.write_bytes(b"".join(lines[start:cut]))
        cli("ingest", str(chunk), data=parts)
        cli("run", data=parts, check_rc=None)
    assert cli("digest", data=parts)[1] == cli("digest", data=whole)[1]
    assert cli("rejections", "--json", data=parts)[1] == cli("rejections", "--json", data=whole)[1]


def test_malformed_input_is_dead_lettered_and_the_rest_applies(tmp_path, cli):
    good = session_file(tmp_path, seed=13, count=300, traders=10).read_bytes().splitlines()
    bad = [
        b'{"type":"mark","id":"b1","ts":1,"market":"BTCUSDT","price":"NaN"}',
        b'{"type":"mark","id":"b2","ts":1,"market":"BTCUSDT","price":"Infinity"}',
        b'{"type":"mark","id":"b3","ts":1,"market":"BTCUSDT","price":1e400}',
        b'{"type":"mark","id":"b4","ts":1,"market":"BTCUSDT","price":"1.000000001"}',
        b'{"type":"fill","id":"b5","ts":1,"account":"a","market":"BTCUSDT","side":"buy","qty":"-1","price":"1","fee":"0"}',
        b'{"type":"fill","id":"b6","ts":1,"account":"a","market":"BTCUSDT","side":"buy","qty":"0","price":"1","fee":"0"}',
        b'{"type":"teleport","id":"b7","ts":1}',
        b'{"type":"mark","id":"b8","ts":1,"market":"BTCUSDT"}',
        b'{"type":"mark","id":"b9","ts":"1","market":"BTCUSDT","price":"1"}',
        b'{"type":"mark","id":"b10","ts":1,"market":"BTCUSDT","price":"1","price":"2"}',
        b'{"type":"mark","id":"b11","ts":1180591620717411303424,"market":"BTCUSDT","price":"1"}',
        b'{"type":"mark","id":"b12","ts":1,"market":"BTCUSDT","price":"' + b"9" * (10 * 1024 * 1024) + b'"}',
        b'{"type":"mark","id":"b13","ts":1,"market":"NOPE","price":"1"}',
        good[5],  # a duplicate event id
        b'{"type":"mark","id":"b14","ts":1,"mar',  # truncated last line, no newline
    ]
    expected = ["invalid_decimal", "invalid_decimal", "invalid_type", "too_many_decimals", "negative_value",
                "not_positive", "unknown_type", "missing_field", "invalid_type", "duplicate_key", "out_of_range",
                "record_too_large", "unknown_market", "duplicate_id", "malformed_json"]  # fmt: skip
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    (tmp_path / "good.jsonl").write_bytes(b"\n".join(good) + b"\n")
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(good + bad))
    cli("ingest", str(tmp_path / "good.jsonl"), data=clean)
    cli("run", data=clean, check_rc=None)

    rc, out, err = cli("ingest", str(tmp_path / "bad.jsonl"), data=dirty, check_rc=3)
    assert "13 invalid" in out and len(err.strip().splitlines()) == 1
    rc, out, err = cli("run", data=dirty, check_rc=3)
    assert "15 dead letters" in out and len(err.strip().splitlines()) == 1

    letters = [json.loads(line) for line in cli("deadletters", "--json", data=dirty)[1].splitlines()]
    assert [letter["reason"] for letter in letters] == expected
    assert [letter["offset"] for letter in letters] == list(range(len(good), len(good) + len(bad)))
    assert all(len(letter["raw"]) <= 2048 for letter in letters)
    assert letters[0]["source"] == f"bad.jsonl:{len(good) + 1}"
    # the state is what the good records alone make
    for command in ("positions", "wallets", "books", "rejections"):
        assert cli(command, "--json", data=dirty)[1] == cli(command, "--json", data=clean)[1]


def test_errors_are_one_line_with_the_documented_exit_codes(tmp_path, cli):
    rc, out, err = cli("ingest", str(tmp_path / "missing.jsonl"), data=tmp_path / "d", check_rc=2)
    assert err.count("\n") == 1 and "cannot read" in err
    rc, out, err = cli("run", data=tmp_path / "empty", check_rc=2)
    assert err.count("\n") == 1
    rc, out, err = cli("positions", data=tmp_path / "empty", check_rc=2)
    assert err.count("\n") == 1
    rc, out, err = cli("frobnicate", data=tmp_path, check_rc=2)


def test_stdin_ingest_and_views(tmp_path, cli):
    data = tmp_path / "d"
    source = session_file(tmp_path, seed=14, count=400, traders=8).read_bytes()
    cli("ingest", "-", "--source", "session-14", data=data, stdin=source)
    cli("run", data=data, check_rc=None)
    positions = [json.loads(x) for x in cli("positions", "--json", data=data)[1].splitlines()]
    assert positions and set(positions[0]) >= {
        "account", "market", "position_side", "size", "entry_price", "isolated_margin", "leverage", "mark_price",
        "unrealized_pnl", "margin_balance", "maintenance_margin", "margin_ratio", "liquidation_price",
        "bankruptcy_price", "status", "adl_quantile",
    }  # fmt: skip
    assert {p["adl_quantile"] for p in positions} <= {None, 0, 1, 2, 3, 4}
    only = [json.loads(x) for x in cli("positions", "--json", "--account", "T000001", data=data)[1].splitlines()]
    assert {p["account"] for p in only} <= {"T000001"}
    wallets = [json.loads(x) for x in cli("wallets", "--json", data=data)[1].splitlines()]
    assert wallets and set(wallets[0]) == {"account", "asset", "balance"}
    assert "account" in cli("positions", data=data)[1].splitlines()[0]


def test_run_follow_applies_what_is_ingested_later_and_stops_on_sigterm(tmp_path, cli):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "d"
    lines = session_file(tmp_path, seed=15, count=600, traders=8).read_bytes().splitlines(keepends=True)
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines[:300]))
    (tmp_path / "b.jsonl").write_bytes(b"".join(lines[300:]))
    cli("ingest", str(tmp_path / "a.jsonl"), data=data)
    env = {**os.environ, "RINGFENCE_DATA": str(data)}
    follower = subprocess.Popen([sys.executable, "-m", "ringfence.ops.cli", "run", "--follow", "--interval", "0.1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        cli("ingest", str(tmp_path / "b.jsonl"), data=data)  # the follower does not hold the writer lock
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rc, out, _ = cli("digest", data=data, check_rc=None)
            if rc == 0 and out.split()[0] == str(len(lines) - 1):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the follower did not catch up")
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=30)
    assert follower.returncode == 143  # 128 + SIGTERM, after the checkpoint (ops.stopping)
    last = follower.stderr.read().decode().splitlines()[-1]
    assert last == f"interrupted: applied up to offset {len(lines) - 1}, checkpointed"
    assert cli("digest", data=data)[1] == cli("replay", data=data)[1]


def test_progress_is_shown_on_a_terminal_only(tmp_path, cli):
    import os
    import pty
    import subprocess
    import sys

    data = tmp_path / "d"
    cli("ingest", str(session_file(tmp_path, seed=16, count=15_000, traders=300)), data=data)
    controller, terminal = pty.openpty()
    env = {**os.environ, "RINGFENCE_DATA": str(data)}
    process = subprocess.Popen([sys.executable, "-m", "ringfence.ops.cli", "run"], env=env,
                               stdout=subprocess.PIPE, stderr=terminal)  # fmt: skip
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    process.wait(timeout=120)
    os.close(controller)
    assert b"\rapplied 10,000 / " in shown, shown[-500:]  # after the first slice (runner.PROGRESS_EVERY)
    # and not when stderr is a file
    rc, out, err = cli("replay", data=data)
    assert "\r" not in err


def test_a_torn_tail_is_repaired_and_reported_once(tmp_path, cli):
    data = tmp_path / "d"
    cli("ingest", str(session_file(tmp_path, seed=17, count=200, traders=5)), data=data)
    segment = next((data / "log").glob("*.seg"))
    segment.write_bytes(segment.read_bytes()[:-3])  # a crash in the middle of the last record
    rc, out, err = cli("run", data=data, check_rc=None)
    assert rc in (0, 3) and "log_tail_recovered" in err
    assert "199 events" in out  # every whole record, not the torn one
    assert list((data / "log").glob("*.torn-*"))


def test_ingest_of_one_partition_keeps_its_accounts_and_every_market_wide_event(tmp_path, cli):
    from ringfence.ops.partitioning import route

    source = session_file(tmp_path, seed=15, count=600, traders=12)
    lines = [line for line in source.read_bytes().splitlines() if line]
    counts = []
    for partition in range(3):
        data = tmp_path / f"p{partition}"
        out = cli("ingest", str(source), "--partition", str(partition), "--of", "3", data=data)[1]
        expected = [line for line in lines if partition in route(line, 3)[1]]
        assert f"ingested {len(expected)} records" in out
        counts.append(len(expected))
        cli("run", data=data, check_rc=None)
        positions = json.loads("[" + ",".join(cli("positions", "--json", data=data)[1].splitlines()) + "]")
        assert all(route(b'{"account":"%s"}' % p["account"].encode(), 3)[1] == (partition,) for p in positions)
    broadcasts = sum(1 for line in lines if json.loads(line)["type"] in ("mark", "funding", "market"))
    assert sum(counts) == len(lines) + 2 * broadcasts
    rc, _, err = cli("ingest", str(source), "--partition", "3", "--of", "3", data=tmp_path / "bad", check_rc=2)
    assert err.count("\n") == 1 and "0 <= P < N" in err


def test_commands_live_lists_what_the_outbox_issued_and_did_not_cancel(tmp_path, cli):
    """No engine answers the example session: live = issued minus cancelled, named as the records name them."""
    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "d"
    cli("ingest", str(root / "examples" / "session.jsonl"), data=data)
    cli("run", data=data, check_rc=3)
    records = [json.loads(line) for line in cli("commands", "--json", data=data)[1].splitlines()]
    cancelled = {r["command_id"] for r in records if r["type"] == "cancel"}
    issued = {r["command_id"]: r for r in records if r["type"] != "cancel"}
    live = [json.loads(line) for line in cli("commands", "--live", "--json", data=data)[1].splitlines()]
    assert live and {row["command_id"] for row in live} == set(issued) - cancelled
    for row in live:
        command = issued[row["command_id"]]
        assert (row["type"], row["account"], row["position_side"], row["side"], row["open_qty"]) == (
            command["type"], command["account"], command["position_side"], command["side"], command["qty"])
        assert row.get("bankrupt_account") == command.get("bankrupt_account") and row["age_ms"] >= 0
    for record in records:  # a cancel names the positions as its command does
        if record["type"] == "cancel":
            command = issued[record["command_id"]]
            assert (record["account"], record["position_side"]) == (command["account"], command["position_side"])
            assert record.get("bankrupt_account") == command.get("bankrupt_account")
    text = cli("commands", "--live", data=data)[1]
    assert text.splitlines()[0].split()[:3] == ["type", "command_id", "account"]
