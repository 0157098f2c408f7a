"""The embedded log: segment files of length-prefixed, checksummed records.

Layout under ``<data>/log/``: ``<base offset, 20 digits>.seg`` files, each a
sequence of records ``[u32 length][u32 crc32(payload)][payload]`` (big
endian). A segment rolls over at ``SEGMENT_BYTES``; the offset of a record is
its segment's base plus its index in the segment.

Durability: ``append`` buffers, ``commit`` writes and fsyncs (one fsync per
batch, never per record). Recovery: opening the log for writing scans the
last segment; a torn tail (a record cut short, or a damaged last record) is
copied aside to ``<segment>.torn-<byte position>`` and truncated, so it is
never read as events. A damaged record with whole records after it is not a
torn tail but corruption: the log refuses to read past it (CorruptLog)
rather than silently dropping what follows.

One writer at a time (an flock on ``LOCK``); readers need no lock and stop at
a record still being written.
"""

import fcntl
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from ringfence.core.limits import MAX_RECORD_BYTES, SEGMENT_BYTES
from ringfence.events.log import CorruptLog
from ringfence.events.log_codec import decode_logged

_HEADER = struct.Struct(">II")
_HEADER_SIZE = _HEADER.size
_SUFFIX = ".seg"
_MARK_EVERY = 1024


class LogLocked(Exception):
    """Another process holds the writer lock of this log."""


def _segment_name(base: int) -> str:
    return f"{base:020d}{_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ScanStop:
    """Where and why a segment scan stopped: "end", "short" (record cut short) or "checksum"."""

    __slots__ = ("position", "why", "count")

    def __init__(self) -> None:
        self.position, self.why, self.count = 0, "end", 0


def scan_records(data: bytes | memoryview, stop: ScanStop, first: int = 0, start: int = 0,
                 on_mark: Callable[[int, int], None] | None = None, mark_base: int = 0) -> Iterator[tuple[int, memoryview]]:
    """Yield (offset, payload) of whole, valid records from ``start``, numbering the first ``first``.

    ``on_mark(offset, byte position)`` sees every _MARK_EVERY-th record
    counted from ``mark_base``; ``stop`` records why the scan ended. One loop
    for every reader: it runs once per record.
    """
    data = memoryview(data)
    position = 0
    size = len(data)
    offset = first
    unpack = _HEADER.unpack_from
    crc32 = zlib.crc32
    why = "end"
    while position < size:
        if size - position < _HEADER_SIZE:
            why = "short"
            break
        length, checksum = unpack(data, position)
        begin = position + _HEADER_SIZE
        end = begin + length
        if length > MAX_RECORD_BYTES or end > size:
            why = "short"
            break
        payload = data[begin:end]
        if crc32(payload) != checksum:
            why = "checksum"
            break
        if on_mark is not None and (offset - mark_base) % _MARK_EVERY == 0:
            on_mark(offset, position)
        if offset >= start:
            yield offset, payload
        offset += 1
        position = end
    stop.position, stop.why, stop.count = position, why, offset - first


def _scan_whole(data: bytes) -> ScanStop:
    stop = ScanStop()
    for _ in scan_records(data, stop):
        pass
    return stop


