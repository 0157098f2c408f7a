"""Only a true tail is torn (issue 13, cases 2 and 3): the CLI over a damaged event log and outbox.

Every case is refused with one line and exit 1 (nothing moved aside, nothing appended), except a damaged
tail of the commands log, which the outbox repairs by publishing again from the store what it lost.
"""

import json
import shutil
from pathlib import Path

import pytest

from ringfence.events.embedded import EmbeddedLog
from ringfence.events.log_codec import encode_record
from ringfence.ops.simulate import generate
from tests.integration.test_cli import session_file
from tests.unit.test_embedded_log import flip, record_starts

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "session.jsonl"


def one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    return err


def _segment(directory: Path) -> Path:
    (segment,) = sorted(directory.glob("*.seg"))
    return segment


@pytest.mark.parametrize("bit", [24, 17])  # a length beyond any record, or beyond the end of the file
def test_a_flipped_length_bit_in_the_middle_is_refused_by_replay_run_and_ingest(tmp_path, cli, bit):
    data = tmp_path / "d"
    cli("ingest", str(session_file(tmp_path, seed=21, count=3000)), data=data)
    segment = _segment(data / "log")
    start = record_starts(segment.read_bytes())[1500]
    damaged = flip(segment, start + 3 - bit // 8, 1 << (bit % 8))
    for command in (["replay"], ["run"], ["ingest", str(session_file(tmp_path, seed=22, count=10))]):
        rc, out, err = cli(*command, data=data, check_rc=1)
        assert "record at offset 1500" in one_line(err) and segment.name in err and not out, (command, err)
    assert segment.read_bytes() == damaged and not list((data / "log").glob("*.torn-*"))


def test_a_missing_segment_is_refused_by_replay_verify_a_resuming_and_a_rebuilding_run(tmp_path, cli):
    data = tmp_path / "d"
    with EmbeddedLog(data / "log", segment_bytes=20_000) as log:  # the CLI reads any segment size
        for event in generate(23, 2000, 20):
            log.append(encode_record(event))
    cli("run", data=data, check_rc=None)
    segments = sorted((data / "log").glob("*.seg"))
    assert len(segments) > 4
    missing = segments[2]
    first_missing, next_base = int(missing.name[:20]), int(segments[3].name[:20])
    missing.unlink()
    for command in (["replay"], ["replay", "--verify"], ["run"], ["positions", "--at", "5"]):
        rc, out, err = cli(*command, data=data, check_rc=1)  # run resumes past the hole: the open still finds it
        assert f"{first_missing}..{next_base - 1}" in one_line(err) and "missing" in err and not out, command
    shutil.rmtree(data / "state")  # a rebuild reads the log from offset 0
    rc, out, err = cli("run", data=data, check_rc=1)
    assert f"{first_missing}..{next_base - 1}" in one_line(err)


def _ingested_and_run(tmp_path, cli, count=200):
    data = tmp_path / "d"
    cli("ingest", str(session_file(tmp_path, seed=24, count=count, traders=6)), data=data)
    cli("run", data=data, check_rc=None)
    return data, _segment(data / "log")


def test_a_log_cut_below_the_applied_offset_is_refused_not_reused(tmp_path, cli):
    """The next ingest would give the lost offsets to new records, which run would skip as applied."""
    data, segment = _ingested_and_run(tmp_path, cli)
    whole = segment.read_bytes()
    more = session_file(tmp_path, seed=25, count=5, traders=2)
    # at a record boundary (offsets 190..199 gone), and into the last record (a torn tail the state applied)
    for cut, ends in ((record_starts(whole)[190], "ends at offset 189"), (len(whole) - 3, "ends at offset 198")):
        segment.write_bytes(whole[:cut])
        for command in (["ingest", str(more)], ["run"], ["replay"], ["positions", "--at", "100"]):
            rc, out, err = cli(*command, data=data, check_rc=1)
            assert ends in one_line(err) and "applied up to offset 199" in err and not out, (command, err)
        assert segment.read_bytes() == whole[:cut] and not list((data / "log").glob("*.torn-*"))
    assert "restore" in err


def test_a_damaged_last_record_the_state_applied_is_not_moved_aside(tmp_path, cli):
    data, segment = _ingested_and_run(tmp_path, cli)
    damaged = flip(segment, len(segment.read_bytes()) - 1, 0x01)
    for command in (["run"], ["ingest", str(session_file(tmp_path, seed=26, count=5, traders=2))], ["replay"]):
        rc, out, err = cli(*command, data=data, check_rc=1)
        assert "record at offset 199" in one_line(err) and not out, (command, err)
    assert segment.read_bytes() == damaged and not list((data / "log").glob("*.torn-*"))


def _commands_in_log(data: Path) -> list[bytes]:
    return [bytes(payload) for _, payload in EmbeddedLog(data / "commands", writable=False).read(0)]


def _stored_commands(cli, data) -> list[dict]:
    return [json.loads(line) for line in cli("commands", "--json", data=data)[1].splitlines()]


@pytest.mark.parametrize("damage", ["payload", "length"])
def test_the_outbox_publishes_again_what_a_damaged_commands_tail_lost(tmp_path, cli, damage):
    data = tmp_path / "d"
    cli("ingest", str(EXAMPLE), data=data)
    cli("run", data=data, check_rc=3)
    segment = _segment(data / "commands")
    published = _commands_in_log(data)
    assert len(published) == len(_stored_commands(cli, data)) > 100
    last = record_starts(segment.read_bytes())[-1]
    flip(segment, len(segment.read_bytes()) - 1 if damage == "payload" else last + 1, 0x01)
    rc, out, err = cli("run", data=data)
    assert "outbox_republished" in one_line(err) and f"{len(published)}" in err
    assert _commands_in_log(data) == published  # every published command is in the log again, once
    assert list((data / "commands").glob("*.torn-*"))  # the damaged bytes are kept aside
    rc, out, err = cli("run", data=data)  # and the repair is not repeated
    assert not err and _commands_in_log(data) == published


def test_a_damaged_record_in_the_middle_of_the_commands_log_is_refused(tmp_path, cli):
    data = tmp_path / "d"
    cli("ingest", str(EXAMPLE), data=data)
    cli("run", data=data, check_rc=3)
    segment = _segment(data / "commands")
    damaged = flip(segment, record_starts(segment.read_bytes())[100] + 1, 0x01)  # its length field
    rc, out, err = cli("run", data=data, check_rc=1)
    assert "record at offset 100" in one_line(err) and "commands" in err
    assert segment.read_bytes() == damaged


def test_the_outbox_republishes_only_what_the_commands_log_lost(tmp_path, cli):
    """Unmarked commands at the log's end (a crash before the mark moved) lose nothing; an emptied log, all."""
    from ringfence.projections.outbox import publish_pending, republish_lost
    from ringfence.projections.store import StateStore

    data = tmp_path / "d"
    cli("ingest", str(EXAMPLE), data=data)
    cli("run", data=data, check_rc=3)
    published = _commands_in_log(data)
    with StateStore(data / "state") as store:
        store.set_published(len(published) - 7)  # as if the process died between the publish and the mark
        with EmbeddedLog(data / "commands") as log:
            assert republish_lost(store, log) is None and store.published() == len(published) - 7
        store.set_published(len(published))
        shutil.move(data / "commands", tmp_path / "commands-aside")  # what an operator does with a broken one
        with EmbeddedLog(data / "commands") as log:
            note = republish_lost(store, log)
            assert f"publishing 1..{len(published)} again" in note and store.published() == 0
            assert publish_pending(store, {"commands": log}) == len(published)
    assert _commands_in_log(data) == published
