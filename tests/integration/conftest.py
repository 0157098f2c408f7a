import os
import subprocess
import sys
from pathlib import Path

import pytest


def ringfence(*args, data: Path, stdin: bytes | None = None, env: dict | None = None, check_rc: int | None = 0):
    """Run the real CLI in a fresh process; return (rc, stdout, stderr)."""
    full_env = {**os.environ, "RINGFENCE_DATA": str(data), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "ringfence.ops.cli", *args],
        input=stdin, capture_output=True, env=full_env, timeout=600,
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    if check_rc is not None:
        assert result.returncode == check_rc, f"rc={result.returncode}\nstdout={out[-2000:]}\nstderr={err[-2000:]}"
    return result.returncode, out, err


@pytest.fixture
def cli():
    return ringfence


# -- the real broker (DESIGN.md §7) ------------------------------------------------------


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """Tansu on a free loopback port for the whole session; stopped by its own pid."""
    import signal

    from ringfence.ops.broker import free_port, start_broker

    port = free_port()
    process = start_broker(port, log_path=tmp_path_factory.mktemp("broker") / "tansu.log")
    yield f"127.0.0.1:{port}"
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(3)
    except subprocess.TimeoutExpired:  # it drains open client connections first; not worth waiting for
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.fixture
def own_broker(tmp_path):
    """A broker of the test's own (kafka_harness.OwnBroker), to kill; killed after the test."""
    from tests.integration.kafka_harness import OwnBroker

    own = OwnBroker(tmp_path)
    yield own
    own.kill()


@pytest.fixture(autouse=True)
def no_service_outlives_its_test():
    """A failing Kafka test must not leave `ringfence serve` processes behind."""
    yield
    from tests.integration.kafka_harness import Serve

    Serve.kill_all()
