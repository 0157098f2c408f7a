"""`serve` when the broker stops answering, comes back as another log, or a record breaks the core (issue 13).

Time is driven by --broker-timeout (2 s here) and every wait is a poll of /health with a deadline. While
the broker is down the service is held with SIGSTOP, so that it meets the new broker's topics whole
(the topics are created, then written: without the hold it could see them between the two).
"""

import json
import signal
from contextlib import contextmanager

from ringfence.events.json_codec import encode_line
from ringfence.ops.kafka_log import KafkaLog, KafkaSettings, ensure_topics
from ringfence.ops.partitioning import route
from ringfence.ops.serve import FAULT_POISON, partition_dir
from ringfence.ops.simulate import generate
from tests.integration.kafka_harness import Serve, topic_records, unique_prefix, wait_until

BROKER_TIMEOUT = "2"


def session(seed: int, count: int) -> list[bytes]:
    return [encode_line(event) for event in generate(seed, count, 8)]


def produce(settings: KafkaSettings, records: dict[int, list[bytes]]) -> None:
    for partition, values in records.items():
        with KafkaLog(settings, settings.topic("events"), partition) as log:
            for value in values:
                log.append(value)


def health_until(serve: Serve, condition, what: str, timeout: float = 30) -> dict:
    def check():
        health = serve.health()
        assert serve.process.poll() is None, serve.log_tail()
        return health if health is not None and condition(health) else None

    return wait_until(check, timeout, what, every=0.1)


def broker_down(health: dict) -> bool:
    return health.get("broker_up") is False  # the old service had no such field: never down


@contextmanager
def held(serve: Serve):
    serve.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        serve.process.send_signal(signal.SIGCONT)


def published_letters(broker, settings: KafkaSettings, offsets: list[int]) -> None:
    """Until the dead letters of partition 0 on the broker are those of ``offsets``."""
    wait_until(lambda: [json.loads(r.value)["offset"] for r in topic_records(broker.address, settings.topic(
        "deadletters"), 1)[0]] == offsets, 30, f"the dead letters {offsets} to be published")  # fmt: skip


def events(serve: Serve, name: str) -> list[dict]:
    return [e for e in serve.log_events() if e["event"] == name]


def test_a_killed_broker_is_reported_and_one_that_comes_back_as_another_log_halts_the_partitions(tmp_path, own_broker):
    settings = KafkaSettings(own_broker.address, prefix=unique_prefix("lost"))
    first = {0: [], 1: []}  # one session as `publish` routes it: the partitions meet at its marks (fund stage)
    for line in session(31, 300):
        for p in route(line, 2)[1]:
            first[p].append(line)
    first[0].append(b"not json")  # a dead letter: the producer gets an id
    end0, end1 = len(first[0]) - 1, len(first[1]) - 1
    assert end1 > 99  # the other session below ends before it
    ensure_topics(settings, 2)
    produce(settings, first)
    args = (own_broker.address, settings.prefix, tmp_path / "svc", "--partitions", "0,1", "--broker-timeout",
            BROKER_TIMEOUT)  # fmt: skip
    serve = Serve(*args)
    serve.wait_for({0: end0, 1: end1})
    published_letters(own_broker, settings, [end0])

    # killed: after 2 s without an answer /health is 503 with the reason, and the gauges say so
    own_broker.kill()
    down = health_until(serve, broker_down, "the broker to count as down")
    assert down["status"] == "degraded" and down["reasons"][0].startswith("no answer from the broker for ")
    metrics = serve.metrics()
    assert "\nringfence_broker_up 0\n" in metrics and "\nringfence_up 0\n" in metrics
    # back, empty, and the same records written again (a topic restored): proven the same log, it goes on;
    # the outbox's producer id is unknown to the new broker: the producer is replaced (this error killed serve)
    with held(serve):
        own_broker.start()
        ensure_topics(settings, 2)
        produce(settings, first)
    health_until(serve, lambda h: h["status"] == "ok", "the service to be healthy again")
    produce(settings, {0: [b"not json"]})
    serve.wait_for({0: end0 + 1, 1: end1})
    published_letters(own_broker, settings, [end0 + 1])
    [renewed] = events(serve, "producer_renewed")  # Tansu names it either way, depending on what was in flight
    assert renewed["error"] in ("UnknownProducerIdError", "OutOfOrderSequenceNumberError")

    # killed again, and back with another session: the longer topic differs at the stored offset, the
    # shorter one ends before it; neither is applied
    own_broker.kill()
    health_until(serve, broker_down, "the broker to count as down again")
    with held(serve):
        own_broker.start()
        ensure_topics(settings, 2)
        produce(settings, {0: session(41, 400), 1: session(42, 100)})
    halted = health_until(serve, lambda h: h["broker_up"] and all(p["halted"] for p in h["partitions"].values()),
                          "both partitions to halt")  # fmt: skip
    topic = settings.topic("events")
    assert serve.offsets() == {0: end0 + 1, 1: end1} and halted["status"] == "degraded"
    assert halted["partitions"]["0"]["halted"].startswith(f"{topic} partition 0: the topic's record at the stored "
                                                          f"offset {end0 + 1} is not the one applied (fingerprint ")  # fmt: skip
    assert halted["partitions"]["1"]["halted"] == f"{topic} partition 1: the topic ends at offset 99, before the " \
                                                  f"stored offset {end1}"  # fmt: skip
    metrics = serve.metrics()
    assert '\nringfence_partition_halted{partition="0"} 1\n' in metrics and "\nringfence_broker_up 1\n" in metrics
    assert [e["level"] for e in events(serve, "broker_down") + events(serve, "broker_up")] == ["warning"] * 4
    lines = events(serve, "partition_halted")
    assert [(e["topic"], e["partition"], e["stored_offset"]) for e in lines] == [(topic, 0, end0 + 1), (topic, 1, end1)]
    assert lines[0]["topic_offset"] == end0 + 1 and lines[1]["topic_end"] == 99
    assert serve.stop() == 0

    # a restart does not finish the mix: the same two halts, nothing applied
    serve = Serve(*args)
    again = health_until(serve, lambda h: len([p for p in h["partitions"].values() if p["halted"]]) == 2,
                         "the restarted service to halt both partitions")  # fmt: skip
    assert {p: s["halted"] for p, s in again["partitions"].items()} == {
        p: s["halted"] for p, s in halted["partitions"].items()}  # fmt: skip
    assert serve.offsets() == {0: end0 + 1, 1: end1} and len(events(serve, "partition_halted")) == 2
    assert serve.stop() == 0


