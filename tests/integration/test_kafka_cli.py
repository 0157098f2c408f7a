"""The Kafka commands as an operator meets them: errors, topic checks, watch, and `ringfence broker`."""

import os
import signal
import subprocess
import sys

import pytest

from ringfence.events.json_codec import encode_line
from ringfence.ops.broker import free_port
from ringfence.ops.kafka_log import KafkaLog, KafkaSettings, ensure_topics
from ringfence.ops.simulate import generate
from tests.integration.kafka_harness import unique_prefix, wait_until


@pytest.mark.parametrize("command", [
    ["topics", "--partitions", "1"],
    ["publish", "-"],
    ["serve", "--partitions", "0", "--metrics-port", "0"],
    ["watch", "commands"],
    ["replay", "--partition", "0"],
])  # fmt: skip
def test_without_a_broker_each_kafka_command_fails_at_once_with_one_line(tmp_path, cli, command):
    nobody = f"127.0.0.1:{free_port()}"
    rc, out, err = cli(*command, "--bootstrap", nobody, data=tmp_path, stdin=b"", check_rc=1)
    assert err.splitlines() == [f"ringfence: error: no Kafka broker accepts connections at {nobody} "
                                "(start one with `ringfence broker`, or pass --bootstrap HOST:PORT)"]  # fmt: skip
    assert not (tmp_path / "ringfence.events-0").exists()  # serve created no store


@pytest.mark.parametrize("arguments, message", [
    (["serve", "--partitions", "0,x"], "ringfence serve: error: argument --partitions: '0,x' is not a list like "
                                       "0,2,3 (see ringfence serve --help)"),
    (["serve", "--partitions", ","], "ringfence serve: error: argument --partitions: names no partition (see "
                                     "ringfence serve --help)"),
    (["topics", "--partitions", "0"], "ringfence topics: error: argument --partitions: 0 is not at least 1 (see "
                                      "ringfence topics --help)"),
    (["watch", "commands", "--api-version", "two"], "ringfence: error: --api-version 'two' is not like 2.8"),
    (["serve", "--broker-timeout", "0"], "ringfence serve: error: argument --broker-timeout: 0 is not a number of "
                                         "seconds above 0 (see ringfence serve --help)"),
    (["serve", "--broker-timeout", "inf"], "ringfence serve: error: argument --broker-timeout: inf is not a number "
                                           "of seconds above 0 (see ringfence serve --help)"),
])  # fmt: skip
def test_bad_kafka_arguments_are_usage_errors(tmp_path, cli, arguments, message):
    rc, out, err = cli(*arguments, "--bootstrap", f"127.0.0.1:{free_port()}", data=tmp_path, check_rc=2)
    assert err.splitlines() == [message]


def test_missing_topics_and_other_partition_counts_are_named(tmp_path, broker, cli):
    prefix = unique_prefix("topics")
    args = ["--bootstrap", broker, "--prefix", prefix]
    line = encode_line(next(iter(generate(1, 1, 1))))
    for command in (["publish", "-"], ["serve", "--partitions", "0", "--metrics-port", "0"]):
        err = cli(*command, *args, data=tmp_path, stdin=line + b"\n", check_rc=1)[2]
        assert err.splitlines() == [f"ringfence: error: topic {prefix}.events does not exist "
                                    "(create it with `ringfence topics`)"]  # fmt: skip
    cli("topics", *args, "--partitions", "2", data=tmp_path)
    assert "2 partitions" in cli("topics", *args, "--partitions", "2", data=tmp_path)[1]  # idempotent
    err = cli("topics", *args, "--partitions", "3", data=tmp_path, check_rc=1)[2]
    assert len(err.splitlines()) == 1 and "other partition counts than 3" in err


def test_watch_prints_every_record_of_an_output_topic(tmp_path, broker, cli):
    settings = KafkaSettings(broker, prefix=unique_prefix("watch"))
    ensure_topics(settings, 2)
    sent = {b'{"command_id":"c%d"}' % n for n in range(10)}
    for partition in range(2):
        with KafkaLog(settings, settings.topic("commands"), partition) as log:
            for record in sorted(sent)[partition::2]:
                log.append(record)
    out = cli("watch", "commands", "--bootstrap", broker, "--prefix", settings.prefix, data=tmp_path)[1]
    assert set(out.encode().splitlines()) == sent and len(out.splitlines()) == 10


def test_the_broker_command_prints_its_address_serves_clients_and_stops_on_sigint_even_in_the_background(tmp_path, cli):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ringfence.ops.cli", "broker", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as `cmd &` does
    try:
        first = process.stdout.readline().decode()
        assert first.startswith(f"broker: 127.0.0.1:{port} ("), first + process.stderr.read().decode()
        out = cli("topics", "--bootstrap", f"127.0.0.1:{port}", "--partitions", "1", data=tmp_path)[1]
        assert "ringfence.events  1 partitions" in out
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    wait_until(lambda: cli("topics", "--bootstrap", f"127.0.0.1:{port}", "--partitions", "1", data=tmp_path,
                           check_rc=None)[0] == 1, 10, "the broker to be gone")  # fmt: skip
