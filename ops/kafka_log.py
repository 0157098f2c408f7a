"""The Kafka log backend (kafka-python): topics, client settings, and a Log over one partition.

Topics (DESIGN.md §4.2, §6), all with the same partition count so that the
outputs of events partition p go to partition p of each output topic:

    <prefix>.events      input, JSON Lines records keyed by account
    <prefix>.commands    liquidation and ADL commands
    <prefix>.rejections  requests the state refused
    <prefix>.deadletter  records that could not be applied
    <prefix>.alerts      mark-price alerts (liquidations paused / resumed)
    <prefix>.digests     the digest chain's links (projections.chain)

Every client setting that matters is spelled out in ``producer_settings``,
``consumer_settings`` and ``admin_settings``; TLS and SASL come from
``KafkaSettings.security`` (ops.kafka_security), the same for all. The one offset that counts is the one stored with the
state; the broker's end offsets (ListOffsets) are used for display only, and
reading stops at the high watermark that fetch responses carry.
"""

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from ringfence.core import reasons as r
from ringfence.core.limits import MAX_LINE_BYTES
from ringfence.events.json_codec import decode_line, invalid
from ringfence.ops.kafka_security import KafkaSecurity, handshake_problem
from ringfence.ops.logging import get_logger
from ringfence.ops.partitioning import account_partition

# The protocol level we speak, pinned so that clients start without probing
# the broker; Kafka 2.8 requests are understood by every broker since 2.8,
# Kafka 4 included. --api-version overrides it.
DEFAULT_API_VERSION = (2, 8)

TOPIC_SUFFIXES = {
    "events": "events",
    "commands": "commands",
    "rejections": "rejections",
    "deadletters": "deadletter",
    "alerts": "alerts",
    "digests": "digests",
    "reports": "reports",  # the fund stage's exchange between partitions (ops.fund_board)
}
OUTPUT_KINDS = ("commands", "rejections", "deadletters", "alerts", "digests")
REPORTS = "reports"


class KafkaSetupError(Exception):
    """The broker or the topics are not as ringfence needs them; the message says what to do."""


class TopicError(KafkaSetupError):
    """A topic is missing or has a partition count ringfence cannot work with."""


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    prefix: str = "ringfence"
    api_version: tuple[int, ...] = DEFAULT_API_VERSION
    client_id: str = "ringfence"
    session_timeout_ms: int = 10_000
    connect_timeout_ms: int = 10_000  # how long a command waits for the first broker answer before it fails
    max_poll_records: int = 2_000
    security: KafkaSecurity = field(default_factory=KafkaSecurity)  # TLS and SASL, for every client
    extra: dict = field(default_factory=dict)  # for tests and tuning: merged over both client configs

    def topic(self, kind: str) -> str:
        return f"{self.prefix}.{TOPIC_SUFFIXES[kind]}"


def producer_settings(settings: KafkaSettings) -> dict:
    return {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "api_version": settings.api_version,
        "enable_idempotence": True,  # retries never duplicate or reorder a partition's records
        "acks": "all",  # a record counts once every in-sync replica has it
        "retries": 2**31 - 1,  # bounded by delivery_timeout_ms instead
        "delivery_timeout_ms": 120_000,  # then the send fails, and commit() raises
        "max_in_flight_requests_per_connection": 5,  # the most idempotence keeps in order
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": 1024 * 1024,
        "compression_type": None,
        "max_block_ms": 60_000,
        "request_timeout_ms": 30_000,
        "allow_auto_create_topics": False,  # topics are created with explicit counts (ensure_topics)
        "metrics_enabled": False,
        **settings.security.client_config(),
        **settings.extra.get("producer", {}),
    }


def consumer_settings(settings: KafkaSettings, group: str | None) -> dict:
    return {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "group_id": group,
        "api_version": settings.api_version,
        "enable_auto_commit": False,  # the offset that counts is stored with the state; commits are hints
        "auto_offset_reset": "none",  # a position the topic no longer holds raises: never skip, never rewind
        "isolation_level": "read_committed",  # never apply a record of an aborted transaction
        "allow_auto_create_topics": False,
        "max_poll_records": settings.max_poll_records,
        "fetch_min_bytes": 1,
        "fetch_max_wait_ms": 100,
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 1024 * 1024,  # larger than any record we accept (MAX_LINE_BYTES)
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": max(100, settings.session_timeout_ms // 5),
        "max_poll_interval_ms": 300_000,
        "request_timeout_ms": max(30_000, settings.session_timeout_ms + 5_000),
        "check_crcs": True,
        "metrics_enabled": False,
        **settings.security.client_config(),
        **settings.extra.get("consumer", {}),
    }


