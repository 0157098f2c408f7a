"""The liquidation projection on its own core: `run` reduces, a worker process decides.

In one process the projection costs about as much as the reduction it
watches (docs/benchmarks.md). `run` over a long embedded log therefore hands
it to a child process (``python -m ringfence.projections.worker``) and the
two work in parallel:

1. The parent reduces each record and, for every applied event the
   projection reacts to, queues a row: the offset, and what the reduction
   made of the event that the child cannot know without reducing. One flat
   tuple per row (the hot path allocates nothing else): ``(offset, fund,
   size, cost, margin)`` for a position after a fill or transfer, ``(offset,
   fund)`` when it closed (fund: the market's insurance-fund balance);
   ``(offset, [(key, margin), ...])`` after funding; ``(offset,)`` for a mark
   or market config, which the child applies itself, or for a mark at which
   auto-add margin topped positions up ``(offset, [(key, margin, added), ...])``. Batches of rows go
   over the child's stdin (marshalled: twice as fast as pickle for plain
   tuples; a writer thread sends them, so the reduction does not wait on
   the pipe).
2. The child reads the same records from the log itself (only those with a
   row are decoded), keeps a mirror of what the projection reads of the
   state (positions, markets, funds), and runs the same
   ``LiquidationProjection`` on it, event by event. Same events, same
   values, same decisions: command ids, outputs, snapshots and digests equal
   the in-process run's (tested).
3. At a checkpoint or a chain link the parent asks for everything up to the
   last row it queued (``sync``): the outputs, the projection's stored changes and
   canonical sections. It then writes state, outputs, projection and offset
   in one batch as before, so the outbox and crash safety are unchanged. A
   checkpoint asks first (``request_sync``) and stages the state's keys
   while the child finishes its last rows.

The child exits when its stdin closes, so a parent killed with -9 leaves no
worker behind. It runs in a process group of its own and ignores SIGINT and
SIGTERM: a Ctrl-C (or a service manager's SIGTERM to every process) is the
parent's to handle, which finishes its batch, syncs, checkpoints and closes
the pipe (ops.stopping). A child that fails says why in one line on stderr, and the
parent stops at its next sync with ``WorkerFailed``: the last checkpoint
stands, and the next run goes on from it.
"""
import gc
import os
import marshal
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from ringfence.core.check import check
from ringfence.core.model import (
    AdlFill,
    Fill,
    Funding,
    LiquidationFill,
    MarginTransfer,
    MarketConfig,
    MarkPrice,
    PositionTrigger,
    PositionTriggerCancel,
)
from ringfence.core.reducer import apply_event
from ringfence.core.state import MarketState, State
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.crashpoints import crash_point
from ringfence.events.log_codec import decode_record
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.outbox import decision_records

# what a row carries, by event type: one position (and the fund), every margin of a market, or nothing (a mark:
# the positions auto-add margin topped up, if any; a market config or a position trigger: the child applies it)
POSITION, MARGINS, MARKET, TRIGGER = 0, 1, 2, 3
ROW_KINDS = {Fill: POSITION, MarginTransfer: POSITION, LiquidationFill: POSITION, AdlFill: POSITION,
             Funding: MARGINS, MarkPrice: MARKET, MarketConfig: MARKET, PositionTrigger: TRIGGER,
             PositionTriggerCancel: TRIGGER}  # fmt: skip
ROWS_PER_BATCH = 1024  # rows per message: large enough to amortise the pipe, small enough to overlap
QUEUED_BATCHES = 64  # how far the parent may run ahead of the child (~65k events)
_FRAME = struct.Struct(">I")
_SYNC, _BATCH, _INIT, _REPLY, _REFUSED = b"s", b"b", b"i", b"r", b"x"


class WorkerFailed(RuntimeError):
    pass


