"""ringfence as a Kafka service, against the real broker (Tansu on loopback, DESIGN.md §7)."""

import json
import signal
import subprocess
import sys
import threading
from collections import Counter

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ringfence.core.digest import compute_digest
from ringfence.core.limits import DEADLETTER_RAW_BYTES
from ringfence.events.json_codec import decode_line, encode_line
from ringfence.ops.kafka_log import DEFAULT_API_VERSION, KafkaLog, KafkaSettings, ensure_topics
from ringfence.ops.metrics import Metrics
from ringfence.ops.partitioning import account_partition, route
from ringfence.ops.serve import Service, partition_dir
from ringfence.ops.simulate import generate
from ringfence.projections.outputs import Alert
from ringfence.replay.partitioned import run_partitioned
from tests.integration.kafka_harness import Serve, topic_records, unique_prefix, wait_until

PARTITIONS = 4
CHAIN_EVERY = "300"
MALFORMED = [
    b'{"type":"mark","id":"bad-1","ts":1,"market":"BTCUSDT","price":"NaN"}',  # to every partition
    b'{"type":"fill","id":"bad-2","ts":1,"account":"T000003","market":"BTCUSDT","side":"buy","qty":"-1"}',
    b"this is not json",  # partition 0
]


def session(tmp_path, seed: int, count: int, traders: int, malformed=()) -> list[bytes]:
    lines = [encode_line(event) for event in generate(seed, count, traders)]
    for n, bad in enumerate(malformed):
        lines.insert(len(lines) * (n + 1) // (len(malformed) + 1), bad)
    return lines


def write(tmp_path, name: str, lines: list[bytes]):
    path = tmp_path / name
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def expected_partitions(lines: list[bytes], partitions: int = PARTITIONS) -> dict[int, dict]:
    """What serve must hold per partition: the lines routed as `publish` routes them, each partition reduced in
    process with the fund stage between them (replay.partitioned), without Kafka."""
    events = [decode_line(line, "session") for line in lines]
    parts = run_partitioned(events, partitions, lambda account: account_partition(account, partitions),
                            targets=[route(line, partitions)[1] for line in lines])  # fmt: skip
    return {part.number: {
        "offset": part.state.offset, "digest": compute_digest(part.state, part.projection.canonical_sections()),
        "commands": [output.command_id for _, output in part.outputs if type(output) is not Alert],
        "rejections": sum(v is not None and v.kind == "rejection" for _, _, v in part.verdicts),
        "deadletters": [offset for offset, _, v in part.verdicts if v is not None and v.kind == "deadletter"],
    } for part in parts}  # fmt: skip


def offline(tmp_path, cli, source, partitions: int = PARTITIONS) -> dict[int, dict]:
    """Each partition's slice ingested into its own embedded log and run: the partition as one alone (without the
    fund stage's view of the others), for what does not depend on them (a projection of its events)."""
    expected = {}
    for p in range(partitions):
        data = tmp_path / f"offline-{source.stem}-{p}"
        cli("ingest", str(source), "--partition", str(p), "--of", str(partitions), data=data, check_rc=None)
        cli("run", "--chain-every", CHAIN_EVERY, data=data, check_rc=None)
        offset, digest = cli("digest", data=data)[1].split()
        commands = [json.loads(line)["command_id"] for line in cli("commands", "--json", data=data)[1].splitlines()]
        deadletters = [json.loads(line) for line in cli("deadletters", "--json", data=data)[1].splitlines()]
        rejections = cli("rejections", "--json", data=data)[1].splitlines()
        chain = [json.loads(line) for line in cli("chain", "--json", data=data)[1].splitlines()]
        expected[p] = {"offset": int(offset), "digest": digest, "commands": commands, "deadletters": deadletters,
                       "rejections": len(rejections), "chain": chain}  # fmt: skip
    return expected


def kafka_args(broker: str, prefix: str) -> list[str]:
    return ["--bootstrap", broker, "--prefix", prefix]


def service_digest(cli, data, prefix: str, partition: int) -> str:
    settings = KafkaSettings("unused", prefix=prefix)
    return cli("digest", data=partition_dir(data, settings, partition))[1].strip()


def published_commands(broker: str, prefix: str) -> list[list[dict]]:
    return [[json.loads(r.value) for r in records] for records in topic_records(broker, f"{prefix}.commands", PARTITIONS)]


def test_a_session_published_to_kafka_gives_the_digests_and_command_ids_of_the_embedded_log(tmp_path, broker, cli):
    prefix = unique_prefix("parity")
    source = write(tmp_path, "session.jsonl", session(tmp_path, seed=21, count=6_000, traders=60, malformed=MALFORMED))
    out = cli("topics", *kafka_args(broker, prefix), "--partitions", str(PARTITIONS), data=tmp_path)[1]
    assert f"{prefix}.events  {PARTITIONS} partitions" in out
    _, out, err = cli("publish", str(source), *kafka_args(broker, prefix), data=tmp_path, check_rc=3)
    assert "3 invalid" in out and err.count("\n") == 1
    expected = expected_partitions(source.read_bytes().splitlines())
    offline(tmp_path, cli, source)  # partition 1 alone, for the projection of its events below
    assert sum(len(e["commands"]) for e in expected.values()) > 10  # liquidations happen in this session

    serve = Serve(broker, prefix, tmp_path / "svc", "--chain-every", CHAIN_EVERY)
    serve.wait_for({p: expected[p]["offset"] for p in range(PARTITIONS)})
    # the service digests once it is idle a moment after applying (serve.DIGEST_IDLE_SECONDS): wait for that
    wanted = [f'digest="{expected[p]["digest"]}"' for p in range(PARTITIONS)]

    def digested() -> str | None:
        text = serve.metrics()
        return text if all(w in text for w in wanted) else None

    metrics = wait_until(digested, 30, "the last digests in /metrics")
    assert serve.stop() == 0, serve.log_tail()

    commands = published_commands(broker, prefix)
    deadletters = topic_records(broker, f"{prefix}.deadletter", PARTITIONS)
    chains = topic_records(broker, f"{prefix}.digests", PARTITIONS)
    for p in range(PARTITIONS):
        digest = f"{expected[p]['offset']} {expected[p]['digest']}"
        assert service_digest(cli, tmp_path / "svc", prefix, p) == digest
        assert cli("replay", "--partition", str(p), *kafka_args(broker, prefix), data=tmp_path)[1].strip() == digest
        assert [c["command_id"] for c in commands[p]] == expected[p]["commands"]
        assert [json.loads(r.value)["offset"] for r in deadletters[p]] == expected[p]["deadletters"]
        assert [json.loads(r.value) for r in chains[p]] != []  # checked below by --verify, link by link
        verified = cli("replay", "--verify", "--partition", str(p), *kafka_args(broker, prefix), data=tmp_path / "svc")
        assert verified[1].startswith(f"verified offsets 0..{expected[p]['offset']}:")
        assert f'ringfence_partition_lag{{partition="{p}"}} 0' in metrics
        assert f'digest="{expected[p]["digest"]}"' in metrics
    assert sum(len(d) for d in deadletters) == PARTITIONS + 2  # the bad mark on every partition, the rest once
    # --verify reads the commands topic too: a record there that no outbox holds is named
    producer = KafkaProducer(bootstrap_servers=broker, api_version=DEFAULT_API_VERSION)
    producer.send(f"{prefix}.commands", value=b'{"type":"liquidate","command_id":"forged"}', partition=0).get(10)
    producer.close()
    _, _, err = cli("replay", "--verify", "--partition", "0", *kafka_args(broker, prefix), data=tmp_path / "svc",
                    check_rc=1)  # fmt: skip
    assert f"the commands log's record at offset {len(commands[0])} is no command of the store's outbox" in err, err
    fees = ["project", "examples.fees:FeesPerAccount", "--json"]
    over_kafka = cli(*fees, "--partition", "1", *kafka_args(broker, prefix), data=tmp_path / "svc")[1]
    assert over_kafka == cli(*fees, data=tmp_path / f"offline-{source.stem}-1")[1] != ""  # a projection over Kafka
    hints = KafkaConsumer(bootstrap_servers=broker, api_version=DEFAULT_API_VERSION, group_id=f"{prefix}-project-"
                          "FeesPerAccount", enable_auto_commit=False)  # fmt: skip
    tp = TopicPartition(f"{prefix}.events", 1)
    assert hints.committed(tp) == expected[1]["offset"] + 1  # its own group, a progress hint
    hints.close()
    events = serve.log_events()
    assert sum(e["event"] == "dead_letter" for e in events) == 6
    assert all("partition" in e and "offset" in e for e in events if e["event"] in ("dead_letter", "digest"))


def test_a_poison_record_becomes_a_dead_letter_and_the_service_goes_on(tmp_path, broker, cli):
    prefix = unique_prefix("poison")
    settings = KafkaSettings(broker, prefix=prefix)
    ensure_topics(settings, 1)
    good = session(tmp_path, seed=22, count=300, traders=10)
    poison = [b"\x00\xff\xfe{", None, b"{" * 70_000, b'{"type":"deposit","id":"x","ts":1,"account":"a","asset":"USDT",'
              b'"amount":"1","extra":true}']  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=broker, api_version=DEFAULT_API_VERSION, max_request_size=2**20)
    for value in good[:150] + poison + good[150:]:
        producer.send(settings.topic("events"), value=value, key=b"any", partition=0)  # a null value needs a key
    producer.flush()
    producer.close()

    serve = Serve(broker, prefix, tmp_path / "svc", "--partitions", "0")
    last = len(good) + len(poison) - 1
    serve.wait_for({0: last})
    assert serve.health()["status"] == "ok"
    assert serve.stop() == 0
    letters = [json.loads(r.value) for r in topic_records(broker, settings.topic("deadletters"), 1)[0]]
    assert [(d["offset"], d["reason"]) for d in letters] == [
        (150, "malformed_json"), (151, "malformed_json"), (152, "record_too_large"), (153, "unknown_field")]
    assert all(d["source"] == f"{prefix}.events/0" and len(d["raw"]) <= DEADLETTER_RAW_BYTES for d in letters)
    # what came after the poison was applied: the same state as the good records alone, offsets aside
    data = tmp_path / "good"
    cli("ingest", str(write(tmp_path, "good.jsonl", good)), data=data)
    cli("run", data=data, check_rc=None)
    assert cli("positions", "--json", data=partition_dir(tmp_path / "svc", settings, 0))[1] == \
        cli("positions", "--json", data=data)[1]  # fmt: skip


