"""The embedded log: segment files of length-prefixed, checksummed records.

Layout under ``<data>/log/``: ``<base offset, 20 digits>.seg`` files, each a
sequence of records ``[u32 length][u32 crc32(payload)][payload]`` (big
endian), never empty. A segment rolls over at ``SEGMENT_BYTES``; the offset of
a record is its segment's base plus its index in the segment. The first base
is 0 and each next base is the previous base plus its count of records: a
read that finds otherwise (a missing or out-of-sequence segment) raises
CorruptLog. ``segments`` lists every closed segment as ``<base> <records>
<bytes>``, appended when it closes: every open checks the closed segments
against it with one stat each (a segment missing, cut or grown is
CorruptLog, however far from the offsets a command reads); a closed segment
it does not list (a crash as it closed, or a log older than the list) is
scanned once instead, and a writer lists it.

Durability: ``append`` buffers, ``commit`` writes and fsyncs (one fsync per
batch, never per record). Only a true tail is torn: a crash leaves the last
records cut short and nothing after them. So a damaged record (bad checksum,
impossible length, or cut short) with any whole record anywhere after it is
corruption (CorruptLog, nothing touched); the log finds out by
resynchronising, ``_whole_record_after``. A damaged record with no whole
record after it, at the end of the last segment, is a torn tail: opening the
log for writing copies it aside to ``<segment>.torn-<byte position>`` and
truncates it, unless the state has applied it (``applied``): then, and for a
log that ends before the applied offset, the log refuses to open (LogBehind).

One writer at a time (an flock on ``LOCK``); readers need no lock and stop at
a record still being written (cut short at the end of the last segment).
"""

import fcntl
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from ringfence.core.limits import MAX_RECORD_BYTES, SEGMENT_BYTES
from ringfence.events.log import CorruptLog, log_behind
from ringfence.events.log_codec import decode_logged

_HEADER = struct.Struct(">II")
_HEADER_SIZE = _HEADER.size
_SUFFIX = ".seg"
_MANIFEST = "segments"
_MARK_EVERY = 1024
# where a record may start: a length of 1..MAX_RECORD_BYTES (0x00100000) has a zero first byte, a second byte
# of at most 0x10 and is not zero (bytes 1-3 not all zero); the regex finds those positions at C speed
_RECORD_START = re.compile(rb"\x00(?=[\x00-\x10])(?!\x00\x00\x00)")


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
    """Where and why a segment scan stopped: "end", "short" (record cut short), "bad length" or "checksum"."""

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
            why = "bad length" if length > MAX_RECORD_BYTES else "short"
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


def _whole_record_after(data: bytes | memoryview, position: int) -> int | None:
    """The byte position of the first whole, valid record starting after ``position``, or None.

    This is how a damaged record is told from a torn tail: a crash leaves a cut
    record and nothing after it, so a record that checks out anywhere after the
    damage means the damage is in the middle. Every later byte position whose
    first bytes can be a length (_RECORD_START) is tried: the length must fit
    the data and the crc32 must match. Only the bytes after a damaged record
    are searched, once per open or read that meets one (a torn tail is short;
    a damaged record in the middle is found within one record). A false match
    needs a 32-bit checksum to agree by chance (2^-32 a candidate) or a
    record-shaped byte string inside a payload; either makes the log refuse
    (loud), never drop records. Zeros (a file extended but never written) are
    no candidate: records are never empty.
    """
    size = len(data)
    unpack, crc32 = _HEADER.unpack_from, zlib.crc32
    for match in _RECORD_START.finditer(data, position + 1):
        start = match.start()
        if start + _HEADER_SIZE >= size:
            return None
        length, checksum = unpack(data, start)
        end = start + _HEADER_SIZE + length
        if length <= MAX_RECORD_BYTES and end <= size and crc32(data[start + _HEADER_SIZE : end]) == checksum:
            return start
    return None


def _check_tail(path: Path, stop: ScanStop, first: int, data: bytes | memoryview, skipped: int = 0) -> None:
    """Raise CorruptLog if the record where a scan stopped has a whole record after it (it is no torn tail).

    ``data`` is what was scanned, from byte ``skipped`` of the file, its first record at offset ``first``.
    """
    if stop.why == "end":
        return
    found = _whole_record_after(data, stop.position)
    if found is not None:
        raise CorruptLog(
            f"record at offset {first + stop.count} in {path} (byte {skipped + stop.position}) is damaged "
            f"({stop.why}) and whole records follow it (from byte {skipped + found}): it is not a torn tail; "
            "nothing was changed (restore the segment from a copy)"
        )