class AnswerRefused(Exception):
    """The child's episode book refused an answer the parent applied (its check needs the book, which is the child's).

    Nothing since the last checkpoint has been written; ``run_core`` starts
    again from it with the projection in process, which dead-letters the answer.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"the answer at offset {offset} does not fit its command ({reason})")
        self.offset, self.reason = offset, reason


class ProjectionWorker:
    """The parent's handle: fed by the reduction loop, read at checkpoints like a ``LiquidationProjection``.

    A writer thread sends the batches, so the reduction waits on the pipe only
    when the child is QUEUED_BATCHES behind.
    """

    def __init__(self, state: State, snapshot: list | None, log_directory: Path) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ringfence.projections.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            process_group=0,  # a terminal's Ctrl-C reaches the parent alone
        )
        self._frames: queue.Queue = queue.Queue(QUEUED_BATCHES)
        self._writer = threading.Thread(target=self._write_frames, name="projection-worker-writer", daemon=True)
        self._writer.start()
        self._rows: list = []
        self.feed = self._feeder()
        # frames (init, batches) sent; how many the last reply covers; the count at a sync not yet answered
        self._sent = self._synced = 0
        self._requested: int | None = None
        self._outputs: list[tuple[bytes, bytes]] = []
        self.commands = self.cancels = self.alerts = 0  # not yet taken by a checkpoint
        self.sequence = 0
        # the projection's stored changes since the last checkpoint, merged over syncs (LiquidationProjection.stored_changes)
        self._head: list = []
        self._changed_commands: dict = {}
        self._changed_positions: dict = {}
        self._sections: list | None = None  # the whole state as of the last full sync, None once rows went out since
        positions = [(key, p.size, p.cost, p.margin) for key, p in state.positions.items()]
        markets = [(name, m.config, m.mark, m.mark_ts) for name, m in state.markets.items()]
        triggers = sorted(state.triggers.items(), key=lambda item: item[1].serial)
        self._send(_INIT, (str(log_directory), state.offset + 1, positions, markets, dict(state.insurance), triggers,
                           snapshot))  # fmt: skip
        self._sent = 1  # the child starts while the parent reduces: the first sync waits for it

    # -- the hot path ----------------------------------------------------------------------

    def _feeder(self):
        """feed(state, offset, event) for one applied event: the row the child needs (see the module docstring).

        A closure over its lists, since it runs once per event on the parent's hot path.
        """
        rows, kinds, flush = self._rows, ROW_KINDS, self._flush
        append = rows.append

        def feed(state: State, offset: int, event) -> None:
            kind = kinds.get(type(event))
            if kind is None:
                return
            if kind == POSITION:
                market = event.market
                position = state.positions.get((event.account, market, event.position_side))
                fund = state.markets[market].fund  # not cached: a flat market may move to another fund
                if position is None:
                    append((offset, state.insurance.get(fund, 0)))
                else:
                    append((offset, state.insurance.get(fund, 0), position.size, position.cost, position.margin))
            elif kind == MARGINS:
                append((offset, [(key, p.margin) for key, p in state.by_market.get(event.market, {}).items()]))
            elif state.top_ups and type(event) is MarkPrice:  # auto-add margin moved these margins (core.reducer)
                append((offset, [(key, state.positions[key].margin, amount) for key, amount in state.top_ups]))
            else:
                append((offset,))
            if len(rows) >= ROWS_PER_BATCH:
                flush()

        return feed

    def _flush(self) -> None:
        if self._rows:
            self._send(_BATCH, self._rows)
            self._rows.clear()  # the same list: feed holds it
            self._sent += 1
            self._sections = None

    # -- what checkpoints and chain links read ---------------------------------------------

    def request_sync(self, full: bool = False) -> None:
        """Ask for the child's outputs and state up to the last row fed, without waiting (``sync`` waits).

        ``full`` asks for the whole state too (a digest needs it), not only its changes.
        """
        self._flush()
        if self._requested is None and (self._synced < self._sent or (full and self._sections is None)):
            self._send(_SYNC, full)
            self._requested = self._sent

    def sync(self, full: bool = False) -> None:
        """Wait until the child has decided on every row sent; collect its outputs and state."""
        self.request_sync(full)
        while self._requested is not None:
            frame = _read_frame(self._process.stdout)
            if frame is None:
                code = self._process.wait()
                raise WorkerFailed(f"the projection worker stopped (exit code {code}); the last checkpoint stands")
            if frame[0] == _REFUSED:
                raise AnswerRefused(*frame[1])
            sequence, outputs, commands, cancels, alerts, (head, changed, positions), sections = frame[1]
            self.sequence, self._head, self._sections = sequence, head, sections
            self._changed_commands.update(changed)
            self._changed_positions.update(positions)
            self._outputs.extend(outputs)
            self.commands += commands
            self.cancels += cancels
            self.alerts += alerts
            self._synced, self._requested = self._requested, None
            self.request_sync(full)  # rows fed after the request was sent: ask again

    def take_outputs(self) -> tuple[list[tuple[bytes, bytes]], int, int, int]:
        """The outputs decided since the last take, with how many are commands, cancels and alerts."""
        self.sync()
        taken = self._outputs, self.commands, self.cancels, self.alerts
        self._outputs, self.commands, self.cancels, self.alerts = [], 0, 0, 0
        return taken

    def stored_changes(self) -> tuple[list, dict, dict]:
        self.sync()
        return self._head, self._changed_commands, self._changed_positions

    def clear_stored(self) -> None:
        self._changed_commands, self._changed_positions = {}, {}

    def canonical_sections(self):
        self.sync(full=True)
        return self._sections

    def close(self) -> None:
        """Stop the child (its stdin closes); what was not synced is dropped, as a crash would drop it."""
        if self._writer.is_alive():
            self._frames.put(None)
            self._writer.join()
        self._process.wait()

    def _send(self, tag: bytes, body) -> None:
        self._frames.put(_frame(tag, body))

    def _write_frames(self) -> None:
        stdin = self._process.stdin
        failed = False
        while (data := self._frames.get()) is not None:
            if failed:
                continue  # keep draining, so the parent never blocks on a full queue; sync reports the failure
            try:
                stdin.write(data)
                stdin.flush()
            except OSError:
                failed = True
        try:
            stdin.close()
        except OSError:
            pass


def _frame(tag: bytes, body) -> bytes:
    """[u32 length][tag][body]. Rows are plain tuples, lists, ints and strings: marshal; the rest pickle.

    Marshal format 2 has no back-references: later formats look up every
    object shared with the state (a row's ints are the position's) in a table.
    """
    data = tag + (marshal.dumps(body, 2) if tag == _BATCH else pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL))
    return _FRAME.pack(len(data)) + data


def _read_frame(stream: BinaryIO) -> tuple[bytes, object] | None:
    """(tag, body), or None when the other side has gone."""
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    (length,) = _FRAME.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    tag = data[:1]
    return tag, marshal.loads(data[1:]) if tag == _BATCH else pickle.loads(data[1:])


def mirror_state(positions, markets, insurance, triggers) -> State:
    """What the projection reads of the state (positions, markets, funds, triggers), from the parent's copy."""
    state = State()
    for name, config, mark, mark_ts in markets:
        state.markets[name] = MarketState(config, mark, mark_ts)
    for key, size, cost, margin in positions:
        position = state.add_position(key)
        position.size, position.cost, position.margin = size, cost, margin
    state.insurance.update(insurance)
    for trigger_key, trigger in triggers:  # in the order they were set
        state.triggers[trigger_key] = trigger
        state.position_triggers.setdefault((trigger_key[0], trigger.market, trigger.position_side), []).append(trigger_key[1])
    state.dirty_positions.clear()  # the mirror is never checkpointed
    return state


