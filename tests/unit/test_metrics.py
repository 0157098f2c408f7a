"""The Prometheus text and health document of `ringfence serve` (ops.metrics), without a service."""

import json
import select
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest

from ringfence.ops.cli import DEFAULT_BROKER_TIMEOUT, DEFAULT_KAFKA_API
from ringfence.ops.kafka_log import DEFAULT_API_VERSION
from ringfence.ops.metrics import Metrics, PartitionStatus, serve_metrics
from ringfence.ops.serve import BROKER_TIMEOUT_SECONDS


def samples(text: str) -> dict[str, str]:
    """name{labels} -> value, checking that every sample belongs to a declared family."""
    declared, found = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            assert series.split("{")[0] in declared, line
            found[series] = value
    return found


def test_metrics_render_per_partition_lag_counts_and_the_last_digest():
    metrics = Metrics()
    metrics.status = "ok"
    metrics.events_total = 42
    metrics.partitions[0] = PartitionStatus(offset=9, highwater=15, open_positions=3, commands=2, deadletters=1,
                                            digest="ab12", digest_offset=9)  # fmt: skip
    metrics.partitions[2] = PartitionStatus(offset=-1)  # assigned, nothing fetched yet: no lag to report
    found = samples(metrics.render())
    assert found["ringfence_up"] == "1" and found["ringfence_events_total"] == "42"
    assert found['ringfence_partition_lag{partition="0"}'] == "5"  # records 10..14 not yet applied
    assert 'ringfence_partition_lag{partition="2"}' not in found
    assert found['ringfence_partition_offset{partition="2"}'] == "-1"
    assert found['ringfence_liquidations_total{partition="0"}'] == "2"
    assert found['ringfence_deadletters_total{partition="0"}'] == "1"
    assert found['ringfence_last_digest_info{partition="0",offset="9",digest="ab12"}'] == "1"


def test_metrics_render_the_adl_quantile_distribution_once_a_digest_counted_it():
    metrics = Metrics()
    metrics.partitions[0] = PartitionStatus(offset=9, adl_quantiles=[3, 1, 0, 0, 2])
    metrics.partitions[1] = PartitionStatus(offset=4)  # no digest yet: no samples
    found = samples(metrics.render())
    assert [found[f'ringfence_adl_quantile_positions{{partition="0",quantile="{q}"}}'] for q in range(5)] == \
        ["3", "1", "0", "0", "2"]  # fmt: skip
    assert not any('partition="1",quantile' in series for series in found)


def test_health_is_degraded_with_a_reason_for_each_halted_partition_and_a_silent_broker():
    metrics = Metrics()
    metrics.status, metrics.broker_timeout = "ok", 2.0
    metrics.broker_contact = time.monotonic()
    metrics.partitions[0] = PartitionStatus(offset=5)
    metrics.partitions[1] = PartitionStatus(offset=7, halted="ringfence.events partition 1: the record at offset 8 fails")
    health = metrics.health()
    assert health["status"] == "degraded" and health["broker_up"] is True
    assert health["reasons"] == ["partition 1 halted: ringfence.events partition 1: the record at offset 8 fails"]
    idle = {"barrier": 0, "waiting_for": [], "seconds": 0.0, "decisions": 0, "digest": ""}
    assert health["partitions"] == {"0": {"offset": 5, "lag": None, "halted": None, "fund_stage": idle},
                                    "1": {"offset": 7, "lag": None, "halted": health["partitions"]["1"]["halted"],
                                          "fund_stage": idle}}  # fmt: skip
    found = samples(metrics.render())
    assert found['ringfence_partition_halted{partition="0"}'] == "0"
    assert found['ringfence_partition_halted{partition="1"}'] == "1"
    assert found["ringfence_up"] == "0" and found["ringfence_broker_up"] == "1"

    metrics.partitions[1].halted = None
    assert metrics.health()["status"] == "ok" and samples(metrics.render())["ringfence_up"] == "1"
    metrics.broker_up, metrics.broker_contact = False, time.monotonic() - 3.2  # as the service's watcher sets it
    health = metrics.health()
    assert health["status"] == "degraded" and health["reasons"] == [
        "no answer from the broker for 3 s (--broker-timeout 2)"]  # fmt: skip
    found = samples(metrics.render())
    assert found["ringfence_up"] == "0" and found["ringfence_broker_up"] == "0"


