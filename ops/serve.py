"""`ringfence serve`: the reducer and the liquidation projection as a Kafka service (DESIGN.md §6).

Each owned partition p of ``<prefix>.events`` has a PartitionWorker: its own
RocksDB store in ``<data>/<prefix>.events-<p>/state``, its Reduction (state and
liquidation projection) and its outbox, partition p of each output topic.

The loop:
1. Poll the consumer for records of the owned partitions.
2. Each worker applies the records after its stored offset; an earlier one
   was applied before (a redelivery) and is skipped, so nothing is applied twice.
3. A worker checkpoints (state, outputs and offset in one RocksDB batch) when
   it has commands to send, has applied ``checkpoint_every`` events, a second
   has passed, or it has caught up with the partition.
4. After each checkpoint the outbox publishes to the output topics; then the
   group's offset is committed, a hint for tools and lag only: ringfence
   resumes from the offset stored with the state.

Rebalance: revoked partitions are checkpointed, published and closed before
they are released; assigned ones are restored from their store and the
consumer seeks to the stored offset + 1. Records fetched for a partition this
instance no longer owns are dropped. SIGTERM or SIGINT: apply the records in
hand, checkpoint, publish, leave the group.

Integrity (docs/decisions.md, "Integrity: the Kafka path"):
- The log's identity: before a partition applies anything after its stored
  offset S (on assignment, and again after the broker did not answer), the
  consumer seeks to S and the topic's record there must have the fingerprint
  the store keeps for S (projections.chain); a topic that ends before S or no
  longer holds S is not the log either. Until then nothing is applied or
  published; a different log halts the partition.
- Liveness: a fetch that returns records, or an answer to the offsets request
  sent when the broker has been silent for a second, is contact; none for
  ``broker_timeout`` seconds is one ``broker_down`` warning, /health 503 and
  ``ringfence_broker_up 0``, and contact again one ``broker_up`` warning. A
  thread of its own judges this (the loop may be waiting on the broker) and
  logs before /health changes.
- A record the core cannot apply or checkpoint (a bug) halts its partition
  just before that record, every earlier one checkpointed; the others go on.
  A halted partition fetches nothing more and is judged again on restart.
- A failed publish keeps the outputs for the next try (the outbox marks only
  what the broker acknowledged); a producer that failed other than by a
  timeout is replaced.
"""

import os
import signal
import threading
import time
from itertools import islice
from pathlib import Path

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, OffsetOutOfRangeError
from kafka.structs import OffsetAndMetadata

from ringfence.core.check import InvariantError
from ringfence.core.digest import compute_digest
from ringfence.core.limits import CHECKPOINT_EVERY_EVENTS
from ringfence.core.model import MarketConfig, Verdict
from ringfence.ops.fund_board import PHASE_CANDIDATES, PHASE_MARKET, PHASE_REPORT, Board, BoardConflict, BoardCoordinator
from ringfence.ops.fund_board import ReportRecord, ReportsUnusable
from ringfence.ops.fund_board import encode_record
from ringfence.ops.kafka_log import OUTPUT_KINDS, REPORTS, KafkaLog, KafkaSettings, KafkaSetupError, TopicError
from ringfence.ops.kafka_log import check_output_topics, consumer_settings, new_consumer, new_producer
from ringfence.ops.logging import get_logger
from ringfence.ops.metrics import Metrics, PartitionStatus
from ringfence.ops.partitioning import account_partition
from ringfence.projections import fund_stage
from ringfence.projections.chain import fingerprint
from ringfence.projections.liquidation import stuck_positions
from ringfence.projections.outbox import publish_pending
from ringfence.projections.runner import Reduction, output_record
from ringfence.projections.store import DEADLETTER, StateStore, StoreCorrupt
from ringfence.projections.views import adl_quantile_counts

CHECKPOINT_SECONDS = 1.0  # the longest a worker keeps applied events only in memory
DIGEST_IDLE_SECONDS = 5.0  # a caught-up partition's digest is refreshed at most this often
BROKER_TIMEOUT_SECONDS = 15.0  # default of --broker-timeout: silence that makes the broker "down"
PROBE_SECONDS = 1.0  # a silent broker is asked for offsets this often (at most a quarter of the timeout)
PUBLISH_RETRY_SECONDS = 1.0  # a failed publish is tried again this often
WATCH_SECONDS = 0.1  # the broker's liveness is judged this often
SHOWN_BYTES = 500  # of a record, in a log line
EXCHANGE_SECONDS = 0.1  # the longest one step carries barriers on before the loop fetches and probes again
BACKLOG_PAUSE = 20_000  # records fetched for a partition waiting at a barrier before its fetching pauses

# A test-only fault (docs/decisions.md): with RINGFENCE_FAULT_POISON=TEXT, applying a record whose payload
# contains TEXT raises, as a bug in the core would. It is read here and nowhere else.
FAULT_POISON = "RINGFENCE_FAULT_POISON"