def admin_settings(settings: KafkaSettings) -> dict:
    return {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "api_version": settings.api_version,
        "bootstrap_timeout_ms": settings.connect_timeout_ms,
        **settings.security.client_config(),
    }


def new_producer(settings: KafkaSettings) -> KafkaProducer:
    check_reachable(settings)
    return KafkaProducer(**producer_settings(settings))


def new_consumer(settings: KafkaSettings, group: str | None = None) -> KafkaConsumer:
    check_reachable(settings)
    return KafkaConsumer(**consumer_settings(settings, group))


class BrokerUnreachable(KafkaSetupError):
    """No bootstrap server accepts a connection."""


class BrokerRefused(KafkaSetupError):
    """A broker accepts connections but not this client's TLS or SASL settings."""


def check_reachable(settings: KafkaSettings) -> None:
    """Fail fast when no bootstrap server accepts a TCP connection, or the first one refuses our TLS or SASL.

    kafka-python's metadata calls wait for a broker without a time limit
    (KafkaConsumer.bootstrap(timeout_ms) does not bound a bootstrap already
    started in the background), and it retries a failed TLS or SASL handshake
    forever too, so commands check this first and give one clear error
    instead of hanging.
    """
    timeout = settings.connect_timeout_ms / 1000
    for server in settings.bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            connection = socket.create_connection((host, int(port)), timeout=timeout)
        except (OSError, ValueError):
            continue
        problem = handshake_problem(connection, host, f"{host}:{port}", settings.security, settings.client_id)
        if problem is not None:
            raise BrokerRefused(problem)
        return
    raise BrokerUnreachable(f"no Kafka broker accepts connections at {settings.bootstrap} "
                            "(start one with `ringfence broker`, or pass --bootstrap HOST:PORT)")  # fmt: skip


def ensure_topics(settings: KafkaSettings, partitions: int, replication: int = 1) -> dict[str, int]:
    """Create the missing topics with ``partitions`` partitions; check the ones that exist. Return name -> count."""
    check_reachable(settings)
    admin = KafkaAdminClient(**admin_settings(settings))
    try:
        names = [settings.topic(kind) for kind in TOPIC_SUFFIXES]
        missing = [name for name in names if name not in set(admin.list_topics())]
        if missing:
            try:
                admin.create_topics([NewTopic(name, partitions, replication) for name in missing])
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another instance: checked below like the others
        counts = {}
        for description in admin.describe_topics(names):
            counts[description["name"]] = len(description["partitions"])
    finally:
        admin.close()
    wrong = {name: count for name, count in counts.items() if count != partitions}
    if wrong:
        raise TopicError(f"topics exist with other partition counts than {partitions}: {wrong}")
    return counts


def partition_count(consumer: KafkaConsumer, settings: KafkaSettings, topic: str, wait: float = 2.0) -> int:
    """The partition count of ``topic`` from the cluster metadata; TopicError if it does not exist."""
    deadline = time.monotonic() + wait
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return len(partitions)
        if time.monotonic() > deadline:
            raise TopicError(f"topic {topic} does not exist (create it with `ringfence topics`)")
        time.sleep(0.2)


def check_output_topics(consumer: KafkaConsumer, settings: KafkaSettings) -> int:
    """The events topic's partition count, once every output topic has at least as many partitions."""
    count = partition_count(consumer, settings, settings.topic("events"))
    for kind in (*OUTPUT_KINDS, REPORTS):
        outputs = partition_count(consumer, settings, settings.topic(kind))
        if outputs < count:
            raise TopicError(f"{settings.topic(kind)} has {outputs} partitions, fewer than the {count} of the events")
    return count


