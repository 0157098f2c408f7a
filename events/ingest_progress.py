"""How far `ingest` got in each source, committed with its records: exactly-once ingest.

`<log>/ingest-progress.json` holds, per source name, the number of input
lines consumed (every one of them with its record, if it has one, in the
log), a SHA-256 of those lines, and ``log_end``: the log's end when the file
was saved. It is replaced atomically (written beside, fsynced, renamed, the
directory fsynced) under the log's writer lock.

The records and the progress are not one write, so the file is saved as an
*intent* before the first append: ``writer`` names the source about to
append. Whatever whole records a crash leaves beyond ``log_end`` (a batch
committed before the progress was saved, or part of one written before the
crash) can then only be that source's next records, in line order. The next
`ingest` of any source counts them (``tail``) before it writes anything;
the next `ingest` of that source reads past its recorded lines (checking
their SHA-256), re-encodes the following lines and compares them, byte for
byte, with the tail's records, and resumes after the line of the last one.
So the progress of a source is a function of the log: a crash at any instant,
then the same input again, puts every line in the log exactly once.

The same name with other content (a different first part, a shorter input,
lines that differ from the tail, another --partition) is refused
(SourceMismatch, nothing appended); a log that ends before ``log_end`` lost
committed records and a damaged progress file is refused as ProgressDamaged.
docs/decisions.md, "Integrity: exactly-once ingest".
"""

import hashlib
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from ringfence.events.crashpoints import crash_point
from ringfence.events.log import CorruptLog
from ringfence.events.log_codec import encode_record

FILE_NAME = "ingest-progress.json"
_VERSION = 1
_EMPTY = hashlib.sha256().hexdigest()


class SourceMismatch(Exception):
    """The input given under a source name is not the one ingested under it (a usage error: exit 2)."""


class ProgressDamaged(CorruptLog):
    """The progress file is damaged, or the log lost records the progress says were committed."""


class Source(msgspec.Struct, forbid_unknown_fields=True):
    line: int = 0  # lines 1..line consumed: each one's record (if it has one) is in the log
    sha256: str = _EMPTY  # of those lines (length and bytes of each)
    records: int = 0  # records of this source in the log, the tail excepted
    partition: str | None = None  # "P/N" if ingested with --partition P --of N
    tail_offset: int = 0  # records tail_offset .. tail_offset + tail - 1 are this source's next ones,
    tail: int = 0  # appended by an ingest that stopped before saving its progress


class Progress(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    log_end: int  # the log's end when this was saved
    writer: str | None  # the source that may have appended records beyond log_end
    sources: dict[str, Source]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Progress).decode


def _load(path: Path) -> Progress | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    body, newline, checksum = data.rstrip(b"\n").rpartition(b"\n")
    if not newline or checksum != b"%08x" % zlib.crc32(body):
        raise ProgressDamaged(f"{path} fails its checksum; move it aside to ingest without it (every source is "
                              "then new: an input ingested before would be appended again)")  # fmt: skip
    try:
        progress = _decode(body)
    except msgspec.DecodeError as error:
        raise ProgressDamaged(f"{path} cannot be read: {error}") from None
    if progress.version != _VERSION:
        raise ProgressDamaged(f"{path} has version {progress.version}; this ringfence reads version {_VERSION}")
    return progress


