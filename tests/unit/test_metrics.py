"""The Prometheus text and health document of `ringfence serve` (ops.metrics), without a service."""

import json
import urllib.error
import urllib.request

import pytest

from ringfence.ops.cli import DEFAULT_KAFKA_API
from ringfence.ops.kafka_log import DEFAULT_API_VERSION
from ringfence.ops.metrics import Metrics, PartitionStatus, serve_metrics


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


def test_the_cli_default_api_version_is_the_one_of_the_kafka_backend():
    assert DEFAULT_KAFKA_API == DEFAULT_API_VERSION