def test_an_account_event_on_another_partition_than_its_key_is_a_dead_letter_in_serve_and_its_replay(
        tmp_path, broker, cli):  # fmt: skip
    prefix = unique_prefix("misrouted")
    settings = KafkaSettings(broker, prefix=prefix)
    ensure_topics(settings, 2)
    home = {account_partition(name, 2): name for name in ("alice", "bob", "carol", "dave")}
    deposit = lambda n, account, amount: (b'{"type":"deposit","id":"d%d","ts":%d,"account":"%s","asset":"USDT",'  # noqa: E731
                                          b'"amount":"%s"}' % (n, n, account.encode(), amount))  # fmt: skip
    by_partition = {0: [deposit(1, home[0], b"100"), deposit(2, home[1], b"50"), deposit(3, home[0], b"1")],
                    1: [deposit(4, home[1], b"7")]}  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=broker, api_version=DEFAULT_API_VERSION)
    for partition, values in by_partition.items():
        for value in values:  # as a producer with its own partitioner would: d2 lands on partition 0
            producer.send(settings.topic("events"), value=value, key=b"any", partition=partition)
    producer.flush()
    producer.close()

    serve = Serve(broker, prefix, tmp_path / "svc", "--partitions", "0,1")
    serve.wait_for({0: 2, 1: 0})
    assert serve.stop() == 0, serve.log_tail()
    [letter] = [json.loads(r.value) for r in topic_records(broker, settings.topic("deadletters"), 2)[0]]
    assert (letter["offset"], letter["reason"], letter["source"]) == (1, "wrong_partition", f"{prefix}.events/0")
    assert "belongs to partition 1 of 2" in letter["detail"] and '"d2"' in letter["raw"]
    wallets = {p: [json.loads(line) for line in
                   cli("wallets", "--json", data=partition_dir(tmp_path / "svc", settings, p))[1].splitlines()]
               for p in (0, 1)}  # fmt: skip
    assert [(w["account"], w["balance"]) for w in wallets[0]] == [(home[0], "101")], wallets  # nothing of d2
    assert [(w["account"], w["balance"]) for w in wallets[1]] == [(home[1], "7")], wallets
    # an audit replay of the partition judges the record as the service did
    rc, out, err = cli("replay", "--verify", "--partition", "0", *kafka_args(broker, prefix),
                       data=tmp_path / "svc", check_rc=None)  # fmt: skip
    assert rc == 0, err


