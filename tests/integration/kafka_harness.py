"""Test-harness helpers for the real broker. Workarounds for broker quirks live here, never in ops/."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from ringfence.ops.broker import free_port, start_broker
from ringfence.ops.kafka_log import DEFAULT_API_VERSION

_prefixes = itertools.count()


def unique_prefix(name: str) -> str:
    """Topics of one test: the broker is shared by the session."""
    return f"{name}-{os.getpid()}-{next(_prefixes)}"


def topic_records(bootstrap: str, topic: str, partitions: int) -> list[list]:
    """Every record of every partition, read to the high watermark of the fetch responses.

    The workaround of DESIGN.md §7: Tansu's ListOffsets "latest" is wrong after
    multi-record batches, so the harness never asks for end offsets.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=DEFAULT_API_VERSION, enable_auto_commit=False,
                             auto_offset_reset="earliest")  # fmt: skip
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    found = [[] for _ in tps]
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                found[tp.partition].extend(records)
            highs = [consumer.highwater(tp) for tp in tps]
            if all(h is not None and consumer.position(tp) >= h for tp, h in zip(tps, highs)):
                return found
        raise TimeoutError(f"{topic} not read to its end in 60 s")
    finally:
        consumer.close()


def wait_until(condition, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


class Serve:
    """A `ringfence serve` process with its metrics port."""

    running: list["Serve"] = []  # killed after each test by the conftest, even when the test failed

    def __init__(self, bootstrap: str, prefix: str, data: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.data = data
        self.stderr_path = data.parent / f"{data.name}-serve-{self.port}.log"
        command = [sys.executable, "-m", "ringfence.ops.cli", "serve", "--bootstrap", bootstrap, "--prefix", prefix,
                   "--data", str(data), "--metrics-port", str(self.port), "--session-timeout-ms", "6000", *args]  # fmt: skip
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                            env={**os.environ, **(env or {})})  # fmt: skip
        Serve.running.append(self)

    @classmethod
    def kill_all(cls) -> None:
        for serve in cls.running:
            if serve.process.poll() is None:
                serve.process.kill()
                serve.process.wait(10)
        cls.running.clear()

    def health(self) -> dict | None:
        """The health document, whether it came with 200 or 503; None while the endpoint does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read()) if error.code == 503 else None
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
            return response.read().decode()

    def offsets(self) -> dict[int, int]:
        health = self.health() or {"partitions": {}}
        return {int(p): s["offset"] for p, s in health["partitions"].items()}

    def wait_for(self, expected: dict[int, int], timeout: float = 120) -> None:
        """Until the instance owns exactly ``expected`` (partition -> last offset) and has applied it."""
        wait_until(lambda: self.offsets() == expected or self._died(), timeout, f"serve to reach {expected}")
        assert self.process.poll() is None, self.log_tail()

    def _died(self) -> bool:
        return self.process.poll() is not None

    def stop(self, sig=signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(30)

    def log_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def log_events(self) -> list[dict]:
        lines = self.stderr_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


class OwnBroker:
    """A broker of one test's own on a free loopback port, to kill and start again (empty: topics in memory)."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_dir / f"tansu-{self.port}.log"
        self.process = None
        self.start()

    def start(self) -> None:
        self.process = start_broker(self.port, log_path=self.log_path)

    def kill(self) -> None:
        """kill -9, by its own pid."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
