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
"""

import signal
import time
from pathlib import Path

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.structs import OffsetAndMetadata

from ringfence.core.digest import compute_digest
from ringfence.core.limits import CHECKPOINT_EVERY_EVENTS
from ringfence.ops.kafka_log import OUTPUT_KINDS, KafkaLog, KafkaSettings, TopicError, check_output_topics
from ringfence.ops.kafka_log import new_consumer, new_producer
from ringfence.ops.logging import get_logger
from ringfence.ops.metrics import Metrics, PartitionStatus
from ringfence.projections.liquidation import stuck_positions
from ringfence.projections.outbox import publish_pending
from ringfence.projections.runner import Reduction
from ringfence.projections.store import DEADLETTER, StateStore

CHECKPOINT_SECONDS = 1.0  # the longest a worker keeps applied events only in memory
DIGEST_IDLE_SECONDS = 5.0  # a caught-up partition's digest is refreshed at most this often


def partition_dir(data: Path, settings: KafkaSettings, partition: int) -> Path:
    """A partition's data directory: ``ringfence digest --data`` and the other views work on it."""
    return data / f"{settings.topic('events')}-{partition}"


class PartitionWorker:
    def __init__(self, settings: KafkaSettings, data: Path, partition: int, producer, status: PartitionStatus,
                 checkpoint_every: int, chain_every: int | None):  # fmt: skip
        self.partition = partition
        self.status = status
        self.checkpoint_every = checkpoint_every
        self.log = get_logger().bind(partition=partition)
        self.store = StateStore(partition_dir(data, settings, partition) / "state")
        self.reduction = Reduction(self.store, chain_every=chain_every)
        self.events = KafkaLog(settings, settings.topic("events"), partition)  # decodes this partition's records
        self.sinks = {kind: KafkaLog(settings, settings.topic(kind), partition, producer=producer)
                      for kind in OUTPUT_KINDS}  # fmt: skip
        self.last_checkpoint = time.monotonic()
        self.commands_checkpointed = 0
        self.last_digest = (-2, 0.0)  # (offset, monotonic time)
        resent = publish_pending(self.store, self.sinks)  # stored by an earlier run, not yet published
        self._update_status()
        self.log.info("partition_restored", offset=self.reduction.state.offset, republished=resent)

    @property
    def next_offset(self) -> int:
        return self.reduction.state.offset + 1

    def apply(self, records: list) -> int:
        """Apply the records after the stored offset, in order; return how many."""
        state = self.reduction.state
        fresh = [(record.offset, record.value) for record in records if record.offset > state.offset]
        if not fresh:
            return 0
        if fresh[0][0] != state.offset + 1:  # compaction or transaction markers; logged, never hidden
            self.log.warning("offset_gap", expected=state.offset + 1, got=fresh[0][0])
        records, applied = iter(fresh), 0
        while True:
            outputs_before = len(self.reduction.outputs)
            applied += self.reduction.apply(records, decode=self.events.decode)  # stops after a chain link
            for key, record in self.reduction.outputs[outputs_before:]:
                if key.startswith(DEADLETTER):
                    self.log.warning("dead_letter", offset=int.from_bytes(key[len(DEADLETTER) :], "big", signed=True),
                                     record=record.decode("utf-8", "replace")[:500])  # fmt: skip
            if not self.reduction.at_link:
                return applied
            self.checkpoint(time.monotonic(), snapshot=True)

    def due(self, now: float, caught_up: bool) -> bool:
        reduction = self.reduction
        return bool(reduction.unsaved) and (
            caught_up
            or reduction.report.commands > self.commands_checkpointed
            or reduction.unsaved >= self.checkpoint_every
            or now - self.last_checkpoint >= CHECKPOINT_SECONDS
        )

    def checkpoint(self, now: float, snapshot: bool = False) -> bool:
        """Make the applied events durable (and keep a snapshot there), then publish their outputs."""
        links = list(self.reduction.chain.links)  # the checkpoint stores them
        if snapshot:
            self.reduction.snapshot()
        elif not self.reduction.checkpoint():
            return False
        self.last_checkpoint = now
        self.commands_checkpointed = self.reduction.report.commands
        publish_pending(self.store, self.sinks)
        self._update_status()
        for link in links:
            self.log.info("digest", offset=link.offset, digest=link.digest, chain=link.chain)
        if links:
            self.status.digest, self.status.digest_offset = links[-1].digest, links[-1].offset
        return True

    def digest(self, now: float) -> None:
        state = self.reduction.state
        if self.last_digest[0] == state.offset:
            return
        projection = self.reduction.projection
        digest = compute_digest(state, projection.canonical_sections())
        self.status.stuck_positions = len(stuck_positions(state, projection))  # O(state), as the digest
        self.last_digest = (state.offset, now)
        self.status.digest, self.status.digest_offset = digest, state.offset
        self.log.info("digest", offset=state.offset, digest=digest)

    def idle(self, now: float) -> None:
        """Caught up: refresh the digest now and then."""
        if self.last_digest[0] != self.reduction.state.offset and now - self.last_digest[1] >= DIGEST_IDLE_SECONDS:
            self.digest(now)

    def close(self) -> None:
        now = time.monotonic()
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
                 metrics: Metrics | None = None):  # fmt: skip
        self.settings, self.data = settings, data
        self.group, self.static = group, partitions
        self.checkpoint_every, self.chain_every = checkpoint_every, chain_every
        self.metrics = metrics or Metrics()
        self.topic = settings.topic("events")
        self.workers: dict[int, PartitionWorker] = {}
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
            status = self.metrics.partitions[partition] = PartitionStatus()
            worker = PartitionWorker(self.settings, self.data, partition, self.producer, status,
                                     self.checkpoint_every, self.chain_every)  # fmt: skip
            self.workers[partition] = worker
            self.consumer.seek(TopicPartition(self.topic, partition), worker.next_offset)
        self.log.info("assigned", partitions=sorted(self.workers))

    def release(self, partitions: list[int]) -> None:
        for partition in sorted(partitions):
            worker = self.workers.pop(partition, None)
            if worker is not None:
                worker.close()
                self._commit_hint([worker])
                self.metrics.partitions.pop(partition, None)

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
        try:
            count = check_output_topics(self.consumer, self.settings)
            if self.static is not None:
                outside = [p for p in self.static if not 0 <= p < count]
                if outside:
                    raise TopicError(f"{self.topic} has partitions 0..{count - 1}; no partition {outside}")
                self.consumer.assign([TopicPartition(self.topic, p) for p in self.static])
                self.acquire(self.static)
            else:
                self.consumer.subscribe([self.topic], listener=_Rebalance(self))
            self.log.info("serving", topic=self.topic, group=self.group, static=self.static)
            self.metrics.status = "ok"
            while not self.stopping:
                self._step()
        finally:
            serving, self.metrics.status = self.metrics.status == "ok", "stopping"
            self._shutdown(serving)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _step(self) -> None:
        batches = self.consumer.poll(timeout_ms=100)
        if self.failure is not None:
            raise self.failure
        for tp, records in batches.items():
            worker = self.workers.get(tp.partition)
            if worker is not None:  # else: fetched before this instance lost the partition
                self.metrics.events_total += worker.apply(records)
        now = time.monotonic()
        checkpointed = []
        for partition, worker in list(self.workers.items()):
            high = self.consumer.highwater(TopicPartition(self.topic, partition))
            caught_up = high is not None and worker.next_offset >= high
            worker.status.highwater = high
            if worker.due(now, caught_up) and worker.checkpoint(now):
                checkpointed.append(worker)
            if caught_up:
                worker.idle(now)
        self._commit_hint(checkpointed)
        self.metrics.sample()

    def _shutdown(self, serving: bool) -> None:
        try:
            if self.consumer is not None:
                self.release(list(self.workers))
        except Exception as error:  # noqa: BLE001 (the state is safe: what was not checkpointed is replayed)
            self.log.error("release_failed", error=f"{type(error).__name__}: {error}")
        finally:
            for client in (self.consumer, self.producer):
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001
                        pass
            if serving:  # a start that failed says why in its error, not in a "stopped" line
                self.log.info("stopped")
