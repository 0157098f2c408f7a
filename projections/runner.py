"""Read -> apply -> checkpoint: the loop that keeps the core's store in step with the log."""

import gc
import hashlib
from collections.abc import Callable, Iterable
from itertools import islice
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec

from ringfence.core.check import check
from ringfence.core.fixed import INT64_MAX
from ringfence.core.limits import CHECKPOINT_EVERY_EVENTS
from ringfence.core.model import InvalidInput, Verdict
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.events.crashpoints import crash_point
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.json_codec import bounded_raw, to_wire
from ringfence.events.log_codec import decode_logged
from ringfence.projections.chain import FINGERPRINT_BYTES, DigestChain
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.outbox import decision_records
from ringfence.projections.store import DEADLETTER, REJECTION, StateStore, offset_key
from ringfence.projections.worker import AnswerRefused, ProjectionWorker

_json = msgspec.json.Encoder().encode

# records are applied in slices of at most this many events: progress is reported, and a stop asked for
# (SIGINT, SIGTERM: ops.stopping) is noticed, after each (~0.1 s of work)
PROGRESS_EVERY = 10_000
# `run` hands the liquidation projection to a worker process (projections.worker)
# when at least this many events are to be reduced: below it, starting the
# worker (~0.2 s) costs more than the parallel work saves
WORKER_MIN_EVENTS = 50_000


@dataclass
class RunReport:
    events: int = 0
    rejections: int = 0
    deadletters: int = 0
    commands: int = 0
    alerts: int = 0
    offset: int = -1
    projection: LiquidationProjection | ProjectionWorker | None = None
    chain: DigestChain | None = None  # pass it back with the state and projection to go on in memory
    cancels: int = 0
    # the offset of an answer the worker's episode book refused: the run went on in process from the
    # checkpoint before it (projections.worker), and that answer is a dead letter
    worker_refused: int | None = None


def output_record(offset: int, record, verdict: Verdict) -> tuple[bytes, bytes]:
    """The stored output for an event the reducer did not apply (DESIGN.md §4.1 fields)."""
    if verdict.kind == "rejection":
        body = {"type": "rejection", "event_id": record.id, "offset": offset, "ts": record.ts,
                "reason": verdict.reason, "detail": verdict.detail}  # fmt: skip
        return offset_key(REJECTION, offset), _json(body)
    if type(record) is InvalidInput:
        raw, source = record.raw, record.source
    else:
        raw, source = bounded_raw(_json(to_wire(record))), ""
    body = {"type": "deadletter", "offset": offset, "source": source, "reason": verdict.reason,
            "detail": verdict.detail, "raw": raw.decode("utf-8", "replace")}  # fmt: skip
    return offset_key(DEADLETTER, offset), _json(body)


def reduce_records(
    state: State,
    records: Iterable[tuple[int, object]],
    *,
    until: int | None = None,
    on_verdict: Callable[[int, object, Verdict], None] | None = None,
    projection: LiquidationProjection | ProjectionWorker | None = None,
    on_outputs: Callable[[list, int], None] | None = None,
    decode: Callable[[object], object] = decode_logged,
    chain: DigestChain | None = None,
    stop_at_link: bool = False,
    on_step: Callable[[int, object, Verdict | None, list], None] | None = None,
    stop_at_barrier: bool = False,
    stop_before: Callable[[int, object], bool] | None = None,
    held: list | None = None,
) -> int:
    """Apply (offset, payload) records to ``state`` (and the projection) in memory; return how many.

    ``decode`` (the log's, events.log.Log) turns a payload into a domain
    event or an InvalidInput (a dead letter) and never raises; the default
    reads the embedded log's msgpack records. ``chain`` takes
    each record's fingerprint and links the digest at its fixed offsets;
    with ``stop_at_link`` it returns right after a link (for a snapshot).
    ``on_step(offset, event, verdict, decisions)`` sees each event once it is
    applied and decided on (history, projections). A ``ProjectionWorker``
    is fed instead: its outputs are collected when it is synced.

    With several partitions coordinated by the fund stage (ops.serve):
    ``stop_at_barrier`` returns right after a barrier whose decision the
    other partitions' reports make (the projection's ``pending``; its chain
    link, if any, is taken by ``Reduction.finish_barrier``), and
    ``stop_before(offset, event)`` returns before an event that needs the
    other partitions first, appending ``(offset, payload)`` to ``held``.
    """
    count = 0
    last = INT64_MAX if until is None else until
    apply = apply_event
    feed = projection.feed if type(projection) is ProjectionWorker else None
    decide = projection.after_event if projection is not None and feed is None else None
    # answers are judged against the episode book before they apply; a worker's child judges them
    # itself and refuses the run if one does not fit (projections.worker), so the parent applies them as read
    check_answer = projection.check_answer if decide is not None else None
    fingerprints = chain.fingerprints if chain is not None else None
    next_link = chain.next_link if chain is not None else -2
    blake2b = hashlib.blake2b
    for offset, payload in records:
        if offset > last:
            break
        record = decode(payload)
        if stop_before is not None and stop_before(offset, record):
            held.append((offset, payload))
            break
        if fingerprints is not None:  # chain.fingerprint, inline: this loop is the hot path
            fingerprints += blake2b(payload or b"", digest_size=FINGERPRINT_BYTES).digest()
        verdict = apply(state, offset, record, check_answer)  # apply the fact first, decide what to emit second
        count += 1
        if verdict is not None and on_verdict is not None:
            on_verdict(offset, record, verdict)
        outputs = ()
        if feed is not None:
            if verdict is None:
                feed(state, offset, record)
        elif decide is not None:
            sequence = projection.sequence
            outputs = decide(state, offset, record, verdict is None)
            if outputs and on_outputs is not None:
                on_outputs(outputs, sequence)
            if stop_at_barrier and projection.pending is not None:
                break  # the other partitions' reports decide it; its link waits for that (Reduction.finish_barrier)
        if on_step is not None:
            on_step(offset, record, verdict, outputs)
        if offset == next_link:
            chain.link(offset, state, projection)
            next_link = chain.next_link
            if stop_at_link:
                break
    return count


