"""The embedded log: append, read from any offset, roll segments, survive a torn tail."""

import os

import pytest

from ringfence.core.digest import compute_digest
from ringfence.core.limits import SEGMENT_BYTES
from ringfence.events.embedded import EmbeddedLog, LogLocked
from ringfence.events.log import CorruptLog
from ringfence.events.log_codec import encode_record
from ringfence.ops.simulate import generate
from ringfence.replay.audit import replay


def payloads(n):
    return [f"record-{i}".encode() * (i % 7 + 1) for i in range(n)]


def test_append_read_and_reopen(tmp_path):
    data = payloads(300)
    with EmbeddedLog(tmp_path, segment_bytes=1000) as log:
        for i, payload in enumerate(data):
            assert log.append(payload) == i
        log.commit()
        assert [bytes(p) for _, p in log.read(0)] == data
    assert len(list(tmp_path.glob("*.seg"))) > 5  # rolled over
    with EmbeddedLog(tmp_path, segment_bytes=1000) as log:
        assert log.end_offset() == 300
        assert [(o, bytes(p)) for o, p in log.read(123)] == list(enumerate(data))[123:]
        assert log.append(b"more") == 300


def test_one_writer_at_a_time(tmp_path):
    with EmbeddedLog(tmp_path):
        with pytest.raises(LogLocked):
            EmbeddedLog(tmp_path)
        reader = EmbeddedLog(tmp_path, writable=False)
        assert list(reader.read(0)) == []


def _write_events(path, events):
    with EmbeddedLog(path) as log:
        for event in events:
            log.append(encode_record(event))


def test_torn_tail_at_every_byte(tmp_path):
    events = generate(seed=5, count=40, traders=5)
    source = tmp_path / "source"
    _write_events(source, events)
    segment = next(source.glob("*.seg"))
    whole = segment.read_bytes()
    last_record = len(encode_record(events[-1])) + 8
    prefix_digest = compute_digest(replay(EmbeddedLog(source, writable=False), until=len(events) - 2))
    full_digest = compute_digest(replay(EmbeddedLog(source, writable=False)))
    for cut in range(len(whole) - last_record, len(whole) + 1):
        work = tmp_path / f"cut{cut}"
        work.mkdir()
        (work / segment.name).write_bytes(whole[:cut])
        with EmbeddedLog(work) as log:
            survived = log.end_offset()
            digest = compute_digest(replay(log))
        if cut == len(whole):
            assert survived == len(events) and digest == full_digest
        else:
            assert survived == len(events) - 1 and digest == prefix_digest
            aside = list(work.glob("*.torn-*"))
            if cut > len(whole) - last_record:
                assert len(aside) == 1 and aside[0].read_bytes() == whole[len(whole) - last_record : cut]
            assert (work / segment.name).stat().st_size == len(whole) - last_record


def test_damaged_last_record_is_a_torn_tail(tmp_path):
    _write_events(tmp_path, generate(seed=5, count=20, traders=5))
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    with EmbeddedLog(tmp_path) as log:
        assert log.end_offset() == 19 and log.recovered


def test_flipped_byte_in_the_middle_is_corruption_not_a_tail(tmp_path):
    _write_events(tmp_path, generate(seed=5, count=20, traders=5))
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptLog):
        EmbeddedLog(tmp_path)
    with pytest.raises(CorruptLog):
        list(EmbeddedLog(tmp_path, writable=False).read(0))
    assert segment.read_bytes() == bytes(data)  # nothing was truncated


def test_commit_makes_records_visible_to_a_reader(tmp_path):
    with EmbeddedLog(tmp_path) as log:
        log.append(b"a")
        log.commit()
        assert [bytes(p) for _, p in EmbeddedLog(tmp_path, writable=False).read(0)] == [b"a"]
        assert os.path.getsize(next(tmp_path.glob("*.seg"))) == 9


def test_reads_from_any_offset_use_the_sparse_index_correctly(tmp_path):
    data = payloads(5000)
    with EmbeddedLog(tmp_path, segment_bytes=40_000) as log:
        for payload in data:
            log.append(payload)
        log.commit()
        for start in (0, 1, 1023, 1024, 1025, 2049, 4999, 5000):
            assert [(o, bytes(p)) for o, p in log.read(start)] == list(enumerate(data))[start:]
    reopened = EmbeddedLog(tmp_path, writable=False)
    for start in (4999, 3000, 0, 2048):  # learnt while reading, out of order
        assert [o for o, _ in reopened.read(start)] == list(range(start, 5000))


# -- only a true tail is torn (issue 13) ----------------------------------------------------