class Follower:
    """The child's side: the mirror, the projection, and its own reader of the log."""

    def __init__(self, log_directory: str, start: int, positions, markets, insurance, triggers, snapshot) -> None:
        self.log = EmbeddedLog(log_directory, writable=False)
        self.records = self.log.read(start)
        self.state = state = mirror_state(positions, markets, insurance, triggers)
        self.projection = projection = LiquidationProjection()
        if snapshot is None:
            projection.rebuild(state)
        else:
            projection.restore(snapshot, state)
        self.outputs: list[tuple[bytes, bytes]] = []
        self.commands = self.cancels = self.alerts = 0
        self.refused: tuple[int, str] | None = None  # an answer the book refused: follow no further

    def _read_on(self, wanted: int):
        """The record at ``wanted`` when the parent read further than this reader had seen: read on from it."""
        self.records = self.log.read(wanted)
        offset, payload = next(self.records, (None, None))
        check(offset == wanted, f"the worker reads the record at offset {wanted} that the parent reduced")
        return payload

    def follow(self, rows: list) -> None:
        """Apply a batch of rows to the mirror and decide after each, as the parent would have in process.

        The hot loop of the worker: the projection's handler is called directly
        (every row's event type has one).
        """
        state, projection = self.state, self.projection
        positions, markets, insurance = state.positions, state.markets, state.insurance
        handlers, records, check_answer = projection.handlers, self.records, projection.check_answer
        if self.refused is not None:
            return
        for row in rows:
            offset = row[0]
            for at, payload in records:  # the records before it are skipped undecoded
                if at == offset:
                    break
            else:
                payload = self._read_on(offset)
                records = self.records
            event = decode_record(payload)
            event_type = type(event)
            kind = ROW_KINDS[event_type]
            if kind == POSITION:
                market = event.market
                if event_type is LiquidationFill or event_type is AdlFill:  # judged as the reducer would in process
                    verdict = check_answer(state, event)
                    if verdict is not None:
                        self.refused = (offset, verdict.reason)
                        return
                key = (event.account, market, event.position_side)
                position = positions.get(key)
                if len(row) == 2:  # closed
                    if position is not None:
                        state.remove_position(key)
                else:
                    if position is not None and (position.size > 0) != (row[2] > 0):
                        state.remove_position(key)  # flipped: the parent closed it first (its triggers died)
                        position = None
                    if position is None:
                        position = state.add_position(key)
                    _, _, position.size, position.cost, position.margin = row
                insurance[markets[market].fund] = row[1]
                state.offset = offset
            elif event_type is MarkPrice:  # applied by the parent: its price and time, and any auto-added margin
                market = markets[event.market]
                market.mark, market.mark_ts = event.price, event.ts
                if len(row) > 1:
                    state.top_ups = [(key, amount) for key, _, amount in row[1]]
                    for key, margin, _ in row[1]:
                        positions[key].margin = margin
                elif state.top_ups:
                    state.top_ups = []
                state.offset = offset
            elif kind == MARGINS:
                for key, margin in row[1]:
                    positions[key].margin = margin
                state.offset = offset
            else:
                check(apply_event(state, offset, event) is None, "the mirror applies what the parent applied")
            sequence = projection.sequence
            decisions = handlers[event_type](state, offset, event)
            if decisions:
                records_out, commands, cancels, alerts = decision_records(decisions, sequence)
                self.outputs.extend(records_out)
                self.commands += commands
                self.cancels += cancels
                self.alerts += alerts
        state.dirty_positions.clear()  # the mirror is never checkpointed

    def reply(self, full: bool) -> tuple[bytes, tuple]:
        if self.refused is not None:
            return _REFUSED, self.refused
        projection = self.projection
        changes = projection.stored_changes()
        projection.clear_stored()
        reply = (projection.sequence, self.outputs, self.commands, self.cancels, self.alerts, changes,
                 projection.sections() if full else None)  # fmt: skip
        self.outputs, self.commands, self.cancels, self.alerts = [], 0, 0, 0
        return _REPLY, reply


def serve(source: BinaryIO, sink: BinaryIO) -> None:
    """The child: follow the rows, decide, answer each sync; return when the parent closes the pipe."""
    follower = None
    while (frame := _read_frame(source)) is not None:
        tag, body = frame
        if tag == _BATCH:
            follower.follow(body)
        elif tag == _INIT:
            follower = Follower(*body)
            gc.freeze()  # the mirror is long-lived: keep it out of full collections
        elif tag == _SYNC:
            crash_point("worker.sync")
            sink.write(_frame(*follower.reply(body)))
            sink.flush()


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):  # the parent stops it, by closing the pipe once it has synced
        signal.signal(sig, signal.SIG_IGN)
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except Exception as error:  # one line for the operator; the parent then stops with its own
        print(f"ringfence: projection worker: {type(error).__name__}: {error}", file=sys.stderr)
        if os.environ.get("RINGFENCE_DEBUG"):
            raise
        return 1
    return 0


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # the mirror is garbage now: skip freeing a large heap object by object