class Reduction:
    """One log's state and liquidation projection, with the outputs not yet checkpointed.

    ``apply`` reduces records in memory and collects their outputs (rejections,
    dead letters, commands, alerts); ``checkpoint`` writes state, outputs and
    offset in one batch (projections.store). The embedded ``run`` and the
    Kafka service drive the same object.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        state: State | None = None,
        projection: LiquidationProjection | ProjectionWorker | None = None,
        liquidations: bool = True,
        chain: DigestChain | None = None,
        chain_every: int | None = None,
        snapshots: bool = True,
        worker_log: Path | None = None,
    ) -> None:
        if state is None:
            state = store.load()
            if liquidations and worker_log is not None:
                projection = ProjectionWorker(state, store.projection_snapshot(), worker_log)
            elif liquidations:
                projection = store.load_projection(state)
            chain = store.load_chain(chain_every)
            # the restored state is long-lived and acyclic: full collections need not walk it
            gc.freeze()
        self.store, self.state, self.projection, self.chain = store, state, projection, chain
        self.outputs: list[tuple[bytes, bytes]] = []
        self.report = RunReport(offset=state.offset, projection=projection, chain=chain)
        self.saved = replace(self.report)  # the report as of the last checkpoint
        self.unsaved = 0  # events applied since the last checkpoint
        self.snapshots = snapshots and chain is not None
        self.at_link = False  # the last apply stopped at a chain link: checkpoint, then snapshot()

    def apply(self, records: Iterable[tuple[int, object]], *, until: int | None = None,
              decode: Callable[[object], object] = decode_logged, coordinated: bool = False,
              stop_before: Callable[[int, object], bool] | None = None, held: list | None = None) -> int:  # fmt: skip
        """Apply records; with snapshots on, stop right after a chain link (pass an iterator to go on after it).

        ``coordinated``: also stop at a barrier the fund stage decides across partitions (``parked``), and
        before an event ``stop_before`` names (reduce_records).
        """
        applied = reduce_records(
            self.state, records, until=until, on_verdict=self._collect, projection=self.projection,
            on_outputs=self._collect_decisions, decode=decode, chain=self.chain, stop_at_link=self.snapshots,
            stop_at_barrier=coordinated, stop_before=stop_before, held=held,
        )  # fmt: skip
        self.at_link = (self.snapshots and applied > 0 and self.chain.last_offset == self.state.offset
                        and not self.parked)  # fmt: skip
        self.report.events += applied
        self.report.offset = self.state.offset
        self.unsaved += applied
        return applied

    @property
    def parked(self) -> bool:
        """Stopped at a barrier that the fund stage has not decided yet: nothing may be checkpointed."""
        return getattr(self.projection, "pending", None) is not None

    def finish_barrier(self, decisions) -> None:
        """Apply the fund stage's decisions for the barrier ``apply`` stopped at, then take its chain link."""
        projection, state = self.projection, self.state
        _, trigger = projection.pending
        projection.pending = None
        sequence = projection.sequence
        outputs: list = []
        projection.apply(state, decisions, trigger, outputs)
        if outputs:
            self._collect_decisions(outputs, sequence)
        chain = self.chain
        if chain is not None and state.offset == chain.next_link:
            chain.link(state.offset, state, projection)
            self.at_link = self.snapshots

    def checkpoint(self) -> bool:
        """Make everything applied so far durable; False if there was nothing to write."""
        check(not self.parked, "no checkpoint inside a barrier: the other partitions decide it")
        if not self.unsaved:
            return False
        worker = self.projection if type(self.projection) is ProjectionWorker else None
        if worker is not None:
            worker.request_sync()  # it finishes its last rows while the state is staged
        batch = self.store.stage(self.state)
        if worker is not None:
            outputs, commands, cancels, alerts = worker.take_outputs()
            self.outputs.extend(outputs)
            self.report.commands += commands
            self.report.cancels += cancels
            self.report.alerts += alerts
        self.store.commit(batch, self.state, self.outputs, self.projection, self.chain)
        self.outputs.clear()
        self.saved = replace(self.report)
        self.unsaved = 0
        gc.freeze()  # what survived until now is long-lived: keep it out of full collections
        return True

    def snapshot(self) -> None:
        """At a chain link: make the state durable and keep a snapshot of the store at the link's offset."""
        self.checkpoint()
        crash_point("snapshot.before")
        self.store.snapshot()
        self.at_link = False

    def restored(self, *, liquidations: bool = True, chain_every: int | None = None) -> "Reduction":
        """A new Reduction (projection in process) from the store's last checkpoint; its report as of that checkpoint.

        What was applied since that checkpoint is dropped (the caller applies it again, or not).
        """
        fresh = Reduction(self.store, liquidations=liquidations, chain_every=chain_every)
        fresh.report = replace(self.saved, offset=fresh.state.offset, projection=fresh.projection, chain=fresh.chain)
        fresh.saved = replace(fresh.report)
        return fresh

    def _collect(self, offset: int, record, verdict: Verdict) -> None:
        self.outputs.append(output_record(offset, record, verdict))
        if verdict.kind == "rejection":
            self.report.rejections += 1
        else:
            self.report.deadletters += 1

    def _collect_decisions(self, decisions: list, sequence: int) -> None:
        records, commands, cancels, alerts = decision_records(decisions, sequence)
        self.outputs.extend(records)
        self.report.commands += commands
        self.report.cancels += cancels
        self.report.alerts += alerts


