"""Every read of the store is checked (issue 13, case 1), on a real RocksDB store.

A flipped byte in a data block of an .sst file: every command that reads the
store says so in one line naming the file, and exits 1 — never a partial
listing, never a run carried on from a partial state, never "verified".
`replay --verify` compares the final state and the outbox with the store's
even when no chain link falls in the replayed range.
"""

import shutil
from pathlib import Path

import msgspec
import pytest
from rocksdict import Options, Rdict

from ringfence.events.crashpoints import CRASH_EXIT_CODE, ENV
from ringfence.projections.store import POSITION
from tests.integration.test_cli import session_file

EVENTS = 6_000


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """A store with snapshots (chain links every 1,500 events: RocksDB flushes to .sst files at each)."""
    from tests.integration.conftest import ringfence

    root = tmp_path_factory.mktemp("store-integrity")
    data = root / "data"
    ringfence("ingest", str(session_file(root, seed=13, count=EVENTS)), data=data)
    ringfence("run", "--chain-every", "1500", data=data, check_rc=None)
    return data


def damaged_copy(healthy: Path, tmp_path: Path, directory: str = "state") -> tuple[Path, list[str]]:
    """A copy of the data directory with one byte flipped in the middle of every .sst of ``directory``.

    The copy's files are written anew, so the snapshots' hard links to the
    live store's files are broken: only ``directory`` is damaged.
    """
    data = tmp_path / "data"
    shutil.copytree(healthy, data)
    names = []
    for path in sorted((data / directory).glob("*.sst")):
        content = bytearray(path.read_bytes())
        content[len(content) // 2] ^= 0xFF
        path.unlink()
        path.write_bytes(content)
        names.append(path.name)
    assert names
    return data, names


def one_damage_line(err: str, names: list[str]) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cannot be read" in lines[0] and "checksum mismatch" in lines[0], err
    assert any(name in lines[0] for name in names), err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["positions"], ["wallets"], ["books"], ["digest"], ["run"],
                                     ["replay", "--verify"], ["commands", "--json"]])  # fmt: skip
def test_a_flipped_byte_in_the_state_is_one_line_and_exit_1(healthy, tmp_path, cli, command):
    data, names = damaged_copy(healthy, tmp_path)
    rc, out, err = cli(*command, data=data, check_rc=None)
    assert rc == 1, (rc, out[-500:], err)
    one_damage_line(err, names)
    assert out.strip() == "" or command == ["run"] and "applied" not in out, out[-500:]


def test_a_flipped_byte_in_a_snapshot_is_refused_by_a_query_at_its_offset(healthy, tmp_path, cli):
    snapshots = sorted((healthy / "snapshots").iterdir())
    assert len(snapshots) >= 2
    offset = int(snapshots[0].name)
    expected = cli("positions", "--at", str(offset), data=healthy)[1]
    data, names = damaged_copy(healthy, tmp_path, f"snapshots/{snapshots[0].name}")
    rc, out, err = cli("positions", "--at", str(offset), "--json", data=data, check_rc=None)
    assert rc == 1 and out == "", (rc, out[-300:], err)
    one_damage_line(err, names)
    assert cli("positions", "--at", str(offset), data=healthy)[1] == expected  # the original is untouched


def store_edited(data: Path, edit) -> None:
    """Change the store behind ringfence's back (as a bug or an operator would), through RocksDB itself."""
    db = Rdict(str(data / "state"), Options(raw_mode=True))
    try:
        edit(db)
    finally:
        db.close()


def test_verify_compares_the_final_state_although_no_link_is_in_range(tmp_path, cli):
    data = tmp_path / "data"
    cli("ingest", str(session_file(tmp_path, seed=13, count=2_000)), data=data)
    cli("run", "--chain-every", "1000000", data=data, check_rc=None)  # no link in 2,000 events
    assert cli("replay", "--verify", data=data)[1].startswith("verified offsets 0..1999: 0 chain links")

    def shift_a_margin(db):
        key = next(key for key, _ in db.items(from_key=POSITION) if key.startswith(POSITION))
        size, cost, margin, shortfall = msgspec.msgpack.decode(db[key])
        db[key] = msgspec.msgpack.encode([size, cost, margin + 1, shortfall])

    store_edited(data, shift_a_margin)
    rc, _, err = cli("replay", "--verify", data=data, check_rc=1)
    assert err.startswith("ringfence: verify: diverges at offset 1999 (final state): the store's state"), err