def with_poison_fault(decode):
    marker = os.environ.get(FAULT_POISON, "").encode()
    if not marker:
        return decode

    def poisoned(payload):
        if payload is not None and marker in payload:
            raise RuntimeError(f"{FAULT_POISON} matches this record (a test-only fault)")
        return decode(payload)

    return poisoned


def shown(payload) -> str:
    return b"" if payload is None else bytes(payload[:SHOWN_BYTES]).decode("utf-8", "replace")


def partition_dir(data: Path, settings: KafkaSettings, partition: int) -> Path:
    """A partition's data directory: ``ringfence digest --data`` and the other views work on it."""
    return data / f"{settings.topic('events')}-{partition}"


class PartitionWorker:
    def __init__(self, settings: KafkaSettings, data: Path, partition: int, producer, status: PartitionStatus,
                 checkpoint_every: int, chain_every: int | None, commit_timeout: float | None = None,
                 partitions: int = 1):  # fmt: skip
        self.partition = partition
        # with several partitions the fund stage decides barriers from every partition's reports (ops.fund_board)
        self.partitions, self.coordinated = partitions, partitions > 1
        self.backlog: list[tuple[int, bytes]] = []  # fetched, not yet applied (waiting behind a barrier)
        self.phase = 0  # of the barrier exchange it waits in (0: none)
        self.waiting_since: float | None = None
        self.unsent: bytes | None = None  # a report the broker did not take yet
        self.held: list[tuple[int, bytes]] = []  # a market config waiting for every partition's position count
        self.counted: int | None = None  # the offset of the market config whose counts are in
        self._elsewhere: dict[str, int] = {}  # market -> its open positions in the other partitions (counted)
        self.board: Board | None = None  # the service's, for a coordinated partition (isolating a failure reads it)
        self.reports_unflushed: list[bytes] = []  # handed to the producer since the last checkpoint
        self.others_elsewhere = True  # some partition is another instance's (the service keeps it true)
        self.status = status
        self.checkpoint_every, self.chain_every = checkpoint_every, chain_every
        self.topic = settings.topic("events")
        self.log = get_logger().bind(topic=self.topic, partition=partition)
        self.store = StateStore(partition_dir(data, settings, partition) / "state")
        self.reduction = self._coordinate(Reduction(self.store, chain_every=chain_every))
        self.reports = KafkaLog(settings, settings.topic(REPORTS), partition, producer=producer,
                                commit_timeout=commit_timeout) if self.coordinated else None  # fmt: skip
        self.events = KafkaLog(settings, self.topic, partition, partitions=partitions)  # decodes this partition's records
        self.decode = with_poison_fault(self.events.decode)
        self.sinks = {kind: KafkaLog(settings, settings.topic(kind), partition, producer=producer,
                                     commit_timeout=commit_timeout) for kind in OUTPUT_KINDS}  # fmt: skip
        self.last_checkpoint = time.monotonic()
        self.commands_checkpointed = 0
        self.last_digest = (-2, 0.0)  # (offset, monotonic time)
        self.unsaved_records: list[tuple[int, bytes]] = []  # applied since the last checkpoint (for _isolate)
        self.halted: str | None = None  # why it stopped applying
        self.verify_at: int | None = None  # the offset whose record must be the applied one before going on
        self.wrong_log = False  # the topic is not the log the store applied: publish nothing more
        self.publish_error: KafkaError | None = None  # the last publish failed; its outputs wait in the store
        self.producer_failed = False  # ... other than by a timeout: the service replaces the producer
        # dead letters of report records read from this partition of the reports topic (Service), to publish:
        # ((partition, offset) there, record)
        self.report_dead_letters: list[tuple[tuple[int, int], bytes]] = []
        self.last_publish = 0.0
        self.paused = False  # set by the service once it stops fetching for a halted partition
        self.expect_log()  # stored outputs not yet published go once the topic is proven the same log
        self._update_status()
        self.log.info("partition_restored", offset=self.reduction.state.offset)

    def _coordinate(self, reduction: Reduction) -> Reduction:
        """Tell the projection which accounts are this partition's: its barriers then wait for the others."""
        if self.coordinated:
            projection = reduction.projection
            projection.partition = self.partition
            projection.owns = lambda account: account_partition(account, self.partitions) == self.partition
            projection.open_elsewhere = lambda event: self._elsewhere[event.market]
            projection.coordinator = None  # a barrier waits for the other partitions' reports (advance)
        return reduction

    @property
    def next_offset(self) -> int:
        return self.reduction.state.offset + 1

    @property
    def waiting(self) -> bool:
        return self.reduction.parked or bool(self.held)

    @property
    def resume_offset(self) -> int:
        """Where the consumer fetches from: the last applied record while it is to be compared, else the next."""
        return self.next_offset if self.verify_at is None else self.verify_at

    def expect_log(self) -> None:
        """Apply nothing more until the topic's record at the last applied offset is proven the one applied."""
        if self.halted is not None:
            return
        self.verify_at = self.reduction.state.offset  # from now on nothing is published ...
        self.checkpoint(time.monotonic())  # ... and what is applied has its fingerprints stored
        offset = self.reduction.state.offset
        self.verify_at = offset if offset >= 0 and self.halted is None else None  # nothing applied: nothing to prove

    def apply(self, records: list) -> int:
        """Apply the records after the stored offset, in order; return how many."""
        if self.halted is not None:
            return 0
        if self.verify_at is not None:
            records = self._compare(records)
        last = self.backlog[-1][0] if self.backlog else self.reduction.state.offset
        fresh = [(record.offset, record.value) for record in records if record.offset > last]
        if not fresh:
            return 0
        if fresh[0][0] != last + 1:  # compaction or transaction markers; logged, never hidden
            self.log.warning("offset_gap", expected=last + 1, got=fresh[0][0])
        self.backlog += fresh
        return self.drain()

    def drain(self) -> int:
        """Apply the backlog, in order, until it is empty or a barrier waits for the other partitions."""
        events = self.reduction.report.events
        try:
            while self.backlog and not self.waiting and self.halted is None:
                if self.coordinated and self.due(time.monotonic(), caught_up=False):
                    self.checkpoint(time.monotonic())  # between barriers: a catch-up is all barriers
                records = iter(self.backlog)
                outputs_before = len(self.reduction.outputs)
                known = self.unsaved_records[-1][0] if self.unsaved_records else self.reduction.state.offset
                # what may be applied now, for _isolate (which re-applies these if applying fails)
                self.unsaved_records += [r for r in self.backlog if r[0] > known]
                # stops after a chain link, at a coordinated barrier, or before a market config the others must count
                self.reduction.apply(records, decode=self.decode, coordinated=self.coordinated,
                                     stop_before=self._needs_counts if self.coordinated else None, held=self.held)  # fmt: skip
                self.backlog = list(records)
                for key, record in self.reduction.outputs[outputs_before:]:
                    if key.startswith(DEADLETTER):
                        self.log.warning("dead_letter", offset=int.from_bytes(key[len(DEADLETTER) :], "big", signed=True),
                                         record=shown(record))  # fmt: skip
                if self.reduction.parked:
                    self._begin_barrier()
                elif self.held:
                    self._begin_count()
                elif self.reduction.at_link:
                    self._commit(time.monotonic(), snapshot=True)
                    self.publish()
        except StoreCorrupt:
            raise  # the store, not a record: the service stops with its one line (docs/decisions.md)
        except Exception as error:  # noqa: BLE001 (a bug in the core: _isolate finds the record and halts there)
            self._isolate(error)
        return self.reduction.report.events - events

    # -- the fund stage across partitions (ops.fund_board) -------------------------------

    def _needs_counts(self, offset: int, event) -> bool:
        """A market config moving a market to another fund: every partition's open positions in it decide it."""
        if type(event) is not MarketConfig or offset == self.counted:
            return False
        market = self.reduction.state.markets.get(event.market)
        return market is not None and market.fund != (event.insurance_fund or event.settle)

    def _begin_count(self) -> None:
        offset, payload = self.held[0]
        event = self.decode(payload)
        count = len(self.reduction.state.by_market.get(event.market, ()))
        self._wait(ReportRecord(self.partitions, self.partition, self.reduction.projection.barriers, PHASE_MARKET,
                                count=count, tag=event.id), PHASE_MARKET)  # fmt: skip

    def _begin_barrier(self) -> None:
        report, _ = self.reduction.projection.pending
        number = self.reduction.projection.barriers
        self._wait(ReportRecord(self.partitions, self.partition, number, PHASE_REPORT, report), PHASE_REPORT)

    def _wait(self, record: ReportRecord, phase: int) -> None:
        self.phase = phase
        self.waiting_since = time.monotonic()
        self.unsent = encode_record(record)
        self._send()

    def _send(self) -> None:
        """Hand the report to the producer (it goes within its linger time) and to this instance's own board.

        The producer is flushed before the next checkpoint (``_reports_durable``): a partition never stores a
        state past a barrier whose report the broker may not have, since the others wait for it.
        """
        if self.unsent is None:
            return
        try:
            self.reports.append(self.unsent)
        except KafkaError as error:
            self.log.warning("report_deferred", error=f"{type(error).__name__}: {error}")
            return
        self.reports_unflushed.append(self.unsent)
        self.board.add(self.unsent)  # the partitions this instance owns need not wait for the broker
        self.unsent = None
        if self.others_elsewhere:  # another instance waits for it: now, not after the producer's linger
            self._reports_durable()

    def _reports_durable(self) -> bool:
        """Wait until the broker has every report sent since the last checkpoint; False (try later) if it has not."""
        if not self.reports_unflushed:
            return True
        try:
            self.reports.commit()
        except KafkaError as error:  # the sends are forgotten: hand them to the producer again
            self.log.warning("report_deferred", error=f"{type(error).__name__}: {error}")
            for payload in self.reports_unflushed:
                self.reports.append(payload)
            return False
        self.reports_unflushed = []
        return True

    def advance(self, board: Board) -> bool:
        """Go on with the exchange this partition waits in, as far as the board allows; True if it moved on."""
        if not self.waiting or self.halted is not None:
            return False
        self._send()
        if self.unsent is not None:
            return False
        number = self.reduction.projection.barriers
        if self.held:
            return self._advance_count(board, number)
        reports = board.complete(number, PHASE_REPORT)
        if reports is None:
            self.status.fund_stage_waiting = board.missing(number, PHASE_REPORT)
            return False
        reports = [record.report for record in reports]
        try:
            fund_stage.check_reports(reports, self.partitions)
        except InvariantError as error:  # not one log: market-wide events must reach every partition
            self.halt(f"{self.topic} partition {self.partition}: barrier {number}: {error}", barrier=number)
            return False
        barrier, wanted = fund_stage.barrier_demand(reports)
        prefixes = []
        if wanted:
            if self.phase == PHASE_REPORT:
                own = fund_stage.own_prefixes(self.reduction.projection, self.reduction.state, barrier, wanted)
                self._wait(ReportRecord(self.partitions, self.partition, number, PHASE_CANDIDATES, candidates=own),
                           PHASE_CANDIDATES)  # fmt: skip
                if self.unsent is not None:
                    return False
            records = board.complete(number, PHASE_CANDIDATES)
            if records is None:
                self.status.fund_stage_waiting = board.missing(number, PHASE_CANDIDATES)
                return False
            prefixes = [record.candidates for record in records]
        decisions = fund_stage.decide_with_prefixes(reports, prefixes)
        self.reduction.finish_barrier(decisions)
        self._done_waiting()
        self._update_status()
        if self.reduction.at_link:
            self._commit(time.monotonic(), snapshot=True)
            self.publish()
        self.drain()
        return True

    def _advance_count(self, board: Board, number: int) -> bool:
        offset, payload = self.held[0]
        event = self.decode(payload)
        records = board.complete(number, PHASE_MARKET, event.id)
        if records is None:
            self.status.fund_stage_waiting = board.missing(number, PHASE_MARKET, event.id)
            return False
        market = event.market
        mine = next(record.count for record in records if record.partition == self.partition)
        self._elsewhere = {market: sum(record.count for record in records) - mine}
        self.counted = offset
        self.backlog[:0] = self.held
        self.held = []
        self._done_waiting()
        self.drain()
        return True

    def _done_waiting(self) -> None:
        self.phase, self.waiting_since = 0, None
        self.status.fund_stage_waiting = []

    def _compare(self, records: list) -> list:
        """The records, once the one at ``verify_at`` has the stored fingerprint; else halt, and none."""
        at = self.verify_at
        record = next((record for record in records if record.offset >= at), None)
        if record is None:
            return []
        if record.offset != at:
            self.halt_wrong_log(f"the topic has no record at the stored offset {at}, its next is {record.offset}",
                                topic_offset=record.offset)  # fmt: skip
            return []
        stored = dict(islice(self.store.fingerprints(after=at - 1), 1)).get(at)
        found = fingerprint(record.value)
        if found != stored:
            self.halt_wrong_log(f"the topic's record at the stored offset {at} is not the one applied (fingerprint "
                                f"{found.hex()}, stored {stored.hex() if stored else 'none'}): another log",
                                topic_offset=at)  # fmt: skip
            return []
        self.verify_at = None
        self.log.info("log_verified", offset=at)
        self.publish()
        return records

    def check_end(self, high: int | None) -> None:
        """A topic whose fetch high watermark is at or before the last applied offset is not the log applied."""
        stored = self.reduction.state.offset
        if high is not None and high <= stored and self.halted is None:
            self.halt_wrong_log(f"the topic ends at offset {high - 1}, before the stored offset {stored}",
                                topic_end=high - 1)  # fmt: skip

    def halt_wrong_log(self, reason: str, **fields) -> None:
        self.wrong_log, self.verify_at = True, None
        self.halt(f"{self.topic} partition {self.partition}: {reason}", **fields)

    def halt(self, reason: str, **fields) -> None:
        """Stop applying (the service pauses the fetches), with one line; a restart judges the partition again."""
        self._update_status()  # first: /health (another thread) never shows the halt beside an older offset
        self.halted = self.status.halted = reason
        self.log.error("partition_halted", reason=reason, stored_offset=self.reduction.state.offset, **fields)

    def _isolate(self, error: Exception) -> None:
        """Applying or checkpointing failed (a bug): halt just before the record that fails, all before it durable.

        What was applied since the last checkpoint is dropped (it may hold part of the failed record) and
        applied again record by record from the store, each checkpointed, so that the failing one is named.
        """
        records, self.unsaved_records = self.unsaved_records, []
        self.reduction = self._coordinate(self.reduction.restored(chain_every=self.chain_every))
        if self.coordinated:
            # the barriers on the way were decided already: their decisions come again from the board, at once
            self.held, self.phase, self.waiting_since = [], 0, None  # a held record is among ``records``
            projection = self.reduction.projection
            coordinator = BoardCoordinator(self.board, self.partition, projection)
            projection.coordinator, projection.open_elsewhere = coordinator, coordinator.open_elsewhere
        self.backlog = []  # what follows is applied again below, record by record
        for offset, payload in records:
            if offset <= self.reduction.state.offset:
                continue
            try:
                self.reduction.apply([(offset, payload)], decode=self.decode)
                self._commit(time.monotonic(), snapshot=self.reduction.at_link)
            except ReportsUnusable:  # a barrier the partitions have not decided yet: from here on as usual
                self.reduction = self._coordinate(self.reduction.restored(chain_every=self.chain_every))
                self.backlog = [record for record in records if record[0] >= offset]
                self.log.warning("failure_not_repeated", error=f"{type(error).__name__}: {error}", offset=offset - 1)
                break
            except Exception as failed:  # noqa: BLE001
                self.reduction = self._coordinate(self.reduction.restored(chain_every=self.chain_every))
                self.halt(f"{self.topic} partition {self.partition}: the record at offset {offset} fails: "
                          f"{type(failed).__name__}: {failed}", offset=offset, record=shown(payload))  # fmt: skip
                break
        else:
            self.log.warning("failure_not_repeated", error=f"{type(error).__name__}: {error}",
                             offset=self.reduction.state.offset)  # fmt: skip
            self.reduction = self._coordinate(self.reduction)  # barriers wait for the others again
        self.publish()
        self._update_status()

    def due(self, now: float, caught_up: bool) -> bool:
        reduction = self.reduction
        return bool(reduction.unsaved) and not self.waiting and (
            caught_up
            or reduction.report.commands > self.commands_checkpointed
            or reduction.unsaved >= self.checkpoint_every
            or now - self.last_checkpoint >= CHECKPOINT_SECONDS
        )

    def checkpoint(self, now: float, snapshot: bool = False) -> bool:
        """Make the applied events durable (and keep a snapshot there), then publish their outputs."""
        try:
            if not self._commit(now, snapshot):
                return False
        except StoreCorrupt:
            raise
        except Exception as error:  # noqa: BLE001 (a bug: _isolate finds the record)
            self._isolate(error)
        self.publish()
        self._update_status()
        return True

    def _commit(self, now: float, snapshot: bool) -> bool:
        if self.coordinated and not self._reports_durable():
            return False
        links = list(self.reduction.chain.links)  # the checkpoint stores them
        if snapshot:
            self.reduction.snapshot()
        elif not self.reduction.checkpoint():
            return False
        offset = self.reduction.state.offset
        self.unsaved_records = [record for record in self.unsaved_records if record[0] > offset]
        self.last_checkpoint = now
        self.commands_checkpointed = self.reduction.report.commands
        for link in links:
            self.log.info("digest", offset=link.offset, digest=link.digest, chain=link.chain)
        if links:
            self.status.digest, self.status.digest_offset = links[-1].digest, links[-1].offset
        return True

    def publish(self) -> None:
        """Publish the checkpointed outputs (projections.outbox); if the broker fails, they wait for the next try."""
        if self.verify_at is not None or self.wrong_log:
            return
        self.last_publish = time.monotonic()
        try:
            publish_pending(self.store, self.sinks)
            if self.report_dead_letters:  # not in the store: sent again after a failure, like the outbox
                sink = self.sinks["deadletters"]
                for _, body in self.report_dead_letters:
                    sink.append(body)
                sink.commit()
                self.report_dead_letters = []
        except KafkaError as error:
            if self.publish_error is None:
                self.log.warning("publish_deferred", error=f"{type(error).__name__}: {error}")
            self.publish_error = error
            self.producer_failed = not isinstance(error, KafkaTimeoutError)
            return
        if self.publish_error is not None:
            self.log.info("published_after_retry")
        self.publish_error = None

    def digest(self, now: float) -> None:
        state = self.reduction.state
        if self.last_digest[0] == state.offset:
            return
        projection = self.reduction.projection
        digest = compute_digest(state, projection.canonical_sections())
        self.status.stuck_positions = len(stuck_positions(state, projection))  # O(state), as the digest
        self.status.adl_quantiles = adl_quantile_counts(state)  # O(n log n), as the digest
        self.last_digest = (state.offset, now)
        self.status.digest, self.status.digest_offset = digest, state.offset
        self.log.info("digest", offset=state.offset, digest=digest)

    def idle(self, now: float) -> None:
        """Caught up: refresh the digest now and then."""
        if self.last_digest[0] != self.reduction.state.offset and now - self.last_digest[1] >= DIGEST_IDLE_SECONDS:
            self.digest(now)

    def close(self) -> None:
        now = time.monotonic()
        if self.waiting:  # never a checkpoint inside a barrier: the next owner applies it again from the store
            self.log.info("released_at_barrier", stored_offset=self.store.stored_offset())
            self.store.close()
            return
        self.checkpoint(now)
        self.digest(now)
        self.store.close()
        self.log.info("partition_released", offset=self.reduction.state.offset, digest=self.status.digest)

    def _update_status(self) -> None:
        report, status = self.reduction.report, self.status
        status.offset = self.reduction.state.offset
        status.open_positions = len(self.reduction.state.positions)
        status.events, status.commands, status.cancels = report.events, report.commands, report.cancels
        status.live_commands = self.reduction.projection.book.live_count()
        status.rejections, status.deadletters = report.rejections, report.deadletters
        projection = self.reduction.projection
        status.fund_stage_barrier = projection.barriers
        status.fund_stage_decisions, status.fund_stage_digest = projection.stage_decisions, projection.stage_digest