def run_core(
    log,
    store: StateStore,
    *,
    until: int | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY_EVENTS,
    progress: Callable[[int, int], None] | None = None,
    state: State | None = None,
    projection: LiquidationProjection | None = None,
    liquidations: bool = True,
    publish: Callable[[], None] | None = None,
    chain: DigestChain | None = None,
    chain_every: int | None = None,
    worker: bool | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[State, RunReport]:
    """Reduce every record of ``log`` after the state's offset, checkpointing every ``checkpoint_every`` events.

    1. Restore the state from the store (unless the caller passes the live one).
    2. Apply records in slices of at most PROGRESS_EVERY, collecting outputs.
    3. After ``checkpoint_every`` events, and at the end, checkpoint state,
       outputs and offset in one batch (projections.store). A crash before that
       write loses nothing: the next run replays from the previous checkpoint.
    4. At each chain link, checkpoint and keep a snapshot of the store there
       (point-in-time queries and verification start from those).
    5. Publish the outbox (``publish``) only after the checkpoint is durable.
    6. After each slice, ``stop()`` true (a signal, ops.stopping) ends the run
       there, checkpointed and published.

    ``worker``: run the liquidation projection in a worker process
    (projections.worker); None chooses it for a long embedded-log tail
    (WORKER_MIN_EVENTS). It applies when the state is loaded here; the
    caller of a passed-in projection owns it (``close_projection``).
    """
    end = log.end_offset()
    decode = log.decode
    embedded = isinstance(log, EmbeddedLog)
    if worker is None:
        worker = embedded and end - (store.stored_offset() + 1) >= WORKER_MIN_EVENTS
    reduction = Reduction(store, state=state, projection=projection, liquidations=liquidations, chain=chain,
                          chain_every=chain_every, worker_log=log.directory if worker and embedded else None)  # fmt: skip
    state = reduction.state
    records = log.read(state.offset + 1)
    while True:
        try:
            applied = reduction.apply(islice(records, min(PROGRESS_EVERY, checkpoint_every)), until=until, decode=decode)
            finished = applied == 0 or (until is not None and state.offset >= until) or (stop is not None and stop())
            saved = reduction.at_link or (reduction.unsaved and (reduction.unsaved >= checkpoint_every or finished))
            if reduction.at_link:
                reduction.snapshot()
            elif saved:
                reduction.checkpoint()
        except AnswerRefused as refused:
            # The parent applied an answer the episode book refuses; nothing since the last checkpoint was
            # written. Go on from it with the projection in process (which dead-letters that answer) for the
            # rest of this run: a log with one refused answer may have many, and each would cost a restart.
            reduction = _restart(reduction, store, liquidations, chain_every, refused.offset)
            state = reduction.state
            records = log.read(state.offset + 1)
            continue
        if saved and publish is not None:
            publish()  # only after the commands are durable (the outbox)
        if progress is not None and applied:
            progress(state.offset + 1, end)
        if finished:
            break
    return state, reduction.report


def _restart(reduction: Reduction, store: StateStore, liquidations: bool, chain_every: int | None,
             refused: int) -> Reduction:  # fmt: skip
    """An in-process Reduction from the store's last checkpoint, carrying the report as of that checkpoint."""
    close_projection(reduction.projection)
    fresh = reduction.restored(liquidations=liquidations, chain_every=chain_every)
    fresh.report.worker_refused = refused
    fresh.saved = replace(fresh.report)
    return fresh


def close_projection(projection) -> None:
    """Stop a projection's worker process, if it has one."""
    if type(projection) is ProjectionWorker:
        projection.close()
