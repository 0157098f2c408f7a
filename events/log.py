"""The log interface every backend implements (embedded segment files, Kafka)."""

from collections.abc import Iterator
from typing import Protocol


class Log(Protocol):
    """Payloads are the embedded log's msgpack records (events.log_codec) unless the log has a
    ``decode(payload)`` method of its own (the Kafka log carries the wire JSON), which returns a
    domain event or an InvalidInput and never raises."""

    def append(self, payload: bytes) -> int:
        """Buffer one record; return the offset it will have. Durable only after commit()."""

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
