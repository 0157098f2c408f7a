"""Benchmark: `serve` through Kafka against a bare kafka-python consumer and the embedded `run`.

    python -m ringfence.ops.bench.kafka [--events 200000] [--traders 2000] [--partitions 4] [--bootstrap HOST:PORT]

Starts the development broker on a free loopback port (unless --bootstrap
names one), generates a session (ops.simulate) as JSON Lines, and measures
on that one session:

1. publish: `ringfence publish` of the file (a separate process), records/s.
2. bare consumer: one kafka-python consumer with serve's own client settings
   reads every partition of the events topic from 0 to its end and does
   nothing with the records: the ceiling of this client on this broker.
3. serve, catch-up: `Service` (static assignment of every partition) from an
   empty data directory over the filled topic until every partition is
   applied, checkpointed and its commands published (the stop drains).
4. serve, end to end: a fresh topic; serve runs while `ringfence publish`
   (another process) writes the session; from the start of the publish until
   serve has applied the last record.
5. embedded run: the same file ingested into one embedded log, then `run`
   (core + liquidation projection) timed alone.

Kafka carries market-wide events (marks, funding, market config) once per
partition, so its record count is higher than the embedded event count; the
table shows both. Target (issue 4): serve catch-up >= 50 % of the bare consumer.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kafka import TopicPartition

from ringfence.events.embedded import EmbeddedLog
from ringfence.events.json_codec import encode_line
from ringfence.ops.broker import free_port, start_broker, stop_broker
from ringfence.ops.kafka_log import KafkaSettings, ensure_topics, new_consumer
from ringfence.ops.logging import configure_logging
from ringfence.ops.metrics import Metrics
from ringfence.ops.serve import Service
from ringfence.ops.simulate import Session
from ringfence.projections.runner import run_core
from ringfence.projections.store import StateStore


def cli(*args: str, quiet: bool = True) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ringfence.ops.cli", *args],
                            stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.DEVNULL)  # fmt: skip


def publish(settings: KafkaSettings, source: Path) -> float:
    started = time.perf_counter()
    process = cli("publish", str(source), "--bootstrap", settings.bootstrap, "--prefix", settings.prefix)
    if process.wait() not in (0, 3):
        raise SystemExit(f"publish failed with status {process.returncode}")
    return time.perf_counter() - started


def bare_consumer(settings: KafkaSettings, partitions: int) -> tuple[dict[int, int], int, float]:
    """Read every record of the events topic and drop it; return (end offset per partition, records, seconds)."""
    consumer = new_consumer(settings)
    tps = [TopicPartition(settings.topic("events"), p) for p in range(partitions)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    records = 0
    started = time.perf_counter()
    try:
        while True:
            for batch in consumer.poll(timeout_ms=100).values():
                records += len(batch)
            highs = [consumer.highwater(tp) for tp in tps]
            if all(high is not None and consumer.position(tp) >= high for tp, high in zip(tps, highs)):
                break
        elapsed = time.perf_counter() - started
        return {tp.partition: consumer.position(tp) for tp in tps}, records, elapsed
    finally:
        consumer.close()


def serve_until(settings: KafkaSettings, data: Path, ends: dict[int, int], during=None) -> tuple[float, float]:
    """Run the service until every partition has applied its last record; return (seconds to applied, to stopped).

    ``during`` (optional) is started right after the service, and the clock starts with it.
    """
    metrics = Metrics()
    service = Service(settings, data, group=None, partitions=sorted(ends), metrics=metrics)
    applied_at: list[float] = []
    clock: list[float] = []

    def watch() -> None:
        while not all(p in metrics.partitions and metrics.partitions[p].offset >= end - 1 for p, end in ends.items()):
            time.sleep(0.01)
        applied_at.append(time.perf_counter())
        service.stop()

    def start() -> None:
        clock.append(time.perf_counter())
        if during is not None:
            during()
        watch()

    threading.Thread(target=start, daemon=True).start()
    service.run()
    stopped = time.perf_counter()
    return applied_at[0] - clock[0], stopped - clock[0]


def embedded_run(source: Path, root: Path) -> tuple[int, float]:
    data = root / "embedded"
    if cli("ingest", str(source), "--data", str(data)).wait() not in (0, 3):
        raise SystemExit("ingest failed")
    started = time.perf_counter()
    with StateStore(data / "state") as store:
        _, report = run_core(EmbeddedLog(data / "log", writable=False), store, liquidations=True)
    return report.events, time.perf_counter() - started


def row(name: str, count: int, seconds: float, unit: str = "records") -> None:
    rate = count / seconds
    print(f"{name:<44}{count:>10,} {unit:<8}{seconds:>8.2f} s{rate:>12,.0f}/s{1e6 / rate:>9.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--traders", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bootstrap", help="an existing broker; default: start the development broker")
    args = parser.parse_args()
    configure_logging(json=True, level=30)  # warnings only: the service's info lines would be timed too

    root = Path(tempfile.mkdtemp(prefix="ringfence-bench-kafka-"))
    broker = None
    try:
        if args.bootstrap is None:
            port = free_port()
            broker = start_broker(port, log_path=root / "broker.log")
            bootstrap = f"127.0.0.1:{port}"
        else:
            bootstrap = args.bootstrap
        source = root / "session.jsonl"
        with open(source, "wb") as out:
            for event in Session(args.seed, args.traders).events(args.events):
                out.write(encode_line(event) + b"\n")
        stamp = int(time.time())
        catch_up = KafkaSettings(bootstrap, prefix=f"bench-{stamp}-a")
        live = KafkaSettings(bootstrap, prefix=f"bench-{stamp}-b")
        for settings in (catch_up, live):
            ensure_topics(settings, args.partitions)
        print(f"session: {args.events:,} events, {args.traders:,} traders; broker {bootstrap}; "
              f"{args.partitions} partitions")  # fmt: skip

        publish_s = publish(catch_up, source)
        ends, records, bare_s = bare_consumer(catch_up, args.partitions)
        applied_s, stopped_s = serve_until(catch_up, root / "serve-a", ends)
        live_applied_s, _ = serve_until(live, root / "serve-b", ends, during=lambda: publish(live, source))
        embedded_events, embedded_s = embedded_run(source, root)

        print(f"{'measure':<44}{'count':>10} {'':<8}{'time':>10}{'rate':>14}{'per record':>12}")
        row("publish (ringfence publish, own process)", records, publish_s)
        row("bare kafka-python consumer (ceiling)", records, bare_s)
        row("serve catch-up: applied", records, applied_s)
        row("serve catch-up: applied, drained, stopped", records, stopped_s)
        row("serve end to end: publish -> applied", records, live_applied_s)
        row("embedded run (core + projection)", embedded_events, embedded_s, "events")
        print(f"serve catch-up / bare consumer: {bare_s / applied_s:.1%} (target >= 50 %); "
              f"serve / embedded run: {(records / applied_s) / (embedded_events / embedded_s):.1%} per record")
    finally:
        if broker is not None:
            stop_broker(broker)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
