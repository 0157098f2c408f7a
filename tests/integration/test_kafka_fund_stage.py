"""One answer at any partition count, over a real broker: the fund stage across Kafka partitions.

An ADL-heavy session (tests/property/streams.py: crashes that drain two
insurance funds, a hostile engine's answers, a market that moves between
funds) is ingested into one embedded log, and published to Kafka with 1, 2
and 4 partitions for `serve`. The commands and cancels (ids, accounts,
quantities, prices), the fund balances and the positions must be the
embedded log's on every partition count; and again after a `serve` instance
is killed with -9 in the middle of the ADL storm and its partitions are
rebalanced between its restart and a second instance. On 2 partitions the
reports topic also holds records no partition of it sent (another partition
count, an unknown partition, not a record): each is a dead letter on the
dead-letters topic and none changes an answer.
"""

import json
import signal
from collections import defaultdict
from decimal import Decimal

from ringfence.events.json_codec import encode_line
from ringfence.ops.fund_board import PHASE_REPORT, ReportRecord, encode_record
from ringfence.ops.kafka_log import REPORTS, KafkaLog, KafkaSettings
from ringfence.ops.partitioning import route
from ringfence.ops.serve import partition_dir
from ringfence.projections.fund_stage import Report
from tests.integration.kafka_harness import Serve, topic_records, unique_prefix, wait_until
from tests.integration.test_kafka import kafka_args, write
from tests.property.streams import adversarial_stream

SEED, COUNT = 20261205, 1500


def _rows(cli, kind: str, data) -> list[dict]:
    return [json.loads(line) for line in cli(kind, "--json", data=data)[1].splitlines()]


def _answer(record: dict) -> str:
    """A command or cancel as the matching engine acts on it: where a partition's log put its trigger aside."""
    return json.dumps({k: v for k, v in record.items() if k != "trigger_offset"}, sort_keys=True)


def outcome(cli, dirs: list) -> dict:
    funds: dict[str, Decimal] = defaultdict(Decimal)
    for data in dirs:
        for row in _rows(cli, "books", data):
            if row["book"] == "insurance_fund":
                funds[row["key"]] += Decimal(row["balance"])
    return {
        "commands": sorted(_answer(r) for data in dirs for r in _rows(cli, "commands", data)),
        "funds": {domain: balance for domain, balance in funds.items() if balance},
        # adl_quantile ranks a position among its partition's own positions (docs/decisions.md): left out here
        "positions": sorted(json.dumps({k: v for k, v in r.items() if k != "adl_quantile"}, sort_keys=True)
                            for data in dirs for r in _rows(cli, "positions", data)),
        # BARRIERS DECISIONS DIGEST of the fund stage's chain: one line for all partitions, the embedded log's
        "fund stage": sorted({cli("digest", "--fund-stage", data=data)[1] for data in dirs}),
    }


def _session(tmp_path) -> tuple[list[bytes], object]:
    lines = [encode_line(event) for event, _ in adversarial_stream(SEED, COUNT)]
    return lines, write(tmp_path, "session.jsonl", lines)


def _ends(lines: list[bytes], partitions: int) -> dict[int, int]:
    counts = defaultdict(int)
    for line in lines:
        for p in route(line, partitions)[1]:
            counts[p] += 1
    return {p: counts[p] - 1 for p in range(partitions)}


def _embedded(tmp_path, cli, source) -> dict:
    cli("ingest", str(source), data=tmp_path / "embedded", check_rc=None)
    cli("run", data=tmp_path / "embedded", check_rc=None)
    expected = outcome(cli, [tmp_path / "embedded"])
    adl = sum(json.loads(c)["type"] == "adl" for c in expected["commands"])
    assert adl >= 100 and len(expected["funds"]) == 2, (adl, expected["funds"])  # an ADL storm, two funds
    assert int(expected["fund stage"][0].split()[1]) >= 50, expected["fund stage"]  # barriers that decided
    return expected


def _strangers(settings: KafkaSettings) -> list[tuple[str, int, str]]:
    """Report records no partition of this 2-partition topic sent, written before `serve` reads the topic:
    (source, offset, reason) of the dead letter each must become."""
    bad = [  # (reports partition, payload, reason)
        (0, encode_record(ReportRecord(2, 5, 1, PHASE_REPORT, Report(5, "m", 1, (), (), ()))), "unknown_partition"),
        (1, encode_record(ReportRecord(4, 1, 1, PHASE_REPORT, Report(1, "m", 1, (), (), ()))), "unknown_partition"),
        (1, b"{not a report", "undecodable_record"),
    ]  # fmt: skip
    expected = []
    for partition in (0, 1):
        with KafkaLog(settings, settings.topic(REPORTS), partition) as log:
            for offset, (_, payload, reason) in enumerate(b for b in bad if b[0] == partition):
                log.append(payload)
                expected.append((f"{settings.topic(REPORTS)}/{partition}", offset, reason))
            log.commit()
    return sorted(expected)