def written(path, count, segment_bytes=SEGMENT_BYTES):
    """``count`` payloads appended to a log in ``path``; (name, bytes) of its first segment."""
    with EmbeddedLog(path, segment_bytes=segment_bytes) as log:
        for payload in payloads(count):
            log.append(payload)
    first = sorted(path.glob("*.seg"))[0]
    return first.name, first.read_bytes()


def record_starts(data: bytes) -> list[int]:
    """The byte position of every record in one segment's bytes."""
    starts, position = [], 0
    while position < len(data):
        starts.append(position)
        position += 8 + int.from_bytes(data[position : position + 4], "big")
    return starts


def flip(path, position, mask):
    """XOR one byte of a file with ``mask``; the damaged bytes."""
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("bit", [31, 24, 20, 17, 12, 2, 0])
def test_a_flipped_length_bit_in_the_middle_is_corruption_not_a_tail(tmp_path, bit):
    """Whatever the flipped length now claims (beyond MAX, beyond the file, or a wrong size), whole records follow."""
    written(tmp_path, 3000)
    segment = next(tmp_path.glob("*.seg"))
    start = record_starts(segment.read_bytes())[1500]
    damaged = flip(segment, start + 3 - bit // 8, 1 << (bit % 8))
    with pytest.raises(CorruptLog, match=r"offset 1500 .*whole records follow"):
        EmbeddedLog(tmp_path)
    reader = EmbeddedLog(tmp_path, writable=False)
    with pytest.raises(CorruptLog, match="offset 1500"):
        reader.end_offset()
    read = []
    with pytest.raises(CorruptLog, match="offset 1500"):
        for offset, _ in EmbeddedLog(tmp_path, writable=False).read(0):
            read.append(offset)
    assert read == list(range(1500))  # every record before the damage, then the error
    assert segment.read_bytes() == damaged and not list(tmp_path.glob("*.torn-*"))  # nothing moved aside


def test_every_single_bit_flip_is_corruption_unless_it_is_in_the_last_record(tmp_path):
    """A flip anywhere in records 0..n-2 is CorruptLog on open; in the last record it is a torn tail of one record."""
    name, whole = written(tmp_path / "source", 12)
    starts = record_starts(whole)
    work = tmp_path / "work"
    work.mkdir()
    for position in range(len(whole)):
        for bit in range(8):
            damaged = bytearray(whole)
            damaged[position] ^= 1 << bit
            (work / name).write_bytes(bytes(damaged))
            if position < starts[-1]:
                with pytest.raises(CorruptLog):
                    EmbeddedLog(work).close()
                assert (work / name).read_bytes() == bytes(damaged), (position, bit)
            else:
                with EmbeddedLog(work) as log:
                    assert log.end_offset() == 11 and log.recovered, (position, bit)
                for aside in work.glob("*.torn-*"):
                    aside.unlink()


def test_a_torn_tail_of_garbage_or_zeros_is_still_a_tail(tmp_path):
    """Resynchronising after the damage finds no whole record in a cut record, zeros or random bytes."""
    import random

    rng = random.Random(13)
    name, whole = written(tmp_path / "source", 50)
    last = record_starts(whole)[-1]
    tails = [whole[last:-1], whole[last:last + 8] + bytes(4000), whole[last:last + 5] + rng.randbytes(20_000)]
    for index, tail in enumerate(tails):
        work = tmp_path / f"w{index}"
        work.mkdir()
        (work / name).write_bytes(whole[:last] + tail)
        with EmbeddedLog(work) as log:
            assert log.end_offset() == 49 and log.recovered
        assert (work / name).read_bytes() == whole[:last]


def test_a_whole_record_hidden_in_the_damaged_tail_makes_it_corruption(tmp_path):
    """The conservative side of resynchronising: a valid-looking record after damage is never dropped silently."""
    import struct
    import zlib

    written(tmp_path, 5)
    segment = next(tmp_path.glob("*.seg"))
    hidden = b"looks like a record"
    segment.write_bytes(segment.read_bytes() + b"\x00\x00\x00\xff garbage" + struct.pack(">II", len(hidden),
                        zlib.crc32(hidden)) + hidden + b"tail")  # fmt: skip
    with pytest.raises(CorruptLog, match="offset 5"):
        EmbeddedLog(tmp_path)


def _segmented(path):
    written(path, 600, segment_bytes=2000)
    return sorted(path.glob("*.seg"))


def test_a_missing_segment_is_corruption(tmp_path):
    segments = _segmented(tmp_path)
    assert len(segments) > 6
    hole = segments[3]
    before, after = int(segments[2].name[:20]), int(segments[4].name[:20])
    hole.unlink()
    for opened in (lambda: EmbeddedLog(tmp_path, writable=False), lambda: EmbeddedLog(tmp_path, applied=after + 5)):
        with pytest.raises(CorruptLog, match=f"is missing: records {int(hole.name[:20])}..{after - 1}"):
            opened()  # every open checks the closed segments against their list: a run resuming past the hole too
    (tmp_path / "segments").unlink()  # without the list (a log older than it), the scan finds the hole
    with pytest.raises(CorruptLog, match=f"records {int(hole.name[:20])}..{after - 1} are missing"):
        EmbeddedLog(tmp_path, writable=False)
    with pytest.raises(CorruptLog):
        list(EmbeddedLog(tmp_path, writable=False).read(before + 1))
    segments[0].unlink()
    with pytest.raises(CorruptLog, match="first segment"):
        EmbeddedLog(tmp_path, writable=False)
    with pytest.raises(CorruptLog, match="first segment"):
        EmbeddedLog(tmp_path)


def test_an_out_of_sequence_segment_is_corruption(tmp_path):
    """A sealed segment holding more records than the next base leaves room for: two records claim one offset."""
    segments = _segmented(tmp_path)
    extra = payloads(1)[0]
    import struct
    import zlib

    with open(segments[2], "ab") as segment:
        segment.write(struct.pack(">II", len(extra), zlib.crc32(extra)) + extra)
    with pytest.raises(CorruptLog, match="holds .* bytes, but .* when it was closed"):
        EmbeddedLog(tmp_path, writable=False)
    (tmp_path / "segments").unlink()  # without the list, the scan finds two records claiming one offset
    with pytest.raises(CorruptLog, match="out of sequence"):
        list(EmbeddedLog(tmp_path, writable=False).read(0))


def test_the_segment_list_heals_after_a_crash_as_a_segment_closed(tmp_path):
    """A closed segment missing from the list (a crash between the next segment and the list), or a torn last line."""
    segments = _segmented(tmp_path)
    listed = (tmp_path / "segments").read_bytes().splitlines(keepends=True)
    (tmp_path / "segments").write_bytes(b"".join(listed[:-1]) + listed[-1][:3])  # the last line cut short
    expected = [bytes(p) for _, p in EmbeddedLog(tmp_path, writable=False).read(0)]
    with EmbeddedLog(tmp_path) as log:  # a writer scans the unlisted segment once and lists it again
        assert [bytes(p) for _, p in log.read(0)] == expected
    assert (tmp_path / "segments").read_bytes().count(b"\n") == len(segments) - 1
    segments[-2].write_bytes(segments[-2].read_bytes()[:-1])  # now a listed segment is cut: its size says so
    with pytest.raises(CorruptLog, match="was cut or changed"):
        EmbeddedLog(tmp_path, writable=False)


def test_a_damaged_segment_list_is_refused(tmp_path):
    _segmented(tmp_path)
    (tmp_path / "segments").write_bytes(b"0 x 12\n")
    with pytest.raises(CorruptLog, match="segments line 1 is damaged"):
        EmbeddedLog(tmp_path, writable=False)


def test_recovery_never_cuts_what_the_state_applied(tmp_path):
    """A damaged or cut record at or below the applied offset is refused before anything is moved aside."""
    from ringfence.events.log import LogBehind

    written(tmp_path, 20)
    segment = next(tmp_path.glob("*.seg"))
    whole = segment.read_bytes()
    damaged = flip(segment, len(whole) - 1, 0x01)  # the last record, offset 19
    with pytest.raises(CorruptLog, match="offset 19.*applied"):
        EmbeddedLog(tmp_path, applied=19)
    assert segment.read_bytes() == damaged and not list(tmp_path.glob("*.torn-*"))
    segment.write_bytes(whole[:-3])  # cut into the last record
    with pytest.raises(CorruptLog, match="offset 19.*applied"):
        EmbeddedLog(tmp_path, applied=19)
    assert segment.read_bytes() == whole[:-3]
    segment.write_bytes(whole[: record_starts(whole)[15]])  # cut at a record boundary: offsets 15..19 gone
    for writable in (True, False):
        with pytest.raises(LogBehind, match=r"ends at offset 14.*applied up to offset 19"):
            EmbeddedLog(tmp_path, writable=writable, applied=19)
    with EmbeddedLog(tmp_path, applied=14) as log:  # what the state applied is all there
        assert log.end_offset() == 15


def test_an_empty_record_cannot_be_appended(tmp_path):
    """Records are never empty, so a zero header (zeros where a record should be) is never a whole record."""
    with EmbeddedLog(tmp_path) as log, pytest.raises(ValueError):
        log.append(b"")
