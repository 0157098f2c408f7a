"""Exactly-once ingest (issue 13, case 6): a crash at any instant, then the same input again: every line once.

The crash cases kill `ingest` at each named crash point of INGEST_POINTS
(events.crashpoints), at a pass chosen by seed, twice in a row (the second
while it resumes), some followed by a tear of what a crash in the middle of
a write leaves; then a clean `ingest` of the same file and `run`. The log must
be byte for byte the log of one clean ingest, and `run` must give its digest.
A failure names its point and seed: `RINGFENCE_SEED=<seed> pytest -k <point>`.
"""

import json
import os
import random
import struct
import subprocess
import sys
import time

import pytest

from ringfence.events.crashpoints import CRASH_EXIT_CODE, ENV, INGEST_POINTS
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.ingest_progress import FILE_NAME
from ringfence.events.json_codec import encode_line
from ringfence.ops.cli import EXIT_FLAGGED, EXIT_OK
from ringfence.ops.simulate import generate
from tests.integration.conftest import ringfence

SEEDS = [int(os.environ["RINGFENCE_SEED"])] if os.environ.get("RINGFENCE_SEED") else [1, 2]
COMMIT_EVERY = 400


def session_lines(seed: int, count: int, traders: int = 40) -> list[bytes]:
    return [encode_line(event) for event in generate(seed, count, traders)]


def log_records(data) -> list[bytes]:
    return [bytes(payload) for _, payload in EmbeddedLog(data / "log", writable=False).read(0)]


def net_deposits(cli, data) -> list[dict]:
    return [row for row in map(json.loads, cli("books", "--json", data=data)[1].splitlines())
            if row["book"] == "net_deposits"]  # fmt: skip


def run_digest(cli, data) -> str:
    out = cli("run", data=data, check_rc=None)[1]
    return out.rsplit("digest ", 1)[1].strip()