class EmbeddedLog:
    """A Log (events.log) over segment files in ``directory``."""

    def __init__(self, directory: str | Path, *, writable: bool = True, segment_bytes: int = SEGMENT_BYTES):
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.writable = writable
        self.recovered: list[str] = []  # what recovery moved aside, for the operator
        self._lock_fd: int | None = None
        self._file = None
        self._buffer = bytearray()
        self._marks: dict[int, list[int]] = {}  # segment base -> byte position of every _MARK_EVERY-th record
        if writable:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock()
        self._bases = self._list_bases()
        if writable and not self._bases:
            self._create_segment(0)
        # a reader counts the last segment only when asked for the end: one that
        # just reads from an offset (the projection worker) need not scan it twice
        self._end: int | None = None
        self._segment_size = 0
        if writable:
            last_count, self._segment_size = self._recover_last()
            self._end = self._bases[-1] + last_count
            self._file = open(self.directory / _segment_name(self._bases[-1]), "ab")

    decode = staticmethod(decode_logged)

    # -- opening -------------------------------------------------------------------------

    def _lock(self) -> None:
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogLocked(f"the log in {self.directory} is being written by another ringfence process") from None
        self._lock_fd = fd

    def _list_bases(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name[: -len(_SUFFIX)]) for p in self.directory.glob("*" + _SUFFIX))

    def _create_segment(self, base: int) -> None:
        (self.directory / _segment_name(base)).touch()
        _fsync_dir(self.directory)
        self._bases.append(base)

    def _find_end(self) -> int:
        """One past the last whole record: the last segment's base plus its count of whole records."""
        if not self._bases:
            return 0
        return self._bases[-1] + _scan_whole((self.directory / _segment_name(self._bases[-1])).read_bytes()).count

    def _recover_last(self) -> tuple[int, int]:
        path = self.directory / _segment_name(self._bases[-1])
        data = path.read_bytes()
        stop = _scan_whole(data)
        position, count = stop.position, stop.count
        if stop.why == "checksum":
            length, _ = _HEADER.unpack_from(data, position)
            if position + _HEADER_SIZE + length < len(data):
                raise CorruptLog(
                    f"record at offset {self._bases[-1] + count} in {path.name} fails its checksum "
                    "and whole records follow it; refusing to truncate (restore the segment or replay from a copy)"
                )
        if position < len(data):
            aside = path.with_name(f"{path.name}.torn-{position}")
            aside.write_bytes(data[position:])
            with open(path, "r+b") as segment:
                segment.truncate(position)
                os.fsync(segment.fileno())
            _fsync_dir(self.directory)
            self.recovered.append(
                f"{path.name}: {len(data) - position} torn bytes after {count} whole records moved to {aside.name}"
            )
        return count, position

    # -- writing -------------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        if not self.writable:
            raise PermissionError("log opened read-only")
        length = len(payload)
        if length > MAX_RECORD_BYTES:
            raise ValueError(f"record of {length} bytes exceeds {MAX_RECORD_BYTES}")
        record_size = _HEADER_SIZE + length
        if self._segment_size + len(self._buffer) + record_size > self.segment_bytes and (
            self._segment_size + len(self._buffer) > 0
        ):
            self._roll()
        offset = self._end
        base = self._bases[-1]
        if (offset - base) % _MARK_EVERY == 0:
            self._mark(base, offset, self._segment_size + len(self._buffer))
        self._buffer += _HEADER.pack(length, zlib.crc32(payload))
        self._buffer += payload
        self._end += 1
        return offset

    def _write_buffer(self) -> None:
        if self._buffer:
            self._file.write(self._buffer)
            self._segment_size += len(self._buffer)
            self._buffer.clear()

    def _roll(self) -> None:
        self._write_buffer()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._create_segment(self._end)
        self._segment_size = 0
        self._file = open(self.directory / _segment_name(self._end), "ab")

    def commit(self) -> None:
        if self._file is None:
            return
        self._write_buffer()
        self._file.flush()
        os.fsync(self._file.fileno())

    # -- reading -------------------------------------------------------------------------

    def end_offset(self) -> int:
        """One past the last whole record (for a reader: as of the first time it is asked)."""
        if self._end is None:
            self._end = self._find_end()
        return self._end

    def _hint(self, base: int, start: int) -> tuple[int, int]:
        """(offset, byte position) of a known record at or before ``start`` in segment ``base``."""
        marks = self._marks.get(base)
        if marks and start > base:
            slot = min((start - base) // _MARK_EVERY, len(marks) - 1)
            return base + slot * _MARK_EVERY, marks[slot]
        return base, 0

    def _mark(self, base: int, offset: int, position: int) -> None:
        marks = self._marks.setdefault(base, [0])
        if (offset - base) // _MARK_EVERY == len(marks):
            marks.append(position)

    def read(self, start: int = 0) -> Iterator[tuple[int, memoryview]]:
        """Committed (written) records from ``start``; raises CorruptLog on a damaged record.

        A sparse index of byte positions (every _MARK_EVERY records, learnt while
        writing and reading) lets a read start near ``start`` instead of at the
        beginning of its segment.
        """
        if self._file is not None:
            self._write_buffer()
            self._file.flush()
        bases = self._list_bases()
        for position, base in enumerate(bases):
            next_base = bases[position + 1] if position + 1 < len(bases) else None
            if next_base is not None and next_base <= start:
                continue
            path = self.directory / _segment_name(base)
            first, byte_position = self._hint(base, start)
            with open(path, "rb") as segment:
                segment.seek(byte_position)
                view = memoryview(segment.read())
            stop = ScanStop()
            def on_mark(offset: int, position: int, base=base, skipped=byte_position) -> None:
                self._mark(base, offset, skipped + position)

            yield from scan_records(view, stop, first, start, on_mark, base)
            # a short record at the end of the last segment is one still being written
            if stop.why == "checksum" or (stop.why == "short" and next_base is not None):
                raise CorruptLog(f"record at offset {first + stop.count} in {path.name} is damaged ({stop.why})")

    def close(self) -> None:
        if self._file is not None:
            self.commit()
            self._file.close()
            self._file = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