def test_an_adl_heavy_session_gives_the_embedded_answers_on_1_2_and_4_partitions(tmp_path, broker, cli):
    lines, source = _session(tmp_path)
    expected = _embedded(tmp_path, cli, source)
    for partitions in (1, 2, 4):
        prefix = unique_prefix(f"fund{partitions}")
        cli("topics", *kafka_args(broker, prefix), "--partitions", str(partitions), data=tmp_path)
        cli("publish", str(source), *kafka_args(broker, prefix), data=tmp_path)
        settings = KafkaSettings(broker, prefix=prefix)
        strangers = _strangers(settings) if partitions == 2 else []
        serve = Serve(broker, prefix, tmp_path / f"svc-{partitions}")
        serve.wait_for(_ends(lines, partitions))
        lag = serve.metrics()
        assert serve.stop() == 0, serve.log_tail()
        if strangers:  # used by no barrier (the answers below are the embedded log's), each a dead letter
            dead = [letter for records in topic_records(broker, f"{prefix}.deadletter", partitions) for r in records
                    if (letter := json.loads(r.value))["source"].startswith(f"{prefix}.reports/")]  # fmt: skip
            assert sorted((d["source"], d["offset"], d["reason"]) for d in dead) == strangers, dead
            assert f"ringfence_report_dead_letters_total {len(strangers)}\n" in lag, [
                line for line in lag.splitlines() if "report_dead" in line]
        dirs = [partition_dir(tmp_path / f"svc-{partitions}", settings, p) for p in range(partitions)]
        got = outcome(cli, dirs)
        for name in expected:
            assert got[name] == expected[name], f"{name} on {partitions} partitions"
        published = [_answer(json.loads(r.value)) for records in
                     topic_records(broker, f"{prefix}.commands", partitions) for r in records]  # fmt: skip
        assert sorted(published) == expected["commands"], f"the commands topic on {partitions} partitions"
        assert all(f'ringfence_fund_stage_lag{{partition="{p}"}} 0' in lag for p in range(partitions))


def test_kill_9_in_the_adl_storm_and_a_rebalance_change_no_answer(tmp_path, broker, cli):
    lines, source = _session(tmp_path)
    expected = _embedded(tmp_path, cli, source)
    prefix, partitions = unique_prefix("fundkill"), 2
    settings = KafkaSettings(broker, prefix=prefix)
    cli("topics", *kafka_args(broker, prefix), "--partitions", str(partitions), data=tmp_path)
    cli("publish", str(source), *kafka_args(broker, prefix), data=tmp_path)
    ends = _ends(lines, partitions)

    first = Serve(broker, prefix, tmp_path / "a")
    # the storm: ADL commands are published from early on; kill once half of the session is applied
    wait_until(lambda: sum(first.offsets().values()) >= sum(ends.values()) // 2, 120, "half the session", every=0.05)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    restarted, second = Serve(broker, prefix, tmp_path / "a"), Serve(broker, prefix, tmp_path / "b")

    def finished():
        owned = {}
        for serve, data in ((restarted, tmp_path / "a"), (second, tmp_path / "b")):
            for p, offset in serve.offsets().items():
                owned[p] = (offset, data)
        return owned if {p: o for p, (o, _) in owned.items()} == ends else None

    owned = wait_until(finished, 180, "both partitions to the end")
    assert {data for _, data in owned.values()} == {tmp_path / "a", tmp_path / "b"}, owned  # rebalanced
    for serve in (restarted, second):
        assert serve.stop() == 0, serve.log_tail()
    got = outcome(cli, [partition_dir(data, settings, p) for p, (_, data) in sorted(owned.items())])
    assert got["funds"] == expected["funds"] and got["positions"] == expected["positions"]
    assert got["fund stage"] == expected["fund stage"]
    # the outbox publishes at least once: what the killed instance had sent may come again, the same each time
    published = [json.loads(r.value) for records in topic_records(broker, f"{prefix}.commands", partitions)
                 for r in records]  # fmt: skip
    by_id = defaultdict(set)
    for record in published:
        by_id[record.get("cancel_id") or record["command_id"]].add(json.dumps(record, sort_keys=True))
    assert all(len(versions) == 1 for versions in by_id.values())
    assert sorted({_answer(r) for r in published}) == expected["commands"]
