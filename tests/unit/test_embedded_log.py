"""The embedded log: append, read from any offset, roll segments, survive a torn tail."""

import os

import pytest

from ringfence.core.digest import compute_digest
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