def test_restart_after_a_clean_stop_and_after_kill_9_resumes_from_the_stored_offsets(tmp_path, broker, cli):
    prefix = unique_prefix("restart")
    lines = session(tmp_path, seed=23, count=16_000, traders=150)
    thirds = [lines[: len(lines) // 6], lines[len(lines) // 6 : len(lines) * 2 // 3], lines[len(lines) * 2 // 3 :]]
    cli("topics", *kafka_args(broker, prefix), "--partitions", "2", data=tmp_path)
    svc = tmp_path / "svc"

    def publish(part: int, wait: bool = True):
        command = [sys.executable, "-m", "ringfence.ops.cli", "publish", str(write(tmp_path, f"part{part}.jsonl",
                   thirds[part])), *kafka_args(broker, prefix)]  # fmt: skip
        publisher = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        if wait:
            assert publisher.wait(120) == 0
        return publisher

    publish(0)
    first = expected_partitions(thirds[0], partitions=2)
    serve = Serve(broker, prefix, svc, "--partitions", "0,1")
    serve.wait_for({p: first[p]["offset"] for p in range(2)})
    assert serve.stop() == 0  # clean stop: drained and checkpointed

    serve = Serve(broker, prefix, svc, "--partitions", "0,1")
    resumed = wait_until(lambda: serve.offsets() or None, 30, "the restarted service")
    assert resumed == {p: first[p]["offset"] for p in range(2)}  # from the stored offsets, not 0
    publisher = publish(1, wait=False)  # while it serves
    wait_until(lambda: sum(serve.offsets().values()) > sum(resumed.values()) + 500, 60, "progress", every=0.05)
    at_kill = serve.offsets()
    assert serve.stop(signal.SIGKILL) == -signal.SIGKILL
    assert publisher.wait(120) == 0
    second = expected_partitions(thirds[0] + thirds[1], partitions=2)
    assert any(offset < second[p]["offset"] for p, offset in at_kill.items())  # killed mid-stream

    publish(2)
    whole = expected_partitions(lines, partitions=2)
    serve = Serve(broker, prefix, svc, "--partitions", "0,1")
    serve.wait_for({p: whole[p]["offset"] for p in range(2)})
    assert serve.stop() == 0
    for p in range(2):
        assert service_digest(cli, svc, prefix, p) == f"{whole[p]['offset']} {whole[p]['digest']}"
        rejections = cli("rejections", "--json", data=partition_dir(svc, KafkaSettings("", prefix=prefix), p))[1]
        assert len(rejections.splitlines()) == whole[p]["rejections"]  # a re-applied event would add duplicate_id
    commands = topic_records(broker, f"{prefix}.commands", 2)
    for p in range(2):
        published = [json.loads(r.value) for r in commands[p]]
        assert {c["command_id"] for c in published} == set(whole[p]["commands"])
        by_id = {}
        for command in published:  # at least once: a repeat is the identical command
            assert by_id.setdefault(command.get("cancel_id") or command["command_id"], command) == command


def test_two_instances_share_the_partitions_and_the_survivor_of_a_kill_9_takes_them_over(tmp_path, broker, cli):
    prefix = unique_prefix("group")
    lines = session(tmp_path, seed=24, count=8_000, traders=300)
    source = write(tmp_path, "session.jsonl", lines)
    expected = expected_partitions(lines)
    cli("topics", *kafka_args(broker, prefix), "--partitions", str(PARTITIONS), data=tmp_path)
    first, second = Serve(broker, prefix, tmp_path / "a"), Serve(broker, prefix, tmp_path / "b")
    wait_until(lambda: len(first.offsets()) + len(second.offsets()) == PARTITIONS and first.offsets()
               and second.offsets(), 60, "both instances to own partitions")  # fmt: skip
    assert set(first.offsets()).isdisjoint(second.offsets())
    publisher = subprocess.Popen([sys.executable, "-m", "ringfence.ops.cli", "publish", str(source),
                                  *kafka_args(broker, prefix)], stdout=subprocess.DEVNULL)  # while they serve
    wait_until(lambda: sum(second.offsets().values()) > 1_000, 60, "the second instance to make progress", every=0.05)
    at_kill = second.offsets()
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL
    assert publisher.wait(120) == 0
    assert any(offset < expected[p]["offset"] for p, offset in at_kill.items())  # killed mid-stream

    first.wait_for({p: expected[p]["offset"] for p in range(PARTITIONS)}, timeout=180)
    assert first.stop() == 0
    commands = published_commands(broker, prefix)
    for p in range(PARTITIONS):
        assert service_digest(cli, tmp_path / "a", prefix, p) == f"{expected[p]['offset']} {expected[p]['digest']}"
        ids = Counter(c["command_id"] for c in commands[p])
        assert set(ids) == set(expected[p]["commands"])  # none missing, none invented
        by_id = {}
        for command in commands[p]:
            assert by_id.setdefault(command.get("cancel_id") or command["command_id"], command) == command  # a duplicate is identical
    assert any(e["event"] == "assigned" and len(e["partitions"]) == PARTITIONS for e in first.log_events())


def test_the_product_never_asks_the_broker_for_end_offsets(tmp_path, broker, monkeypatch):
    """Tansu answers ListOffsets "latest" wrongly after a multi-record batch (DESIGN.md §7): reading and
    serving must not depend on that answer, so here it is made to fail outright."""
    settings = KafkaSettings(broker, prefix=unique_prefix("quirk"))
    ensure_topics(settings, 1)
    records = [encode_line(event) for event in generate(25, 1_000, 20)]
    with KafkaLog(settings, settings.topic("events"), 0) as log:
        for record in records:
            log.append(record)  # one producer batch: the case the broker gets wrong
    def refuse(*args, **kwargs):
        raise AssertionError("the product asked for end offsets")

    monkeypatch.setattr(KafkaConsumer, "end_offsets", refuse)
    monkeypatch.setattr(KafkaConsumer, "seek_to_end", refuse)
    assert [offset for offset, _ in KafkaLog(settings, settings.topic("events"), 0).read(0)] == list(range(1_000))

    metrics = Metrics()
    service = Service(settings, tmp_path / "svc", group=None, partitions=[0], metrics=metrics)
    watcher = threading.Thread(target=lambda: (wait_until(lambda: metrics.partitions.get(0) and
                                                          metrics.partitions[0].offset == 999, 60, "serve"),
                                               service.stop()), daemon=True)  # fmt: skip
    watcher.start()
    service.run()
    watcher.join(5)
    assert metrics.partitions == {} and metrics.events_total == 1_000