def test_the_same_file_after_kill_minus_nine_of_ingest_is_in_the_log_once(tmp_path, cli):
    """Case 6: killed after its first commit (fed through a pipe, so the kill lands there), then the file again."""
    lines = session_lines(61, 10_500)
    whole = tmp_path / "file" / "session.jsonl"
    whole.parent.mkdir()
    whole.write_bytes(b"".join(line + b"\n" for line in lines))
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    cli("ingest", str(whole), data=clean)
    expected_digest, expected_books = run_digest(cli, clean), net_deposits(cli, clean)

    pipe = tmp_path / "pipe" / "session.jsonl"  # the same name: the same source
    pipe.parent.mkdir()
    os.mkfifo(pipe)
    env = {**os.environ, "RINGFENCE_DATA": str(crashed)}
    ingest = subprocess.Popen([sys.executable, "-m", "ringfence.ops.cli", "ingest", str(pipe)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    with open(pipe, "wb") as feed:
        feed.write(b"".join(line + b"\n" for line in lines[:10_100]))  # one commit (10,000) and 100 more
        feed.flush()
        deadline = time.monotonic() + 60  # a condition awaited, not a timed kill
        while not (crashed / "log").is_dir() or EmbeddedLog(crashed / "log", writable=False).end_offset() < 10_000:
            assert time.monotonic() < deadline and ingest.poll() is None, "ingest never committed its first batch"
            time.sleep(0.01)
        ingest.kill()
        assert ingest.wait() == -9
    assert len(log_records(crashed)) == 10_000  # the 100 lines after the commit were not committed

    out = cli("ingest", str(whole), data=crashed)[1]
    assert len(log_records(crashed)) == len(lines)  # not the first 10,000 lines twice
    assert log_records(crashed) == log_records(clean)  # every line once, in order
    # (here within the duplicate-id window, so a second copy would be dead letters; beyond it, money twice)
    assert (run_digest(cli, crashed), net_deposits(cli, crashed)) == (expected_digest, expected_books)
    assert "from session.jsonl (offsets 10000..10499)" in out and "resumed source session.jsonl after line 10000" in out


# -- a crash at every named point ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A file with blank and invalid lines among its events, and what one clean ingest and run make of it."""
    root = tmp_path_factory.mktemp("ingest-crash")
    lines = session_lines(62, 2_600)
    for index in range(len(lines) - 1, 0, -97):
        lines.insert(index, b"")
    for index in range(len(lines) - 3, 0, -301):
        lines.insert(index, b'{"type":"deposit","id":"broken"')
    path = root / "session.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    records = sum(1 for line in lines if line)
    clean = root / "clean"
    ringfence("ingest", str(path), data=clean, check_rc=EXIT_FLAGGED)
    return path, records, log_records(clean), run_digest(ringfence, clean)


def passes(point: str, records: int) -> int:
    """How often one ingest appending ``records`` records passes ``point``."""
    commits = records // COMMIT_EVERY + 1  # every COMMIT_EVERY records, and the last
    return {"ingest.appended": records, "ingest.before_commit": commits, "ingest.committed": commits}.get(
        point, commits + 1)  # the progress is saved once more: the intent, before the first append  # fmt: skip


def tear(data, rng: random.Random) -> None:
    """Cut the log where a crash in the middle of a write could have: anywhere after what the progress claims."""
    lines = (data / "log" / FILE_NAME).read_bytes().splitlines()
    claimed = json.loads(lines[0])["log_end"]
    segment = max((data / "log").glob("*.seg"))
    content = segment.read_bytes()
    position = 0
    for _ in range(claimed - int(segment.name[:-4])):
        position += 8 + struct.unpack_from(">I", content, position)[0]
    with open(segment, "r+b") as file:
        file.truncate(rng.randint(position, len(content)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("point", INGEST_POINTS)
def test_a_crash_of_ingest_at_any_point_then_the_same_file_puts_every_line_in_the_log_once(source, tmp_path, point,
                                                                                            seed, cli):  # fmt: skip
    path, records, expected_log, expected_digest = source
    data = tmp_path / "data"
    rng = random.Random(f"{point}/{seed}")
    where = f"point {point}, seed {seed} (replay: RINGFENCE_SEED={seed} pytest -k '{point}')"
    ingest = ["ingest", str(path), "--commit-every", str(COMMIT_EVERY)]
    for attempt in range(2):  # a crash, then a crash of the ingest that resumes, then a clean one
        remaining = records - (len(log_records(data)) if (data / "log").is_dir() else 0)
        if passes(point, remaining) == 0:
            continue  # nothing left to append: the point is never passed
        n = rng.randint(1, passes(point, remaining))
        rc, _, err = cli(*ingest, data=data, env={ENV: f"{point}:{n}"}, check_rc=None)
        assert rc == CRASH_EXIT_CODE, (where, attempt, n, rc, err)
        if rng.random() < 0.5 and (data / "log" / FILE_NAME).exists():
            tear(data, rng)
    known = (data / "log" / FILE_NAME).exists()  # else it crashed before its first save, having appended nothing
    rc, out, err = cli(*ingest, data=data, check_rc=None)
    assert rc in (EXIT_OK, EXIT_FLAGGED), (where, err)
    assert ("resumed source session.jsonl after line" in out) == known, (where, out)
    got = log_records(data)
    assert len(got) == records and got == expected_log, (where, len(got), records)
    assert run_digest(cli, data) == expected_digest, where


# -- what is refused -----------------------------------------------------------------------------------


def one_line(err: str, *parts: str) -> None:
    assert err.count("\n") == 1 and all(part in err for part in parts), err


def test_an_input_that_is_not_the_one_ingested_under_its_name_is_refused_and_nothing_appended(tmp_path, cli):
    lines = session_lines(63, 600)
    data, a = tmp_path / "d", tmp_path / "a.jsonl"
    a.write_bytes(b"".join(line + b"\n" for line in lines[:300]))
    cli("ingest", str(a), data=data)
    before = log_records(data)
    changed = list(lines[:300])
    changed[150] = lines[450]
    a.write_bytes(b"".join(line + b"\n" for line in changed + lines[300:]))  # line 151 changed, and grown
    one_line(cli("ingest", str(a), data=data, check_rc=2)[2], "source 'a.jsonl' changed: its first 300 lines")
    a.write_bytes(b"".join(line + b"\n" for line in lines[:200]))  # shorter
    one_line(cli("ingest", str(a), data=data, check_rc=2)[2], "has 200 lines, but 300 were ingested")
    other = tmp_path / "b.jsonl"  # --source reused for another file
    other.write_bytes(b"".join(line + b"\n" for line in lines[300:]))
    one_line(cli("ingest", str(other), "--source", "a.jsonl", data=data, check_rc=2)[2], "changed")
    one_line(cli("ingest", str(other), "--source", "a.jsonl", "--partition", "0", "--of", "2", data=data,
                 check_rc=2)[2], "was ingested with no --partition, not --partition 0 --of 2")  # fmt: skip
    assert log_records(data) == before

    # records an interrupted ingest left beyond its progress are compared with the lines, not trusted
    b = tmp_path / "c.jsonl"
    b.write_bytes(b"".join(line + b"\n" for line in lines[300:]))
    crash = {ENV: "ingest.committed:1"}
    cli("ingest", str(b), "--commit-every", "100", data=data, env=crash, check_rc=CRASH_EXIT_CODE)
    edited = list(lines[300:])
    edited[40] = lines[0]
    b.write_bytes(b"".join(line + b"\n" for line in edited))
    one_line(cli("ingest", str(b), data=data, check_rc=2)[2], "line 41 of source 'c.jsonl' is not record 340")
    b.write_bytes(b"".join(line + b"\n" for line in lines[300:]))
    out = cli("ingest", str(b), data=data)[1]
    assert "resumed source c.jsonl after line 100 (100 records of an interrupted ingest of it were in the log)" in out
    assert log_records(data) == before + [r for r in log_records_of(cli, tmp_path, lines[300:])]


def log_records_of(cli, tmp_path, lines) -> list[bytes]:
    data, path = tmp_path / "reference", tmp_path / "reference.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    cli("ingest", str(path), data=data)
    return log_records(data)


def test_sources_interleave_and_a_grown_file_appends_only_its_new_lines(tmp_path, cli):
    lines = session_lines(64, 900)
    data, a, b = tmp_path / "d", tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b"".join(line + b"\n" for line in lines[:300]) + b"\n\n")  # blank lines count as lines
    b.write_bytes(b"".join(line + b"\n" for line in lines[600:]))
    cli("ingest", str(a), data=data)
    cli("ingest", str(b), data=data)
    a.write_bytes(b"".join(line + b"\n" for line in lines[:300]) + b"\n\n" + b"".join(l + b"\n" for l in lines[300:600]))
    out = cli("ingest", str(a), data=data)[1]
    assert "ingested 300 records from a.jsonl (offsets 600..899)" in out and "after line 302" in out
    assert cli("ingest", str(b), data=data)[1].startswith("ingested 0 records from b.jsonl (nothing appended)")
    expected = log_records_of(cli, tmp_path, lines[:300] + lines[600:] + lines[300:600])
    assert log_records(data) == expected

    # stdin has no name of its own: one is needed, and with it the same stream again appends nothing
    stream = b"".join(line + b"\n" for line in lines[:50])
    one_line(cli("ingest", "-", data=data, stdin=stream, check_rc=2)[2], "reading stdin needs --source NAME")
    assert "ingested 50 records from feed" in cli("ingest", "-", "--source", "feed", data=data, stdin=stream)[1]
    out = cli("ingest", "-", "--source", "feed", data=data, stdin=stream)[1]
    assert "ingested 0 records" in out and "resumed source feed after line 50" in out
    assert len(log_records(data)) == 950


def test_a_damaged_progress_or_a_log_that_lost_what_it_records_is_refused(tmp_path, cli):
    lines = session_lines(65, 200)
    data, a = tmp_path / "d", tmp_path / "a.jsonl"
    a.write_bytes(b"".join(line + b"\n" for line in lines))
    cli("ingest", str(a), data=data)
    progress = data / "log" / FILE_NAME
    saved = progress.read_bytes()
    progress.write_bytes(saved.replace(b'"line":200', b'"line":100'))
    one_line(cli("ingest", str(a), data=data, check_rc=1)[2], f"{progress} fails its checksum")
    progress.write_bytes(saved)
    segment = next((data / "log").glob("*.seg"))
    with open(segment, "r+b") as file:  # whole records cut off: a log restored from an older copy
        file.truncate(len(b"".join(log_records(data)[:50])) + 8 * 50)
    one_line(cli("ingest", str(a), data=data, check_rc=1)[2], "ends at offset 49", "records 50..199 are missing")
    progress.unlink()  # a log from before ingest kept its progress: it goes on, and says what it cannot know
    rc, out, err = cli("ingest", str(a), data=data)
    assert "ingested 200 records" in out and "ingest_progress_started" in err and "holds 50 records" in err
