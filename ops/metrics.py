"""Health and Prometheus metrics of `ringfence serve`, over HTTP on a loopback port.

    GET /health   200 {"status": "ok", ...} while the service runs with every partition applying and the
                  broker answering; else 503 with "status" starting, stopping or degraded and the "reasons"
                  (no answer from the broker for --broker-timeout seconds, a partition halted)
    GET /metrics  Prometheus text format (version 0.0.4)

The service thread writes plain attributes; the HTTP thread only reads them
(single assignments, so a scrape sees each value whole).

The endpoint is small and guarded: each connection has a thread, at most
MAX_CONNECTIONS at once (more are answered 503 and closed), a read timeout
and a deadline for the whole request, and a client that goes away (reset,
broken pipe, timeout) is a debug line, never a traceback.
"""

import json
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ringfence.ops.logging import get_logger

RATE_WINDOW_SECONDS = 10.0
# A scraper or health check sends its request at once and reads a few kilobytes: a connection silent this long
# between two reads is dropped, one still unanswered after the deadline is cut, and a few at once are plenty
# (a bound, so that half-sent requests cannot pile up threads).
READ_TIMEOUT_SECONDS = 5.0
DEADLINE_SECONDS = 15.0
MAX_CONNECTIONS = 16
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nbusy\n"


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
    adl_quantiles: list[int] | None = None  # open positions per ADL quantile 0..4, refreshed with the digest
    rejections: int = 0
    deadletters: int = 0
    digest: str = ""
    digest_offset: int = -1
    halted: str | None = None  # why the partition stopped applying (ops.serve), until the service restarts
    # the fund stage across partitions (ops.fund_board): how long it has waited at its current barrier for
    # the reports of the partitions listed (0 and [] while it is not waiting)
    fund_stage_seconds: float = 0.0
    fund_stage_waiting: list = field(default_factory=list)
    fund_stage_barrier: int = 0
    fund_stage_decisions: int = 0  # barriers that decided something, and the stage's chain head after them
    fund_stage_digest: str = ""

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
        self.report_dead_letters = 0  # fund-stage report records that were not used (ops.fund_board)

    def broker_silence(self) -> float:
        return time.monotonic() - self.broker_contact

    def reasons(self) -> list[str]:
        found = []
        if not self.broker_up:
            found.append(f"no answer from the broker for {self.broker_silence():.0f} s "
                         f"(--broker-timeout {self.broker_timeout:g})")  # fmt: skip
        found += [f"partition {p} halted: {s.halted}" for p, s in sorted(dict(self.partitions).items()) if s.halted]
        # a partition that stops reporting stalls the others at the next barrier: never a different answer
        found += [f"partition {p} has waited {s.fund_stage_seconds:.0f} s at barrier {s.fund_stage_barrier} for the "
                  f"fund-stage reports of partitions {s.fund_stage_waiting}"
                  for p, s in sorted(dict(self.partitions).items())
                  if self.broker_timeout is not None and s.fund_stage_seconds > self.broker_timeout]  # fmt: skip
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
            "partitions": {str(p): {"offset": s.offset, "lag": s.lag, "halted": s.halted,
                                    "fund_stage": {"barrier": s.fund_stage_barrier, "waiting_for": s.fund_stage_waiting,
                                                   "seconds": round(s.fund_stage_seconds, 3),
                                                   "decisions": s.fund_stage_decisions, "digest": s.fund_stage_digest}}
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
        family("ringfence_fund_stage_lag", "gauge", "seconds the partition has waited at its current barrier for the "
               "other partitions' fund-stage reports (0: not waiting)",
               per_partition(lambda s: round(s.fund_stage_seconds, 3)))  # fmt: skip
        family("ringfence_report_dead_letters_total", "counter", "fund-stage report records not used, of the "
               "partitions this instance owns (unknown partition, wrong partition count, undecodable, wrong contents)", [("", self.report_dead_letters)])  # fmt: skip
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
        family("ringfence_adl_quantile_positions", "gauge", "open positions by ADL quantile (0 not in profit, 4 the "
               "top quarter of its side's ADL ranking; refreshed with each digest)",
               [(f'{{partition="{p}",quantile="{q}"}}', count) for p, s in partitions if s.adl_quantiles is not None
                for q, count in enumerate(s.adl_quantiles)])  # fmt: skip
        family("ringfence_rejections_total", "counter", "requests refused", per_partition(lambda s: s.rejections))
        family("ringfence_deadletters_total", "counter", "records dead-lettered", per_partition(lambda s: s.deadletters))
        family("ringfence_last_digest_info", "gauge", "the last state digest computed, as labels",
               [(f'{{partition="{p}",offset="{s.digest_offset}",digest="{s.digest}"}}', 1)
                for p, s in partitions if s.digest])  # fmt: skip
        return "\n".join(lines) + "\n"


class GuardedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on connections, a deadline per connection and quiet client failures."""

    daemon_threads = True
    request_queue_size = 64  # the listen backlog: connections beyond the bound are accepted and refused, not left waiting

    def __init__(self, address, handler, *, deadline: float, max_connections: int) -> None:
        super().__init__(address, handler)
        self.deadline = deadline
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: dict[socket.socket, float] = {}  # connection -> when it was accepted
        self._lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._lock:
            self._open[request] = time.monotonic()
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open.pop(request, None)
            self._slots.release()

    def service_actions(self) -> None:
        """Between accepts (every poll interval): cut the connections past their deadline."""
        now = time.monotonic()
        with self._lock:
            late = [request for request, accepted in self._open.items() if now - accepted > self.deadline]
        for request in late:
            try:
                request.shutdown(socket.SHUT_RDWR)  # its handler's read or write ends at once
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # reset, broken pipe, timeout: the client went away
            get_logger().debug("metrics_client_gone", error=type(error).__name__)
        else:
            get_logger().warning("metrics_request_failed", error=f"{type(error).__name__}: {error}")


def serve_metrics(metrics: Metrics, port: int, host: str = "127.0.0.1", *, read_timeout: float = READ_TIMEOUT_SECONDS,
                  deadline: float = DEADLINE_SECONDS, max_connections: int = MAX_CONNECTIONS) -> GuardedServer:  # fmt: skip
    """Start the endpoint in a daemon thread; ``server.shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout  # on every read and write of the connection (StreamRequestHandler)

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

        def log_message(self, *args) -> None:  # scrapes (and timed-out requests) are not worth a log line
            pass

    server = GuardedServer((host, port), Handler, deadline=deadline, max_connections=max_connections)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25}, name="metrics", daemon=True).start()
    return server