def test_a_record_that_breaks_the_core_halts_its_partition_only_and_again_after_a_restart(tmp_path, broker, cli):
    """The bug is the test-only fault RINGFENCE_FAULT_POISON (ops.serve): applying a record containing it raises."""
    settings = KafkaSettings(broker, prefix=unique_prefix("bug"))
    routed = {0: [], 1: []}  # one session as `publish` routes it: the partitions meet at its marks (fund stage)
    for line in session(51, 600):
        for p in route(line, 2)[1]:
            routed[p].append(line)
    good = routed[1]
    assert len(good) > 200
    poison = b'{"type":"deposit","id":"poison-pill","ts":1767225600000,"account":"T000001","asset":"USDT","amount":"5"}'
    ensure_topics(settings, 2)
    produce(settings, {0: routed[0], 1: good[:120] + [poison] + good[120:]})
    args = (broker, settings.prefix, tmp_path / "svc", "--partitions", "0,1")
    serve = Serve(*args, env={FAULT_POISON: "poison-pill"})
    # the other partition goes on to the next barrier and waits there for the halted one's report: the fund
    # stage stalls, it never decides without a partition (docs/decisions.md, "The fund stage")
    health = health_until(serve, lambda h: h["partitions"].get("1", {}).get("halted") and
                          h["partitions"]["0"]["fund_stage"]["waiting_for"] == [1],
                          "partition 1 to halt, partition 0 to wait for it")  # fmt: skip
    topic = settings.topic("events")
    assert health["status"] == "degraded" and health["partitions"]["1"]["offset"] == 119
    assert health["partitions"]["0"]["offset"] < len(routed[0]) - 1, health["partitions"]["0"]
    assert health["partitions"]["1"]["halted"] == f"{topic} partition 1: the record at offset 120 fails: " \
        f"RuntimeError: {FAULT_POISON} matches this record (a test-only fault)"  # fmt: skip
    assert health["reasons"][0] == f"partition 1 halted: {health['partitions']['1']['halted']}"
    metrics = serve.metrics()
    assert '\nringfence_partition_halted{partition="0"} 0\nringfence_partition_halted{partition="1"} 1\n' in metrics
    [line] = events(serve, "partition_halted")
    assert (line["level"], line["topic"], line["partition"], line["offset"]) == ("error", topic, 1, 120)
    assert line["record"] == poison.decode()
    assert serve.stop() == 0
    # everything before the poison was applied and checkpointed, and nothing of it
    before = tmp_path / "before"
    cli("ingest", "-", "--source", "good", data=before, stdin=b"".join(line + b"\n" for line in good[:120]))
    cli("run", data=before, check_rc=None)
    halted_at = cli("digest", data=partition_dir(tmp_path / "svc", settings, 1))[1]
    assert halted_at == cli("digest", data=before)[1] and halted_at.startswith("119 ")

    # restarted: halted at the same record with one line, and the other partition waits at the same barrier
    waited_at = health["partitions"]["0"]["offset"]
    serve = Serve(*args, env={FAULT_POISON: "poison-pill"})
    produce(settings, {0: [b"not json"] * 5})
    again = health_until(serve, lambda h: h["partitions"].get("1", {}).get("halted") and
                         h["partitions"]["0"]["fund_stage"]["waiting_for"] == [1], "the same halt and wait")  # fmt: skip
    assert again["partitions"]["1"]["halted"] == health["partitions"]["1"]["halted"]
    assert again["partitions"]["0"]["offset"] == waited_at
    assert [e["offset"] for e in events(serve, "partition_halted")] == [120]
    assert serve.stop() == 0
