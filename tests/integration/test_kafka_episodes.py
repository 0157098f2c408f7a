"""One session, one set of liquidation command ids: the embedded log and Kafka with 1, 2 and 4 partitions.

The session is a demo's whole log (a matching engine answered its commands by
id), ingested as it is into one embedded log, and published to Kafka with 1, 2
and 4 partitions for `serve`. Each position gets the same `liquidate` command
ids everywhere. The demo seed's fund never runs dry, so there is no ADL here
(test_kafka_fund_stage.py is the ADL-heavy session on 1, 2 and 4 partitions).
"""

import json
from collections import defaultdict

from ringfence.events.embedded import EmbeddedLog
from ringfence.events.json_codec import encode_line
from ringfence.events.log_codec import decode_record
from ringfence.ops.demo import run_demo
from ringfence.ops.partitioning import route
from tests.integration.kafka_harness import Serve, topic_records, unique_prefix, wait_until
from tests.integration.test_kafka import kafka_args


def by_position(records: list[dict]) -> tuple[dict, dict]:
    """(position -> liquidate ids in order, id -> the positions it names) of one stream of command records."""
    liquidate, names = defaultdict(list), defaultdict(set)
    for record in records:
        if record["type"] == "liquidate":
            key = (record["account"], record["market"], record["position_side"])
            liquidate[key].append(record["command_id"])
            names[record["command_id"]].add(key)
        elif record["type"] == "adl":
            names[record["command_id"]].add((record["bankrupt_account"], record["market"], record["bankrupt_position_side"]))
        elif record.get("bankrupt_account"):  # an adl command's cancel names the bankrupt position too
            names[record["command_id"]].add((record["bankrupt_account"], record["market"], record["bankrupt_position_side"]))
        else:
            names[record["command_id"]].add((record["account"], record["market"], record["position_side"]))
    return dict(liquidate), names


def test_the_same_session_gives_the_same_liquidate_ids_on_the_embedded_log_and_on_1_2_4_partitions(tmp_path, broker, cli):
    summary = run_demo(tmp_path / "demo", seed=1, traders=300, events=12_000)
    assert summary.commands > 100 and summary.adl_commands == 0 and summary.stuck_positions == 0
    with EmbeddedLog(tmp_path / "demo" / "log", writable=False) as log:
        lines = [encode_line(decode_record(payload)) for _, payload in log.read(0)]
    source = tmp_path / "session.jsonl"
    source.write_bytes(b"".join(line + b"\n" for line in lines))

    # the same session ingested into one embedded log, as a user would
    cli("ingest", str(source), data=tmp_path / "embedded", check_rc=None)
    cli("run", data=tmp_path / "embedded", check_rc=None)
    embedded = [json.loads(line) for line in cli("commands", "--json", data=tmp_path / "embedded")[1].splitlines()]
    expected, names = by_position(embedded)
    assert sum(len(ids) for ids in expected.values()) == summary.commands
    assert all(len(keys) == 1 for keys in names.values())  # no id names two positions

    for partitions in (1, 2, 4):
        prefix = unique_prefix(f"ids{partitions}")
        cli("topics", *kafka_args(broker, prefix), "--partitions", str(partitions), data=tmp_path)
        cli("publish", str(source), *kafka_args(broker, prefix), data=tmp_path)
        ends = defaultdict(int)
        for line in lines:
            for p in route(line, partitions)[1]:
                ends[p] += 1
        serve = Serve(broker, prefix, tmp_path / f"svc-{partitions}")
        serve.wait_for({p: ends[p] - 1 for p in range(partitions)})
        gauges = [f'ringfence_stuck_positions{{partition="{p}"}}' for p in range(partitions)]

        def gauges_shown():
            text = serve.metrics()
            return text if all(gauge in text for gauge in gauges) else None

        metrics = wait_until(gauges_shown, 60, "the stuck-position gauges")
        assert all(f"{gauge} 0" in metrics for gauge in gauges)
        assert serve.stop() == 0, serve.log_tail()
        published = topic_records(broker, f"{prefix}.commands", partitions)
        every = [json.loads(record.value) for records in published for record in records]
        got, got_names = by_position(every)
        adl = sum(record["type"] == "adl" for record in every)
        assert adl == 0, f"{partitions} partitions: {adl} ADL commands where the embedded log has none"
        assert got == expected, f"{partitions} partitions"
        assert all(len(keys) == 1 for keys in got_names.values())
        assert set(got_names) == set(names)  # the cancels name the same commands too