class KafkaLog:
    """A Log (events.log) over one partition of one topic.

    ``append`` sends to the partition (with an optional key) through the
    idempotent producer and ``commit`` waits for every send (at most
    ``commit_timeout`` seconds, if given) and raises if any failed or the
    time ran out; either way the sends are forgotten, so the caller appends
    them again (at least once). ``read`` fetches from an offset up to the high watermark the
    fetch responses report at that time. Payloads are JSON lines: ``decode``
    turns one into a domain event, or into an InvalidInput to dead-letter;
    given the events topic's partition count, an account's event on another
    partition than the one its account key routes to (partitioning.py) is a
    dead letter ``wrong_partition``: applied here it would split the
    account's state between two partitions without a word.
    """

    def __init__(self, settings: KafkaSettings, topic: str, partition: int, *, producer: KafkaProducer | None = None,
                 read_timeout: float = 30.0, group: str | None = None,
                 commit_timeout: float | None = None, partitions: int | None = None):  # fmt: skip
        self.settings, self.topic, self.partition = settings, topic, partition
        self.partitions = partitions  # the events topic's partition count (decode checks the accounts' routing)
        self._homes: dict[str, int] = {}  # this partition's accounts (-> this partition), as the state has them
        self.group = group  # readers in a group commit how far they read: a progress hint for lag tools
        self.source = f"{topic}/{partition}"
        self._producer, self._own_producer = producer, producer is None
        self._pending: list = []
        self._read_timeout = read_timeout
        self._commit_timeout = commit_timeout

    def decode(self, payload):
        line = b"" if payload is None else bytes(payload)
        event = decode_line(line, self.source)
        account = getattr(event, "account", None)
        if account is not None and self.partitions is not None:
            home = self._homes.get(account)
            if home is None:  # murmur2 in Python: once per account of this partition, not behind a bounded cache
                home = account_partition.__wrapped__(account, self.partitions)
                if home == self.partition:
                    self._homes[account] = home
            if home != self.partition:
                return invalid(r.WRONG_PARTITION, f"account {account!r} belongs to partition {home} of "
                               f"{self.partitions} (the account key's partition), not {self.partition}", line, self.source)  # fmt: skip
        return event

    # -- writing -------------------------------------------------------------------------

    def append(self, payload: bytes, key: bytes | None = None) -> None:
        """Buffer one record; its offset is known once the broker acknowledges it (commit)."""
        if self._producer is None:
            self._producer = new_producer(self.settings)
        self._pending.append(self._producer.send(self.topic, value=bytes(payload), key=key, partition=self.partition))

    def commit(self) -> None:
        """Wait until every appended record is acknowledged by all in-sync replicas; raise if one failed."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        self._producer.flush(timeout=self._commit_timeout)  # KafkaTimeoutError when the time runs out
        for future in pending:
            future.get(timeout=0)  # raises the send's KafkaError

    def use_producer(self, producer: KafkaProducer) -> None:
        """Send through ``producer`` from now on (its owner replaced a broken one); forget unconfirmed sends."""
        self._producer, self._pending = producer, []

    # -- reading -------------------------------------------------------------------------

    def read(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        consumer = new_consumer(self.settings, self.group)
        tp = TopicPartition(self.topic, self.partition)
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            quiet_since = time.monotonic()
            while True:
                batch = consumer.poll(timeout_ms=200)
                for record in batch.get(tp, ()):
                    yield record.offset, record.value
                if batch:
                    quiet_since = time.monotonic()
                    if self.group is not None:
                        consumer.commit_async({tp: OffsetAndMetadata(consumer.position(tp), "", -1)})
                high = consumer.highwater(tp)
                if high is not None and consumer.position(tp) >= high:
                    return
                if time.monotonic() - quiet_since > self._read_timeout:
                    raise TimeoutError(f"no records from {self.source} for {self._read_timeout:.0f} s before its end")
        finally:
            if self.group is not None and consumer.assignment():
                try:  # the last hint, synchronously (the async ones may still be in flight)
                    consumer.commit({tp: OffsetAndMetadata(consumer.position(tp), "", -1)})
                except Exception as error:  # noqa: BLE001 (a hint; the offset that counts is stored elsewhere)
                    get_logger().info("commit_hint_skipped", source=self.source, error=type(error).__name__)
            consumer.close()

    def end_offset(self) -> int:
        """The high watermark, as a fetch response reports it (for progress displays; reading never depends on it).

        Not the ListOffsets answer alone: the development broker (Tansu)
        answers the last batch's base offset + 1 there, short of the end
        (tests/integration/test_log_contract.py).
        """
        consumer = new_consumer(self.settings)
        tp = TopicPartition(self.topic, self.partition)
        try:
            consumer.assign([tp])
            listed = consumer.end_offsets([tp])[tp]
            consumer.seek(tp, max(0, listed - 1))
            deadline = time.monotonic() + self._read_timeout
            while consumer.highwater(tp) is None:
                consumer.poll(timeout_ms=200, max_records=1)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no fetch answer from {self.source} in {self._read_timeout:.0f} s")
            return max(listed, consumer.highwater(tp))
        finally:
            consumer.close()

    def close(self) -> None:
        self.commit()
        if self._own_producer and self._producer is not None:
            self._producer.close()
            self._producer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bounded_line(line: bytes) -> bytes:
    """What is sent for a line: an oversized one only up to the size that makes it a dead letter."""
    return line if len(line) <= MAX_LINE_BYTES else line[: MAX_LINE_BYTES + 1]
