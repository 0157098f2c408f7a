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
    assert "quiet index" in out and "run with liquidations" in out