def _check_sequence(path: Path, end: int, next_base: int) -> None:
    """A segment's records (ending before ``end``) must end where the next segment begins."""
    if end != next_base:
        raise CorruptLog(
            f"segment {path} ends at offset {end - 1} but the next one starts at {next_base}: "
            + (f"records {end}..{next_base - 1} are missing (restore the segment file from a copy)"
               if end < next_base else f"segments out of sequence (offsets {next_base}..{end - 1} twice)")
        )  # fmt: skip


class EmbeddedLog:
    """A Log (events.log) over segment files in ``directory``."""

    def __init__(self, directory: str | Path, *, writable: bool = True, segment_bytes: int = SEGMENT_BYTES,
                 applied: int = -1):  # fmt: skip
        """Open the log; ``applied`` is the last offset the state applied (-1: none).

        Opening checks that the log still holds every applied record: a torn
        tail is moved aside only above ``applied``, and a log that ends at or
        before it raises LogBehind (for a reader too, when ``applied`` is given).
        """
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.writable = writable
        self.recovered: list[str] = []  # what recovery moved aside, for the operator
        self._lock_fd: int | None = None
        self._file = None
        self._buffer = bytearray()
        self._marks: dict[int, list[int]] = {}  # segment base -> byte position of every _MARK_EVERY-th record
        # a reader counts the last segment only when asked for the end: one that
        # just reads from an offset (the projection worker) need not scan it twice
        self._end: int | None = None
        self._segment_size = 0
        try:
            self._open(applied)
        except BaseException:
            self.close()
            raise

    decode = staticmethod(decode_logged)

    # -- opening -------------------------------------------------------------------------

    def _open(self, applied: int) -> None:
        if self.writable:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock()
        self._bases = self._list_bases()
        if self.writable and not self._bases:
            self._create_segment(0)
        self._check_closed_segments()
        if not self.writable and applied < 0:
            return
        stop, data = self._scan_last()
        end = (self._bases[-1] if self._bases else 0) + stop.count
        if end <= applied:
            damaged = "" if stop.why == "end" else (
                f" (the record at offset {end} in {_segment_name(self._bases[-1])} is damaged: {stop.why}; "
                "nothing was moved aside)")
            raise log_behind(f"the log in {self.directory}", end, applied, damaged)
        self._end = end
        if self.writable:
            self._segment_size = self._cut_tail(stop, data)
            self._file = open(self.directory / _segment_name(self._bases[-1]), "ab")

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
        bases = sorted(int(p.name[: -len(_SUFFIX)]) for p in self.directory.glob("*" + _SUFFIX))
        if bases and bases[0] != 0:
            raise CorruptLog(f"the first segment in {self.directory} starts at offset {bases[0]}, not 0: records "
                             f"0..{bases[0] - 1} are missing (restore the segments before it from a copy)")  # fmt: skip
        return bases

    def _listed(self) -> dict[int, tuple[int, int]]:
        """The manifest: closed segment base -> (records, bytes); a torn last line (a crash as it was appended) is skipped."""
        path = self.directory / _MANIFEST
        if not path.exists():
            return {}
        # after the last newline: nothing, or an append cut short by a crash (its segment is then scanned)
        lines = path.read_bytes().split(b"\n")[:-1]
        listed = {}
        for number, line in enumerate(lines, 1):
            parts = line.split()
            if len(parts) != 3 or not all(part.isdigit() for part in parts):
                raise CorruptLog(f"{path} line {number} is damaged ({line[:80]!r}); restore it from a copy, or "
                                 "delete it: the next open scans every closed segment and lists them again")  # fmt: skip
            listed[int(parts[0])] = (int(parts[1]), int(parts[2]))
        return listed

    def _check_closed_segments(self) -> None:
        """Every closed segment (all but the last) whole and in sequence: a stat for a listed one, a scan for others."""
        listed = self._listed()
        bases = self._bases
        for base in sorted(set(listed) - set(bases)):
            records = listed[base][0]
            raise CorruptLog(f"segment {self.directory / _segment_name(base)} is missing: records {base}.."
                             f"{base + records - 1} are gone (restore the segment file from a copy)")  # fmt: skip
        found = []
        for base, next_base in zip(bases, bases[1:]):
            path = self.directory / _segment_name(base)
            if base in listed:
                records, size = listed[base]
                actual = path.stat().st_size
                if actual != size:
                    raise CorruptLog(f"segment {path} holds {actual} bytes, but {size} when it was closed: it was "
                                     "cut or changed (restore it from a copy)")  # fmt: skip
            else:
                data = path.read_bytes()
                stop = ScanStop()
                for _ in scan_records(data, stop, base):
                    pass
                if stop.why != "end":
                    raise CorruptLog(f"record at offset {base + stop.count} in {path} is damaged ({stop.why})")
                records, size = stop.count, stop.position
                found.append((base, records, size))
            _check_sequence(path, base + records, next_base)
        if found and self.writable:
            self._list_closed(found)

    def _list_closed(self, segments: list[tuple[int, int, int]]) -> None:
        with open(self.directory / _MANIFEST, "a+b") as manifest:
            manifest.seek(0)
            text = manifest.read()
            manifest.truncate(text.rfind(b"\n") + 1)  # a line cut short by a crash is dropped (and listed again)
            manifest.write(b"".join(b"%d %d %d\n" % segment for segment in segments))
            manifest.flush()
            os.fsync(manifest.fileno())

    def _create_segment(self, base: int) -> None:
        (self.directory / _segment_name(base)).touch()
        _fsync_dir(self.directory)
        self._bases.append(base)

    def _scan_last(self) -> tuple[ScanStop, bytes]:
        """Scan the last segment (learning its marks); CorruptLog if it is damaged before its tail."""
        stop = ScanStop()
        if not self._bases:
            return stop, b""
        base = self._bases[-1]
        path = self.directory / _segment_name(base)
        data = path.read_bytes()
        for _ in scan_records(data, stop, base, 0, lambda offset, position: self._mark(base, offset, position), base):
            pass
        _check_tail(path, stop, base, data)
        return stop, data

    def _find_end(self) -> int:
        """One past the last whole record: the last segment's base plus its count of whole records."""
        return (self._bases[-1] if self._bases else 0) + self._scan_last()[0].count

    def _cut_tail(self, stop: ScanStop, data: bytes) -> int:
        """Move a torn tail of the last segment aside and truncate it (``_open`` checked it is one); its new size."""
        position, count = stop.position, stop.count
        if position < len(data):
            path = self.directory / _segment_name(self._bases[-1])
            aside = path.with_name(f"{path.name}.torn-{position}")
            aside.write_bytes(data[position:])
            with open(path, "r+b") as segment:
                segment.truncate(position)
                os.fsync(segment.fileno())
            _fsync_dir(self.directory)
            self.recovered.append(
                f"{path}: {len(data) - position} torn bytes after {count} whole records moved to {aside.name}"
            )
        return position

    # -- writing -------------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        if not self.writable:
            raise PermissionError("log opened read-only")
        length = len(payload)
        if not 0 < length <= MAX_RECORD_BYTES:
            raise ValueError(f"a record of {length} bytes is not 1 to {MAX_RECORD_BYTES} bytes")
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
        closed = (self._bases[-1], self._end - self._bases[-1], self._segment_size)
        self._create_segment(self._end)
        self._list_closed([closed])  # after the next segment exists: a crash between leaves it unlisted, then scanned
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
            end = first + stop.count
            if next_base is None:  # a record cut short at the end of the last segment is one still being written
                _check_tail(path, stop, first, view, byte_position)
                if stop.why != "end" and stop.why != "short":
                    raise CorruptLog(f"record at offset {end} in {path} is damaged ({stop.why}); if it is a torn "
                                     "tail, `ringfence ingest` or `run` moves it aside")  # fmt: skip
            elif stop.why != "end":
                raise CorruptLog(f"record at offset {end} in {path} is damaged ({stop.why})")
            else:  # one comparison a segment: its records must end where the next one begins
                _check_sequence(path, end, next_base)

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
