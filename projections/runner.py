"""Read -> apply -> checkpoint: the loop that keeps the core's store in step with the log."""

import gc
from itertools import islice
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from ringfence.core import reasons as r
from ringfence.core.fixed import INT64_MAX
from ringfence.core.limits import CHECKPOINT_EVERY_EVENTS
from ringfence.core.model import InvalidInput, Verdict
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.events.json_codec import bounded_raw, to_wire
from ringfence.events.log_codec import decode_record
from ringfence.projections.liquidation import AdlCommand, LiquidateCommand, LiquidationProjection
from ringfence.projections.store import ALERT, COMMAND, DEADLETTER, REJECTION, StateStore, offset_key

_json = msgspec.json.Encoder().encode

# progress is reported (and `until` checked) at least this often, in events
PROGRESS_EVERY = 50_000


@dataclass
class RunReport:
    events: int = 0
    rejections: int = 0
    deadletters: int = 0
    commands: int = 0
    alerts: int = 0
    offset: int = -1
    projection: LiquidationProjection | None = None


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


def decode_or_invalid(payload) -> object:
    try:
        return decode_record(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        return InvalidInput(r.UNDECODABLE_RECORD, f"log record does not decode: {error}", bounded_raw(bytes(payload)))


def reduce_records(
    state: State,
    records: Iterable[tuple[int, object]],
    *,
    until: int | None = None,
    on_verdict: Callable[[int, object, Verdict], None] | None = None,
    projection: LiquidationProjection | None = None,
    on_outputs: Callable[[list, int], None] | None = None,
) -> int:
    """Apply (offset, payload) records to ``state`` (and the projection) in memory; return how many."""
    count = 0
    last = INT64_MAX if until is None else until
    decode, apply = decode_record, apply_event
    decide = projection.after_event if projection is not None else None
    for offset, payload in records:
        if offset > last:
            break
        try:
            record = decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            record = decode_or_invalid(payload)
        verdict = apply(state, offset, record)  # apply the fact first, decide what to emit second
        count += 1
        if verdict is not None and on_verdict is not None:
            on_verdict(offset, record, verdict)
        if decide is not None:
            sequence = projection.sequence
            outputs = decide(state, offset, record, verdict is None)
            if outputs and on_outputs is not None:
                on_outputs(outputs, sequence)
    return count


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
) -> tuple[State, RunReport]:
    """Reduce every record after the state's offset, checkpointing every ``checkpoint_every`` events.

    1. Restore the state from the store (unless the caller passes the live one).
    2. Apply records in slices of at most PROGRESS_EVERY, collecting outputs.
    3. After ``checkpoint_every`` events, and at the end, checkpoint state,
       outputs and offset in one batch (projections.store). A crash before that
       write loses nothing: the next run replays from the previous checkpoint.
    4. Freeze what survived into the collector's permanent generation: the
       state is long-lived and acyclic, so full collections need not walk it.
    """
    if state is None:
        state = store.load()
        if liquidations:
            projection = store.load_projection(state)
        gc.freeze()
    report = RunReport(offset=state.offset)
    outputs: list[tuple[bytes, bytes]] = []

    def collect(offset: int, record, verdict: Verdict) -> None:
        outputs.append(output_record(offset, record, verdict))
        if verdict.kind == "rejection":
            report.rejections += 1
        else:
            report.deadletters += 1

    def collect_decisions(decisions: list, sequence: int) -> None:
        for decision in decisions:
            if type(decision) is LiquidateCommand or type(decision) is AdlCommand:
                sequence += 1  # the outbox position the projection gave this command
                report.commands += 1
                outputs.append((offset_key(COMMAND, sequence), _json(decision)))
            else:
                report.alerts += 1
                outputs.append((offset_key(ALERT, decision.offset), _json(decision)))

    end = log.end_offset()
    records = log.read(state.offset + 1)
    since_checkpoint = 0
    while True:
        applied = reduce_records(
            state, islice(records, min(PROGRESS_EVERY, checkpoint_every)), until=until, on_verdict=collect,
            projection=projection, on_outputs=collect_decisions,
        )  # fmt: skip
        report.events += applied
        since_checkpoint += applied
        finished = applied == 0 or (until is not None and state.offset >= until)
        if since_checkpoint and (since_checkpoint >= checkpoint_every or finished):
            store.checkpoint(state, outputs, projection)
            outputs.clear()
            since_checkpoint = 0
            gc.freeze()
            if publish is not None:
                publish()  # only after the commands are durable (the outbox)
        if progress is not None and applied:
            progress(state.offset + 1, end)
        if finished:
            break
    report.offset = state.offset
    report.projection = projection
    return state, report
