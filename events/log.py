"""The log interface every backend implements (embedded segment files, Kafka)."""

from collections.abc import Iterator
from typing import Protocol


class Log(Protocol):
    """An ordered, append-only sequence of records, numbered from 0 without gaps.

    Every backend (events.embedded, events.memory, ops.kafka_log) passes the
    same contract suite (tests/integration/test_log_contract.py). Payloads are
    the backend's own encoding (msgpack records on the embedded and memory
    logs, the wire JSON lines on Kafka): ``decode`` is the only way to read one.
    """

    def decode(self, payload) -> object:
        """A payload of this log as its domain event, or an InvalidInput to dead-letter; never raises."""

    def append(self, payload: bytes) -> int | None:
        """Buffer one record; return the offset it will have (None where only the broker's
        acknowledgement tells it: Kafka). Durable only after commit()."""

    def commit(self) -> None:
        """Make every appended record durable (fsync / acks)."""

    def read(self, start: int) -> Iterator[tuple[int, memoryview]]:
        """Records from offset ``start`` (inclusive) to the current end, in offset order."""

    def end_offset(self) -> int:
        """The offset the next appended record will get."""

    def close(self) -> None: ...


class CorruptLog(Exception):
    """The log is damaged where it must not be (a record with whole records after it, a missing or
    out-of-sequence segment, a record the state applied): it cannot be read past the damage."""


class LogBehind(CorruptLog):
    """The log ends before the last offset the state applied: records the state holds are gone from it."""


def log_behind(where: str, end: int, applied: int, cause: str = "") -> LogBehind:
    """The one message for a log (``where``) that ends at ``end`` (one past its last record) before ``applied``."""
    lost = f"record {end}" if end == applied else f"records {end}..{applied}"
    return LogBehind(
        f"{where} ends at offset {end - 1}{cause}, but the state has applied up to offset {applied}: it lost {lost}; "
        "restore the log from a copy (ringfence never reuses an applied offset), or accept the loss: move the state "
        "and snapshots directories aside and run again to rebuild from the log"
    )