class _Rebalance(ConsumerRebalanceListener):
    """kafka-python logs and swallows a listener's exception; keep it for the loop to raise."""

    def __init__(self, service: "Service"):
        self.service = service

    def on_partitions_revoked(self, revoked) -> None:
        try:
            self.service.release([tp.partition for tp in revoked])
        except Exception as error:  # noqa: BLE001 (re-raised by the loop)
            self.service.failure = error

    def on_partitions_assigned(self, assigned) -> None:
        try:
            self.service.acquire([tp.partition for tp in assigned])
        except Exception as error:  # noqa: BLE001
            self.service.failure = error


class Service:
    def __init__(self, settings: KafkaSettings, data: Path, *, group: str | None, partitions: list[int] | None,
                 checkpoint_every: int = CHECKPOINT_EVERY_EVENTS // 50, chain_every: int | None = None,
                 metrics: Metrics | None = None, broker_timeout: float = BROKER_TIMEOUT_SECONDS):  # fmt: skip
        self.settings, self.data = settings, data
        self.group, self.static = group, partitions
        self.checkpoint_every, self.chain_every = checkpoint_every, chain_every
        self.metrics = metrics or Metrics()
        self.metrics.broker_timeout = self.broker_timeout = broker_timeout
        self.metrics.broker_contact = time.monotonic()
        self.probe_every = min(PROBE_SECONDS, broker_timeout / 4)
        self.last_probe = 0.0
        self.suspect = False  # an offsets request went unanswered: every partition proves its log again
        self.topic = settings.topic("events")
        self.workers: dict[int, PartitionWorker] = {}
        self.partition_count = 1  # of the events topic, known once it is described
        self.board: Board | None = None  # with several partitions: every partition's barrier reports
        self.reports_consumer = None
        self.report_dead_letters_sent: set[tuple[int, int]] = set()  # (partition, offset) of the reports topic
        self.stopping = False
        self.failure: Exception | None = None
        self.log = get_logger()
        self.consumer = self.producer = None

    def stop(self, *_) -> None:
        self.stopping = True

    # -- ownership -----------------------------------------------------------------------

    def acquire(self, partitions: list[int]) -> None:
        self.metrics.rebalances += 1
        for partition in sorted(partitions):
            if partition in self.workers:
                continue  # kept across the rebalance (not revoked)
            status = PartitionStatus()
            worker = PartitionWorker(self.settings, self.data, partition, self.producer, status,
                                     self.checkpoint_every, self.chain_every, self.broker_timeout,
                                     self.partition_count)  # fmt: skip
            worker.board = self.board
            # shown by /health only once its store is loaded: never as offset -1 in between
            self.metrics.partitions[partition] = status
            self.workers[partition] = worker
            self._resume(worker)
            if self.board is not None:  # it may be behind the others: read every report again
                self.reports_consumer.seek_to_beginning()
        self._owners_changed()
        self.log.info("assigned", partitions=sorted(self.workers))

    def _owners_changed(self) -> None:
        for worker in self.workers.values():
            worker.others_elsewhere = len(self.workers) < self.partition_count

    def _resume(self, worker: PartitionWorker) -> None:
        tp = TopicPartition(self.topic, worker.partition)
        if worker.halted is not None:
            self.consumer.pause(tp)  # it fetches nothing more
            worker.paused = True
        else:
            self.consumer.seek(tp, worker.resume_offset)

    def release(self, partitions: list[int]) -> None:
        for partition in sorted(partitions):
            worker = self.workers.pop(partition, None)
            if worker is not None:
                worker.close()
                self.report_dead_letters_sent -= {where for where, _ in worker.report_dead_letters}  # not sent
                self._commit_hint([worker])
                self.metrics.partitions.pop(partition, None)
        self._owners_changed()

    def _commit_hint(self, workers: list[PartitionWorker]) -> None:
        """Commit the group offsets, asynchronously: they are hints, and a rebalance listener may not block."""
        if self.group is None or not workers:
            return
        offsets = {TopicPartition(self.topic, w.partition): OffsetAndMetadata(w.next_offset, "", -1) for w in workers}
        self.consumer.commit_async(offsets, callback=self._hint_result)

    def _hint_result(self, offsets, response) -> None:
        if isinstance(response, Exception):  # the stored offset is what counts
            self.log.info("commit_hint_skipped", error=type(response).__name__)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.producer = new_producer(self.settings)
        self.consumer = new_consumer(self.settings, self.group)
        watched = threading.Event()
        try:
            count = self.partition_count = check_output_topics(self.consumer, self.settings)
            if count > 1:
                self._open_board(count)
            if self.static is not None:
                outside = [p for p in self.static if not 0 <= p < count]
                if outside:
                    raise TopicError(f"{self.topic} has partitions 0..{count - 1}; no partition {outside}")
                self.consumer.assign([TopicPartition(self.topic, p) for p in self.static])
                self.acquire(self.static)
            else:
                self.consumer.subscribe([self.topic], listener=_Rebalance(self))
            self.log.info("serving", topic=self.topic, group=self.group, static=self.static)
            self._contact()  # the topics were just described
            threading.Thread(target=self._watch, args=(watched,), name="broker-watch", daemon=True).start()
            self.metrics.status = "ok"
            while not self.stopping:
                self._step()
        finally:
            watched.set()
            serving, self.metrics.status = self.metrics.status == "ok", "stopping"
            self._shutdown(serving)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _open_board(self, count: int) -> None:
        """Read every partition's fund-stage reports, from the start of the reports topic (ops.fund_board)."""
        from kafka import KafkaConsumer

        self.board = Board(count)
        # a barrier waits on this consumer: fetch what is there at once rather than wait for more
        self.reports_consumer = KafkaConsumer(**{**consumer_settings(self.settings, None), "fetch_max_wait_ms": 5})
        self.reports_consumer.assign([TopicPartition(self.settings.topic(REPORTS), p) for p in range(count)])
        self.reports_consumer.seek_to_beginning()

    def _exchange(self) -> None:
        """Take the new reports, then move every partition waiting at a barrier on as far as they allow."""
        waiting = [worker for worker in self.workers.values() if worker.waiting]
        try:
            batches = self.reports_consumer.poll(timeout_ms=5 if waiting else 0)
        except OffsetOutOfRangeError:  # the topic lost what was read (a broker back as another log): from its start
            self.log.warning("reports_topic_reset")
            self.reports_consumer.seek_to_beginning()
            self.report_dead_letters_sent.clear()  # another log: its offsets name other records
            batches = {}
        except KafkaError as error:  # the broker's liveness is judged by the events consumer
            self.log.info("reports_poll_failed", error=type(error).__name__)
            batches = {}
        for tp, records in batches.items():
            for record in records:
                try:
                    self.board.add(record.value, f"{tp.topic}/{tp.partition}", tp.partition, record.offset)
                except BoardConflict as error:
                    for worker in list(self.workers.values()):
                        worker.halt(str(error))
        self._take_report_dead_letters()
        # as far as the board allows, but back to the loop now and then: it also fetches, probes and checkpoints
        deadline, moved = time.monotonic() + EXCHANGE_SECONDS, True
        while moved and time.monotonic() < deadline:
            moved = False
            for worker in list(self.workers.values()):
                while worker.advance(self.board) and time.monotonic() < deadline:
                    moved = True
        now = time.monotonic()
        for partition, worker in list(self.workers.items()):
            status = worker.status
            status.fund_stage_seconds = 0.0 if worker.waiting_since is None else now - worker.waiting_since
            status.fund_stage_barrier = worker.reduction.projection.barriers
            tp = TopicPartition(self.topic, partition)
            if worker.waiting and len(worker.backlog) >= BACKLOG_PAUSE and tp not in self.consumer.paused():
                self.consumer.pause(tp)
            elif not worker.waiting and tp in self.consumer.paused() and worker.halted is None:
                self.consumer.resume(tp)
        if self.workers:
            self.board.forget_before(min(w.reduction.projection.barriers for w in self.workers.values()))

    def _take_report_dead_letters(self) -> None:
        """Report records the board did not use: the owner of the reports partition they were read from (its
        partition of the dead-letters topic) logs, counts and publishes each, through the partition's publish
        (its retries, its producer, nothing while the topic is not proven the log). Every instance reads the
        whole reports topic on each acquisition: one that gets a partition again, or restarts, sends its records
        again (their source and offset are their identity, as for every output: at least once)."""
        touched = {}
        for partition, offset, bad in self.board.dead_letters:
            worker, where = self.workers.get(partition), (partition, offset)
            if worker is None or where in self.report_dead_letters_sent:
                continue  # another instance's, or done
            self.report_dead_letters_sent.add(where)
            self.log.warning("report_dead_letter", source=bad.source, offset=offset, reason=bad.reason, detail=bad.detail)
            self.metrics.report_dead_letters += 1
            body = output_record(offset, bad, Verdict("deadletter", bad.reason, bad.detail))[1]
            worker.report_dead_letters.append((where, body))
            touched[partition] = worker
        self.board.dead_letters.clear()
        for worker in touched.values():
            if worker.publish_error is None:  # else the loop retries it
                worker.publish()

    def _step(self) -> None:
        waiting = self.board is not None and any(worker.waiting for worker in self.workers.values())
        try:
            batches = self.consumer.poll(timeout_ms=0 if waiting else 100)
        except OffsetOutOfRangeError as error:  # auto_offset_reset="none": never skip, never rewind
            batches = {}
            self._out_of_range(error.args[0] if error.args and isinstance(error.args[0], dict) else {})
        if self.failure is not None:
            raise self.failure
        if batches:
            self._contact()
        for tp, records in batches.items():
            worker = self.workers.get(tp.partition)
            if worker is not None:  # else: fetched before this instance lost the partition
                self.metrics.events_total += worker.apply(records)
        if self.board is not None:
            self._exchange()
        now = time.monotonic()
        checkpointed = []
        for partition, worker in list(self.workers.items()):
            high = self.consumer.highwater(TopicPartition(self.topic, partition))
            caught_up = high is not None and worker.next_offset >= high
            worker.status.highwater = high
            worker.check_end(high)
            if worker.due(now, caught_up) and worker.checkpoint(now):
                checkpointed.append(worker)
            elif worker.publish_error is not None and now - worker.last_publish >= PUBLISH_RETRY_SECONDS:
                worker.publish()
            if caught_up:
                worker.idle(now)
            if worker.halted is not None and not worker.paused:
                self._resume(worker)
        self._renew_producer()
        self._commit_hint(checkpointed)
        self._probe_if_silent()
        self.metrics.sample()

    # -- the broker ----------------------------------------------------------------------

    def _contact(self) -> None:
        self.metrics.broker_contact = time.monotonic()
        self.suspect = False

    def _probe_if_silent(self) -> None:
        now = time.monotonic()
        if self.metrics.broker_silence() >= self.probe_every and now - self.last_probe >= self.probe_every:
            self.last_probe = now
            self._probe()

    def _watch(self, stopped: threading.Event) -> None:
        """Judge the broker up or down, saying so once, before /health and the gauge change."""
        metrics = self.metrics
        while not stopped.wait(WATCH_SECONDS):
            silent = metrics.broker_silence()
            up = silent <= self.broker_timeout
            if up == metrics.broker_up:
                continue
            if up:
                self.log.warning("broker_up", bootstrap=self.settings.bootstrap)
            else:
                self.log.warning("broker_down", bootstrap=self.settings.bootstrap, silent_seconds=round(silent, 1),
                                 broker_timeout=self.broker_timeout)  # fmt: skip
            metrics.broker_up = up

    def _probe(self) -> None:
        """An answer is contact. No answer: the broker may come back as another log (a restart that lost its
        data), so every partition proves its log again before it applies or publishes anything more."""
        tps = [TopicPartition(self.topic, p) for p in list(self.workers)] or [TopicPartition(self.topic, 0)]
        try:
            self.consumer.beginning_offsets(tps, timeout_ms=max(1, int(self.probe_every * 1000)))
        except KafkaError:
            if not self.suspect:
                self.suspect = True
                for worker in list(self.workers.values()):
                    worker.expect_log()
                    self._resume(worker)
            return
        self._contact()

    def _out_of_range(self, offsets: dict) -> None:
        """The topic no longer holds the offset a partition fetches from: not the log applied (or truncated)."""
        for tp, offset in offsets.items():
            worker = self.workers.get(tp.partition)
            if worker is None or worker.halted is not None:
                continue
            try:
                start = self.consumer.beginning_offsets([tp], timeout_ms=max(1, int(self.probe_every * 1000)))[tp]
            except KafkaError:
                start = "unknown"
            worker.halt_wrong_log(f"the topic no longer holds offset {offset} (its first offset: {start})",
                                  topic_offset=start)  # fmt: skip
            self._resume(worker)

    def _renew_producer(self) -> None:
        """A producer that failed other than by a timeout may never recover (the broker lost its producer id:
        UnknownProducerIdError, then refused the epoch bump); the outbox goes on through a new one."""
        failed = [worker for worker in list(self.workers.values()) if worker.producer_failed]
        if not failed:
            return
        try:
            producer = new_producer(self.settings)
        except KafkaSetupError:  # the broker is not reachable: the next failure tries again
            return
        old, self.producer = self.producer, producer
        for worker in list(self.workers.values()):
            worker.producer_failed = False
            for sink in worker.sinks.values():
                sink.use_producer(producer)
        self.log.warning("producer_renewed", error=type(failed[0].publish_error).__name__)
        try:
            old.close(timeout=0)
        except Exception:  # noqa: BLE001 (its unconfirmed sends are sent again by the outbox)
            pass

    def _shutdown(self, serving: bool) -> None:
        try:
            if self.consumer is not None:
                self.release(list(self.workers))
        except Exception as error:  # noqa: BLE001 (the state is safe: what was not checkpointed is replayed)
            self.log.error("release_failed", error=f"{type(error).__name__}: {error}")
        finally:
            for client in (self.consumer, self.reports_consumer, self.producer):
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001
                        pass
            if serving:  # a start that failed says why in its error, not in a "stopped" line
                self.log.info("stopped")
