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
    """A record inside the log (not at its tail) fails its checksum: the log cannot be read past it."""