def test_verify_compares_the_outbox_and_the_published_commands(tmp_path, cli):
    data = tmp_path / "data"
    cli("ingest", str(session_file(tmp_path, seed=13, count=2_000)), data=data)
    cli("run", "--chain-every", "1000000", data=data, check_rc=None)
    out = cli("replay", "--verify", data=data)[1]
    assert " 0 outbox records" not in out, out  # the session liquidates: there is an outbox to compare

    def drop_the_last_command(db):
        last = next(key for key, _ in db.items(backwards=True, from_key=b"c:\xff") if key.startswith(b"c:"))
        del db[last]

    store_edited(data, drop_the_last_command)
    rc, _, err = cli("replay", "--verify", data=data, check_rc=1)
    assert "(outbox): outbox record" in err and "stored nothing" in err, err


def test_serve_refuses_a_damaged_partition_store_at_start_up(healthy, tmp_path, broker, cli):
    import subprocess
    import sys

    from ringfence.ops.kafka_log import KafkaSettings
    from ringfence.ops.serve import partition_dir
    from tests.integration.kafka_harness import unique_prefix

    data, names = damaged_copy(healthy, tmp_path)
    prefix = unique_prefix("damaged")
    service = tmp_path / "service"
    kafka = ["--bootstrap", broker, "--prefix", prefix]
    cli("topics", *kafka, "--partitions", "1", data=service)
    store = partition_dir(service, KafkaSettings(broker, prefix=prefix), 0) / "state"
    shutil.copytree(data / "state", store)  # the partition's store, damaged
    served = subprocess.run([sys.executable, "-m", "ringfence.ops.cli", "serve", *kafka, "--data", str(service),
                             "--partitions", "0", "--metrics-port", "0"], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    errors = [line for line in served.stderr.splitlines() if '"level": "info"' not in line]
    assert served.returncode == 1 and len(errors) == 1, served.stderr
    assert "cannot be read" in errors[0] and any(name in errors[0] for name in names), errors[0]


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A store whose last checkpoints are only in RocksDB's write-ahead log: `run` killed after its 4th checkpoint.

    No chain link falls in range (so no snapshot flushes the memtable), and a
    crash leaves no flush either: the committed batches are in the .log file.
    """
    from tests.integration.conftest import ringfence

    root = tmp_path_factory.mktemp("wal")
    data = root / "data"
    ringfence("ingest", str(session_file(root, seed=14, count=EVENTS)), data=data)
    clean = root / "clean"
    shutil.copytree(data, clean)
    ringfence("run", "--checkpoint-every", "1000", data=clean, check_rc=None)
    ringfence("run", "--checkpoint-every", "1000", data=data, env={ENV: "checkpoint.after_write:4"},
              check_rc=CRASH_EXIT_CODE)  # fmt: skip
    (wal,) = [path for path in (data / "state").glob("*.log") if path.stat().st_size > 0]
    return data, wal.name, ringfence("digest", data=clean)[1]


def wal_edited(crashed, tmp_path: Path, edit) -> Path:
    source, wal, _ = crashed
    data = tmp_path / "data"
    shutil.copytree(source, data)
    path = data / "state" / wal
    content = bytearray(path.read_bytes())
    edit(content)
    path.write_bytes(content)
    return data


def test_a_flipped_byte_inside_the_write_ahead_log_is_one_line_naming_it(crashed, tmp_path, cli):
    """RocksDB's default recovery would open the store at an older offset, silently dropping committed batches."""

    def flip(content: bytearray) -> None:
        content[len(content) // 3] ^= 0xFF

    data = wal_edited(crashed, tmp_path, flip)
    for command in (["positions"], ["run"]):
        rc, out, err = cli(*command, data=data, check_rc=None)
        assert rc == 1 and "Traceback" not in err, (rc, err)
        (line,) = err.strip().splitlines()
        assert "cannot be read" in line and f"write-ahead log {crashed[1]}" in line, line


def test_a_torn_last_write_ahead_record_is_a_write_never_acknowledged(crashed, tmp_path, cli):
    """A crash mid-write tears at most the last record: the store opens without it and `run` re-applies it from the log."""
    data = wal_edited(crashed, tmp_path, lambda content: content.__delitem__(slice(len(content) - 40, None)))
    assert cli("positions", data=data, check_rc=None)[0] == 0
    cli("run", "--checkpoint-every", "1000", data=data, check_rc=None)
    assert cli("digest", data=data)[1] == crashed[2]
