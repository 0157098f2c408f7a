"""Health and Prometheus metrics of `ringfence serve`, over HTTP on a loopback port.

    GET /health   200 {"status": "ok", ...} while the service runs with every partition applying and the
                  broker answering; else 503 with "status" starting, stopping or degraded and the "reasons"
                  (no answer from the broker for --broker-timeout seconds, a partition halted)
    GET /metrics  Prometheus text format (version 0.0.4)

The service thread writes plain attributes; the HTTP thread only reads them
(single assignments, so a scrape sees each value whole).
"""

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RATE_WINDOW_SECONDS = 10.0


@dataclass
class PartitionStatus:
    offset: int = -1  # last applied
    highwater: int | None = None  # from the last fetch response
    open_positions: int = 0
    events: int = 0
    commands: int = 0
    cancels: int = 0
    live_commands: int = 0
    stuck_positions: int | None = None  # by full scan, refreshed with the digest (docs/decisions.md)
    rejections: int = 0
    deadletters: int = 0
    digest: str = ""
    digest_offset: int = -1
    halted: str | None = None  # why the partition stopped applying (ops.serve), until the service restarts

    @property
    def lag(self) -> int | None:
        return None if self.highwater is None else max(0, self.highwater - (self.offset + 1))


class Metrics:
    def __init__(self) -> None:
        self.status = "starting"
        self.partitions: dict[int, PartitionStatus] = {}
        self.events_total = 0
        self.rebalances = 0
        self._samples: deque[tuple[float, int]] = deque()
        self.broker_timeout: float | None = None  # set by the service, which judges broker_up (ops.serve)
        self.broker_contact = 0.0  # monotonic time of the last successful fetch or offsets answer
        self.broker_up = True

    def broker_silence(self) -> float:
        return time.monotonic() - self.broker_contact

    def reasons(self) -> list[str]:
        found = []
        if not self.broker_up:
            found.append(f"no answer from the broker for {self.broker_silence():.0f} s "
                         f"(--broker-timeout {self.broker_timeout:g})")  # fmt: skip
        found += [f"partition {p} halted: {s.halted}" for p, s in sorted(dict(self.partitions).items()) if s.halted]
        return found

    def healthy(self) -> bool:
        return self.status == "ok" and not self.reasons()

    def sample(self) -> None:
        """Remember the event count now, for the events/s gauge."""
        now = time.monotonic()
        self._samples.append((now, self.events_total))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.popleft()

    def events_per_second(self) -> float:
        samples = list(self._samples)
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return 0.0
        return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])

    def health(self) -> dict:
        partitions, reasons = dict(self.partitions), self.reasons()
        return {
            "status": "degraded" if self.status == "ok" and reasons else self.status,
            "reasons": reasons,
            "broker_up": self.broker_up,
            "partitions": {str(p): {"offset": s.offset, "lag": s.lag, "halted": s.halted}
                           for p, s in sorted(partitions.items())},  # fmt: skip
        }

    def render(self) -> str:
        partitions = sorted(dict(self.partitions).items())
        lines = []

        def family(name: str, kind: str, text: str, samples: list[tuple[str, object]]) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value}" for labels, value in samples)

        def per_partition(pick) -> list[tuple[str, object]]:
            return [(f'{{partition="{p}"}}', pick(s)) for p, s in partitions if pick(s) is not None]

        family("ringfence_up", "gauge", "1 while the service runs and /health answers 200", [("", int(self.healthy()))])
        family("ringfence_broker_up", "gauge", "0 after --broker-timeout seconds without a successful fetch or "
               "offsets answer", [("", int(self.broker_up))])  # fmt: skip
        family("ringfence_partition_halted", "gauge", "1 for a partition that stopped applying (its /health reason)",
               per_partition(lambda s: int(s.halted is not None)))  # fmt: skip
        family("ringfence_events_per_second", "gauge", f"events applied per second over the last "
               f"{RATE_WINDOW_SECONDS:.0f} s", [("", round(self.events_per_second(), 1))])  # fmt: skip
        family("ringfence_events_total", "counter", "events applied by this instance", [("", self.events_total)])
        family("ringfence_rebalances_total", "counter", "partition assignments received", [("", self.rebalances)])
        family("ringfence_partition_offset", "gauge", "last applied offset", per_partition(lambda s: s.offset))
        family("ringfence_partition_lag", "gauge", "records on the partition not yet applied (fetch high watermark)",
               per_partition(lambda s: s.lag))  # fmt: skip
        family("ringfence_open_positions", "gauge", "open positions", per_partition(lambda s: s.open_positions))
        family("ringfence_partition_events_total", "counter", "events applied since the partition was assigned",
               per_partition(lambda s: s.events))  # fmt: skip
        family("ringfence_liquidations_total", "counter", "liquidation and ADL commands emitted",
               per_partition(lambda s: s.commands))  # fmt: skip
        family("ringfence_cancels_total", "counter", "commands cancelled (superseded, timed out, healthy again, ...)",
               per_partition(lambda s: s.cancels))  # fmt: skip
        family("ringfence_live_commands", "gauge", "liquidation and ADL commands issued and not yet ended",
               per_partition(lambda s: s.live_commands))  # fmt: skip
        family("ringfence_stuck_positions", "gauge", "liquidatable positions without live commands closing them "
               "(full scan with each digest; must be 0)", per_partition(lambda s: s.stuck_positions))  # fmt: skip
        family("ringfence_rejections_total", "counter", "requests refused", per_partition(lambda s: s.rejections))
        family("ringfence_deadletters_total", "counter", "records dead-lettered", per_partition(lambda s: s.deadletters))
        family("ringfence_last_digest_info", "gauge", "the last state digest computed, as labels",
               [(f'{{partition="{p}",offset="{s.digest_offset}",digest="{s.digest}"}}', 1)
                for p, s in partitions if s.digest])  # fmt: skip
        return "\n".join(lines) + "\n"


def serve_metrics(metrics: Metrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the endpoint in a daemon thread; ``server.shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/metrics":
                body, kind, code = metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8", 200
            elif self.path == "/health":
                health = metrics.health()
                body, kind = json.dumps(health).encode(), "application/json"
                code = 200 if health["status"] == "ok" else 503
            else:
                body, kind, code = b"not found: try /health or /metrics\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not worth a log line
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
