"""The benchmark commands still run (tiny sizes, no timing asserted: timing lives in the benchmarks)."""

import subprocess
import sys


def bench(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout.decode()


def test_reduce_benchmark_runs():
    out = bench("ringfence.ops.bench.reduce", "--events", "5000", "--traders", "50", "--positions", "2000",
                "--with-liquidations")  # fmt: skip
    assert "ceiling" in out and "ratio run / ceiling" in out and "bytes each" in out


def test_liquidation_benchmark_runs():
    out = bench("ringfence.ops.bench.liquidation", "--sizes", "200", "--demo-events", "3000")
    assert "quiet index" in out and "projection in process" in out and "projection in a worker" in out
    assert "stop-losses" in out and "vs smallest" in out


def test_audit_benchmark_runs():
    out = bench("ringfence.ops.bench.audit", "--events", "2500", "--traders", "50", "--chain-every", "500")
    assert "replay --verify from offset 0 (5 links" in out and "from the nearest snapshot (snapshot " in out


def test_kafka_benchmark_runs():
    out = bench("ringfence.ops.bench.kafka", "--events", "2000", "--traders", "20", "--partitions", "2")
    assert "bare kafka-python consumer" in out and "serve catch-up / bare consumer" in out