def _save(path: Path, progress: Progress) -> None:
    body = _encode(progress)
    staged = path.with_name(path.name + ".tmp")
    with open(staged, "wb") as file:
        file.write(body + b"\n%08x\n" % zlib.crc32(body))
        file.flush()
        os.fsync(file.fileno())
    crash_point("ingest.progress_staged")
    os.replace(staged, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    crash_point("ingest.progress_saved")


def _feed(hasher, size: int, line: bytes) -> None:
    hasher.update(size.to_bytes(8, "big"))
    hasher.update(line)


class IngestTracker:
    """One `ingest` of source ``name`` into an embedded log opened for writing (its lock held).

    ``open(lines, record_of)`` checks the input against what was ingested
    under the name, saves the intent and returns the lines still to ingest;
    each of them goes through ``take`` (its record), ``append`` and ``commit``
    stand for the log's, ``finish`` after the last. ``record_of(number, line,
    size)`` is the log record of an input line, or None for a line that has
    none (blank, or another partition's).
    """

    def __init__(self, log, name: str, partition: str | None = None):
        self.log, self.name, self.path = log, name, Path(log.directory) / FILE_NAME
        end = log.end_offset()
        loaded = _load(self.path)
        self.unrecorded = end if loaded is None else 0  # records of a log that kept no progress until now
        self.progress = loaded or Progress(_VERSION, end, None, {})
        self._attribute_tail(end)
        known = self.progress.sources.get(name)
        if known is not None and known.partition != partition:
            raise SourceMismatch(f"source {name!r} was ingested with {_partition_text(known.partition)}, "
                                 f"not {_partition_text(partition)}; nothing appended")  # fmt: skip
        self.resumed_after = None if known is None else known.line  # the line it resumes after, once open
        self.recognised = 0  # records of an interrupted ingest of it found in the log
        self.source = known or Source(partition=partition)
        self._hasher = hashlib.sha256()
        self._number = 0

    def _attribute_tail(self, end: int) -> None:
        progress = self.progress
        if end < progress.log_end:
            raise ProgressDamaged(
                f"the log in {self.log.directory} ends at offset {end - 1}, but {FILE_NAME} records "
                f"{progress.log_end} records committed: records {end}..{progress.log_end - 1} are missing "
                "(restore the log from a copy)"
            )
        beyond = end - progress.log_end
        if beyond and progress.writer is not None:
            writer = progress.sources.get(progress.writer)
            if writer is None or writer.tail:  # open() resolves a source's tail before it becomes the writer
                raise ProgressDamaged(f"{self.path}: its writer {progress.writer!r} is not a source without a tail")
            writer.tail_offset, writer.tail = progress.log_end, beyond
        progress.log_end, progress.writer = end, None  # records another writer (the demo) appended are no source's

    def open(self, lines: Iterator[tuple[int, bytes, int]], record_of: Callable) -> Iterator[tuple[int, bytes, int]]:
        """Skip what is ingested (checked), save the intent; the lines still to ingest."""
        lines = iter(lines)
        source, hasher = self.source, self._hasher
        while self._number < source.line:
            item = next(lines, None)
            if item is None:
                raise SourceMismatch(f"source {self.name!r} has {self._number} lines, but {source.line} were ingested "
                                     "under that name: it is not the same input; nothing appended "
                                     "(use another --source NAME for another input)")  # fmt: skip
            self._number, line, size = item
            _feed(hasher, size, line)
        if hasher.hexdigest() != source.sha256:
            raise SourceMismatch(f"source {self.name!r} changed: its first {source.line} lines are not the ones "
                                 "ingested under that name; nothing appended (use another --source NAME for "
                                 "another input)")  # fmt: skip
        if source.tail:
            self._match_tail(lines, record_of)
        self.resumed_after = None if self.resumed_after is None else source.line
        self._base = (self.log.end_offset(), source.records)
        self.progress.writer = self.name
        self.progress.sources[self.name] = source
        _save(self.path, self.progress)  # the intent: records beyond log_end are this source's
        self._record_of = record_of
        return lines

    def _match_tail(self, lines, record_of) -> None:
        source, hasher = self.source, self._hasher
        stored = self.log.read(source.tail_offset)
        matched = 0
        while matched < source.tail:
            item = next(lines, None)
            if item is None:
                raise SourceMismatch(f"source {self.name!r} ends after line {self._number}, but an interrupted ingest "
                                     f"of it appended {source.tail - matched} more records; it is not the same input; "
                                     "nothing appended")  # fmt: skip
            self._number, line, size = item
            _feed(hasher, size, line)
            record = record_of(*item)
            if record is None:
                continue
            offset, payload = next(stored)
            if payload != encode_record(record):
                raise SourceMismatch(f"line {self._number} of source {self.name!r} is not record {offset}, which an "
                                     "interrupted ingest of it appended; it is not the same input; nothing appended")  # fmt: skip
            matched += 1
        self.recognised = matched
        source.line, source.sha256 = self._number, hasher.hexdigest()
        source.records, source.tail, source.tail_offset = source.records + matched, 0, 0

    def take(self, number: int, line: bytes, size: int):
        """Count one more input line as consumed; its record (to append) or None. Every line after open() comes here,
        in order, from the one loop that appends (so a line read but not taken is not counted)."""
        self._number = number
        _feed(self._hasher, size, line)
        return self._record_of(number, line, size)

    def append(self, record) -> None:
        self.log.append(encode_record(record))
        crash_point("ingest.appended")

    def commit(self, last: bool = False) -> None:
        """Commit the log, then save how far the source got (with ``last``: no writer is left)."""
        crash_point("ingest.before_commit")
        self.log.commit()
        crash_point("ingest.committed")
        end = self.log.end_offset()
        source = self.source
        source.line, source.sha256 = self._number, self._hasher.hexdigest()
        source.records = self._base[1] + end - self._base[0]
        self.progress.log_end = end
        if last:
            self.progress.writer = None
        _save(self.path, self.progress)

    def finish(self) -> None:
        self.commit(last=True)


def _partition_text(partition: str | None) -> str:
    if partition is None:
        return "no --partition"
    number, count = partition.split("/")
    return f"--partition {number} --of {count}"
