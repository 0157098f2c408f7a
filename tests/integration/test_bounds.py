"""Issue 13, case 5: one record never stops the core. Each poison line is one dead letter and the lines after it apply.

On the embedded log (ingest, run) and on the real broker (publish, serve).
"""

import json

from ringfence.core import model as m
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.json_codec import encode_line
from ringfence.events.log_codec import encode_record
from ringfence.ops.kafka_log import KafkaSettings
from ringfence.ops.serve import partition_dir
from ringfence.ops.simulate import generate
from tests.integration.kafka_harness import Serve, topic_records, unique_prefix

U = 10**8
SURROGATE_ID = b'{"type":"deposit","id":"\\ud800","ts":1767225600000,"account":"T000001","asset":"USDT","amount":"5"}'
NEWLINE_ACCOUNT = b'{"type":"deposit","id":"nl","ts":1767225600000,"account":"T000001\\n","asset":"USDT","amount":"5"}'
# each value fits int64 at 1e-8; the notional (1e13 USDT) and the margin it asks for do not
HUGE_FILL = (b'{"type":"fill","id":"huge","ts":1767225600000,"account":"T000001","market":"BTCUSDT","side":"buy",'
             b'"qty":"10000000","price":"1000000","fee":"0"}')  # fmt: skip
DEEP = b'{"type":"deposit","id":"deep","x":' + b"[" * 9000 + b"]" * 9000 + b"}"
POISON = [SURROGATE_ID, NEWLINE_ACCOUNT, HUGE_FILL, DEEP]
POISON_REASONS = ["invalid_value", "invalid_value", "out_of_range", "nested_too_deep"]


def session_with_poison(tmp_path, count=400) -> tuple[list[bytes], list[int]]:
    """A generated session with the poison lines spread through it; (lines, offsets of the poison)."""
    lines = [encode_line(event) for event in generate(5, count, 10)]
    offsets = []
    for n, bad in enumerate(POISON):
        at = 50 + n * (count // len(POISON))
        lines.insert(at, bad)
        offsets.append(at)
    return lines, offsets


def write(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def deadletters(cli, data) -> list[dict]:
    return [json.loads(line) for line in cli("deadletters", "--json", data=data)[1].splitlines()]


def test_poison_lines_are_one_dead_letter_each_and_every_line_after_them_is_ingested_and_applied(tmp_path, cli):
    lines, offsets = session_with_poison(tmp_path)
    clean = [line for line in lines if line not in POISON]
    dirty_data, clean_data = tmp_path / "dirty", tmp_path / "clean"
    rc, out, err = cli("ingest", str(write(tmp_path / "dirty.jsonl", lines)), data=dirty_data, check_rc=3)
    assert f"ingested {len(lines)} records" in out and f"{len(POISON)} invalid" in out
    rc, out, err = cli("run", data=dirty_data, check_rc=3)
    assert f"{len(POISON)} dead letters" in out and err.count("\n") == 1
    letters = deadletters(cli, dirty_data)
    assert [(d["offset"], d["reason"]) for d in letters] == list(zip(offsets, POISON_REASONS))
    assert letters[0]["raw"] == SURROGATE_ID.decode() and letters[0]["source"] == f"dirty.jsonl:{offsets[0] + 1}"
    # the state is what the other lines alone make
    cli("ingest", str(write(tmp_path / "clean.jsonl", clean)), data=clean_data)
    cli("run", data=clean_data, check_rc=None)
    for command in ("positions", "wallets", "books"):
        assert cli(command, "--json", data=dirty_data)[1] == cli(command, "--json", data=clean_data)[1]
    assert cli("run", data=dirty_data)[1].startswith("applied 0 events")  # and it stays healthy


def test_a_fill_beyond_the_limits_already_in_the_log_is_a_dead_letter_and_run_goes_on(tmp_path, cli):
    """A record written before the limits existed (the log is not validated again): the reducer refuses it."""
    data = tmp_path / "data"
    events = list(generate(6, 200, 10))
    huge = m.Fill("huge", events[-1].ts, "T000001", "BTCUSDT", "BOTH", "buy", 10_000_000 * U, 1_000_000 * U, 0)
    with EmbeddedLog(data / "log") as log:
        for event in events[:100] + [huge] + events[100:]:
            log.append(encode_record(event))
        log.commit()
    rc, out, err = cli("run", data=data, check_rc=3)
    assert err.count("\n") == 1
    letters = deadletters(cli, data)
    assert [(d["offset"], d["reason"]) for d in letters] == [(100, "balance_overflow")]
    assert "applied 201 events" in out
    assert cli("run", data=data)[1].startswith("applied 0 events")


def test_ingest_of_one_partition_routes_a_deep_line_to_partition_0(tmp_path, cli):
    lines = [encode_line(event) for event in generate(7, 50, 5)]
    source = write(tmp_path / "deep.jsonl", lines[:20] + [DEEP] + lines[20:])
    out = cli("ingest", str(source), "--partition", "0", "--of", "2", data=tmp_path / "p0", check_rc=3)[1]
    assert "1 invalid" in out
    out = cli("ingest", str(source), "--partition", "1", "--of", "2", data=tmp_path / "p1")[1]
    assert "0 invalid" in out


def test_poison_lines_published_to_kafka_are_dead_letters_and_serve_keeps_up(tmp_path, broker, cli):
    prefix = unique_prefix("poison")
    args = ["--bootstrap", broker, "--prefix", prefix]
    lines, offsets = session_with_poison(tmp_path, count=300)
    source = write(tmp_path / "poison.jsonl", lines)
    cli("topics", *args, "--partitions", "1", data=tmp_path)
    rc, out, err = cli("publish", str(source), *args, data=tmp_path, check_rc=3)
    assert f"published {len(lines)} lines" in out and f"{len(POISON)} invalid" in out
    offline = tmp_path / "offline"
    cli("ingest", str(source), data=offline, check_rc=3)
    cli("run", data=offline, check_rc=3)
    expected = cli("digest", data=offline)[1].strip()
    assert expected.startswith(f"{len(lines) - 1} ")

    serve = Serve(broker, prefix, tmp_path / "svc", "--partitions", "0")
    serve.wait_for({0: len(lines) - 1})
    assert serve.stop() == 0, serve.log_tail()
    assert cli("digest", data=partition_dir(tmp_path / "svc", KafkaSettings("unused", prefix=prefix), 0))[1].strip() == expected
    letters = [json.loads(r.value) for r in topic_records(broker, f"{prefix}.deadletter", 1)[0]]
    assert [(d["offset"], d["reason"]) for d in letters] == list(zip(offsets, POISON_REASONS))