def test_the_events_per_second_gauge_is_the_rate_over_the_window(monkeypatch):
    clock = iter([100.0, 102.0])
    monkeypatch.setattr("ringfence.ops.metrics.time.monotonic", lambda: next(clock))
    metrics = Metrics()
    metrics.sample()
    metrics.events_total = 500
    metrics.sample()
    assert metrics.events_per_second() == 250.0


def test_health_is_503_until_the_service_runs_and_unknown_paths_are_404():
    metrics = Metrics()
    server = serve_metrics(metrics, 0)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(urllib.error.HTTPError) as starting:
            urllib.request.urlopen(url + "/health", timeout=5)
        assert starting.value.code == 503 and json.loads(starting.value.read())["status"] == "starting"
        metrics.status = "ok"
        assert json.loads(urllib.request.urlopen(url + "/health", timeout=5).read())["status"] == "ok"
        with pytest.raises(urllib.error.HTTPError) as unknown:
            urllib.request.urlopen(url + "/nothing", timeout=5)
        assert unknown.value.code == 404
    finally:
        server.shutdown()


def test_the_cli_defaults_are_the_ones_of_the_kafka_backend_and_the_service():
    assert DEFAULT_KAFKA_API == DEFAULT_API_VERSION
    assert DEFAULT_BROKER_TIMEOUT == BROKER_TIMEOUT_SECONDS


def _half_sent(port: int) -> socket.socket:
    """A client that sends the start of a request and then nothing."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    return client


def _until_closed(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    received = b""
    while chunk := client.recv(4096):
        received += chunk
    client.close()
    return received


def test_half_sent_requests_time_out_and_extra_connections_are_refused():
    server = serve_metrics(Metrics(), 0, read_timeout=1.5, max_connections=4)
    port = server.server_address[1]
    try:
        clients = [_half_sent(port) for _ in range(20)]  # on the old server: 20 threads waiting for ever
        started = time.monotonic()
        answers = [_until_closed(client) for client in clients]
        assert time.monotonic() - started < 5  # the held ones are dropped after the read timeout
        held = [a for a in answers if a == b""]  # dropped without an answer: they never finished their request
        refused = [a for a in answers if a.startswith(b"HTTP/1.0 503")]
        assert len(held) == 4 and len(refused) == 16
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200  # slots free again
    finally:
        server.shutdown()


def test_a_request_sent_one_byte_at_a_time_is_cut_at_its_deadline():
    server = serve_metrics(Metrics(), 0, read_timeout=1.0, deadline=1.5, max_connections=4)
    try:
        client = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
        started = time.monotonic()
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n"[:15]:  # a byte every 0.3 s: inside the read timeout
            if select.select([client], [], [], 0.3)[0]:
                break  # the server closed the connection
            client.sendall(bytes([byte]))
        try:
            assert client.recv(4096) == b""
        except ConnectionResetError:  # it had closed before our last byte
            pass
        assert 1.5 <= time.monotonic() - started < 3.5
    finally:
        server.shutdown()


def _handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def test_a_client_reset_is_no_traceback(capsys):
    server = serve_metrics(Metrics(), 0)
    try:
        client = _half_sent(server.server_address[1])
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # linger 0: the connection is reset, and the server's read fails with ECONNRESET
        deadline = time.monotonic() + 10
        while _handler_threads() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the handler to end, not timing it
        assert not _handler_threads()
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) <= 1, err


def test_a_partition_waiting_at_a_barrier_longer_than_the_broker_timeout_degrades_health():
    metrics = Metrics()
    metrics.status, metrics.broker_timeout = "ok", 2.0
    metrics.broker_contact = time.monotonic()
    metrics.partitions[0] = PartitionStatus(offset=5, fund_stage_seconds=1.5, fund_stage_waiting=[1], fund_stage_barrier=9)
    assert metrics.health()["status"] == "ok"  # waiting for a moment is the normal barrier
    assert samples(metrics.render())['ringfence_fund_stage_lag{partition="0"}'] == "1.5"
    metrics.partitions[0].fund_stage_seconds = 4.0
    health = metrics.health()
    assert health["status"] == "degraded" and health["reasons"] == [
        "partition 0 has waited 4 s at barrier 9 for the fund-stage reports of partitions [1]"]  # fmt: skip
    assert health["partitions"]["0"]["fund_stage"] == {"barrier": 9, "waiting_for": [1], "seconds": 4.0,
                                                   "decisions": 0, "digest": ""}
    assert samples(metrics.render())["ringfence_up"] == "0"
