"""The digest chain and `replay --verify` (issue 5), on the embedded log and a real RocksDB store."""

import json
import struct
import zlib

import msgspec

from ringfence.core.digest import compute_digest
from ringfence.core.model import Fill
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.log_codec import decode_record
from ringfence.projections.store import StateStore
from ringfence.replay.verify import verify
from tests.integration.test_cli import session_file

EVERY = 100


def chain_of(cli, data) -> list[dict]:
    return [json.loads(line) for line in cli("chain", "--json", data=data)[1].splitlines()]


def ingested_and_run(tmp_path, cli, name="data", seed=31, count=1_000, *run_args):
    data = tmp_path / name
    cli("ingest", str(session_file(tmp_path, seed=seed, count=count)), data=data)
    cli("run", "--chain-every", str(EVERY), *run_args, data=data, check_rc=None)
    return data


def test_a_link_every_n_events_chained_from_genesis_and_the_digest_at_its_offset(tmp_path, cli):
    data = ingested_and_run(tmp_path, cli, count=1_000)
    links = chain_of(cli, data)
    assert [link["offset"] for link in links] == list(range(EVERY - 1, 1_000, EVERY))
    assert links[0]["previous"] == "0" * 64
    assert all(b["previous"] == a["chain"] for a, b in zip(links, links[1:]))
    assert cli("digest", data=data)[1].split() == ["999", links[-1]["digest"]]
    assert cli("replay", "--to", "499", data=data)[1].split() == ["499", links[4]["digest"]]
    out = cli("replay", "--verify", data=data)[1]
    assert out.startswith("verified offsets 0..999: 10 chain links") and links[-1]["chain"] in out


def test_the_chain_depends_on_the_log_alone_not_on_checkpoints_or_restarts(tmp_path, cli):
    whole = ingested_and_run(tmp_path, cli, "whole", 32, 1_000)
    pieces = tmp_path / "pieces"
    lines = session_file(tmp_path, seed=32, count=1_000).read_bytes().splitlines(keepends=True)
    for n, (start, end) in enumerate([(0, 1), (1, 150), (150, 620), (620, 1_000)]):
        part = tmp_path / f"part{n}.jsonl"
        part.write_bytes(b"".join(lines[start:end]))
        cli("ingest", str(part), data=pieces)
        cli("run", "--checkpoint-every", "37", *(["--chain-every", str(EVERY)] if n == 0 else []), data=pieces,
            check_rc=None)  # fmt: skip
    assert chain_of(cli, pieces) == chain_of(cli, whole)
    assert cli("replay", "--verify", data=pieces)[0] == 0
    with StateStore(pieces / "state", read_only=True) as a, StateStore(whole / "state", read_only=True) as b:
        assert list(a.fingerprints()) == list(b.fingerprints())
        assert [offset for offset, _ in a.fingerprints(after=616)][:2] == [617, 618]  # from inside a chunk


def _records(segment: bytes) -> list[tuple[int, int]]:
    """(start of payload, length) of each record of a segment file."""
    found, position = [], 0
    while position < len(segment):
        length, _ = struct.unpack_from(">II", segment, position)
        found.append((position + 8, length))
        position += 8 + length
    return found


def _flip(data, offset: int, *, fix_checksum: bool) -> None:
    (segment,) = sorted((data / "log").glob("*.seg"))
    raw = bytearray(segment.read_bytes())
    start, length = _records(raw)[offset]
    raw[start + length - 1] ^= 0x01  # the last byte of the payload: a digit of the last field
    if fix_checksum:
        struct.pack_into(">I", raw, start - 4, zlib.crc32(raw[start : start + length]))
    segment.write_bytes(bytes(raw))


def test_a_flipped_byte_is_caught_by_the_log_checksum_and_a_forged_record_by_verify(tmp_path, cli):
    data = ingested_and_run(tmp_path, cli, count=1_000)
    _flip(data, 537, fix_checksum=False)
    rc, _, err = cli("replay", "--verify", data=data, check_rc=1)
    assert err.splitlines() == [err.strip()] and "record at offset 537" in err and "damaged" in err

    _flip(data, 537, fix_checksum=True)  # undo the flip, checksum and all
    assert cli("replay", "--verify", data=data)[0] == 0
    _flip(data, 537, fix_checksum=True)  # a forger who recomputes the checksum
    rc, _, err = cli("replay", "--verify", data=data, check_rc=1)
    assert err.startswith("ringfence: verify: diverges at offset 537 (record): the record at offset 537 is not")


def test_the_same_records_reduced_differently_are_named_at_the_next_link(tmp_path, cli):
    data = ingested_and_run(tmp_path, cli, count=1_000)
    log = EmbeddedLog(data / "log", writable=False)
    offset, target = next((o, bytes(p)) for o, p in log.read(250) if type(decode_record(p)) is Fill)

    def another_reducer(payload):  # as a changed reducer would: the same record, another effect
        event = decode_record(payload)
        return msgspec.structs.replace(event, fee=event.fee + 1) if bytes(payload) == target else event

    log.decode = another_reducer  # the log's decode is what replay reduces (events.log.Log)
    with StateStore(data / "state", read_only=True) as store:
        result = verify(log, store)
    next_link = offset // EVERY * EVERY + EVERY - 1
    assert (result.divergence.offset, result.divergence.kind) == (next_link, "state")
    assert f"from offset {next_link - EVERY + 1}" in result.divergence.detail


def test_an_altered_stored_link_is_named(tmp_path, cli):
    from rocksdict import Options, Rdict

    data = ingested_and_run(tmp_path, cli, count=1_000)
    db = Rdict(str(data / "state"), Options(raw_mode=True))
    key = b"k:" + struct.pack(">q", 599)
    link = json.loads(db[key])
    db[key] = json.dumps({**link, "digest": "0" * 64}).encode()  # a new digest, the old chain hash
    db.close()
    err = cli("replay", "--verify", data=data, check_rc=1)[2]
    assert err.startswith("ringfence: verify: diverges at offset 599 (chain)")


def test_verify_without_a_chain_or_a_store_is_one_line(tmp_path, cli):
    data = tmp_path / "fresh"
    cli("ingest", str(session_file(tmp_path, count=10)), data=data)
    err = cli("replay", "--verify", data=data, check_rc=2)[2]
    assert err.splitlines() == [err.strip()] and "run `ringfence run` first" in err


def test_positions_at_a_past_offset_or_time_equal_a_run_over_the_log_cut_there(tmp_path, cli):
    data = ingested_and_run(tmp_path, cli, count=1_000)
    before = (cli("digest", data=data)[1], sorted(p.name for p in (data / "state").iterdir()))
    assert [int(p.name) for p in sorted((data / "snapshots").iterdir())] == list(range(99, 1_000, 100))
    lines = session_file(tmp_path, seed=31, count=1_000).read_bytes().splitlines(keepends=True)
    for offset in (0, 250, 499, 500, 999):
        cut = tmp_path / f"cut-{offset}"
        (tmp_path / f"cut-{offset}.jsonl").write_bytes(b"".join(lines[: offset + 1]))
        cli("ingest", str(tmp_path / f"cut-{offset}.jsonl"), data=cut)
        cli("run", data=cut, check_rc=None)
        for command in ("positions", "wallets", "books"):
            assert cli(command, "--json", "--at", str(offset), data=data)[1] == cli(command, "--json", data=cut)[1]
        assert cli("digest", "--at", str(offset), data=data)[1] == cli("digest", data=cut)[1]
    # by time: the prefix stamped at or before the 600th event's time
    ts = json.loads(lines[600])["ts"]
    last = next(n for n, line in enumerate(lines) if json.loads(line)["ts"] > ts) - 1
    assert last >= 600
    assert cli("digest", "--at-time", str(ts), data=data)[1] == cli("digest", "--at", str(last), data=data)[1]
    err = cli("positions", "--at", "1000", data=data, check_rc=2)[2]
    assert err.strip() == "ringfence: error: the log ends at offset 999, before 1000"
    assert (cli("digest", data=data)[1], sorted(p.name for p in (data / "state").iterdir())) == before


def test_point_in_time_from_a_snapshot_equals_from_offset_0(tmp_path, cli):
    data = ingested_and_run(tmp_path, cli, count=1_000)
    from ringfence.replay.point_in_time import state_at

    log = EmbeddedLog(data / "log", writable=False)
    for offset in (5, 350, 999):
        near = state_at(log, data / "state", offset)
        far = state_at(log, data / "state", offset, use_checkpoints=False)
        assert (near.source, far.source) == (("store" if offset == 999 else f"snapshot {offset // 100 * 100 - 1}")
                                             if offset >= 99 else "empty", "empty")  # fmt: skip
        assert compute_digest(near.state, near.projection.canonical_sections()) == \
            compute_digest(far.state, far.projection.canonical_sections())  # fmt: skip


def test_verify_from_a_snapshot_checks_the_snapshot_first(tmp_path, cli):
    from rocksdict import Options, Rdict

    data = ingested_and_run(tmp_path, cli, count=1_000)
    out = cli("replay", "--verify", "--from", "650", data=data)[1]
    assert out.startswith("verified offsets 600..999 from the snapshot at 599, whose digest matches its link: 4 ")
    _flip(data, 300, fix_checksum=True)  # before the snapshot: not replayed from it
    assert cli("replay", "--verify", "--from", "650", data=data)[0] == 0
    _flip(data, 700, fix_checksum=True)
    err = cli("replay", "--verify", "--from", "650", data=data, check_rc=1)[2]
    assert err.startswith("ringfence: verify: diverges at offset 700 (record)")
    db = Rdict(str(data / "snapshots" / f"{599:020d}"), Options(raw_mode=True))
    key = next(k for k in db.keys() if k.startswith(b"w:"))
    db[key] = (int.from_bytes(db[key], "big", signed=True) + 1).to_bytes(9, "big", signed=True)  # one unit more
    db.close()
    err = cli("replay", "--verify", "--from", "650", data=data, check_rc=1)[2]
    assert err.startswith("ringfence: verify: diverges at offset 599 (snapshot)")


def test_history_shows_each_liquidation_with_the_exact_test_that_fired_it(tmp_path, cli):
    from fractions import Fraction

    data = ingested_and_run(tmp_path, cli, count=3_000, seed=5)
    commands = [json.loads(line) for line in cli("commands", "--json", data=data)[1].splitlines()]
    liquidations = [c for c in commands if c["type"] == "liquidate"]
    assert liquidations
    first = liquidations[0]
    key = [first["account"], first["market"], "--side", first["position_side"]]
    rows = [json.loads(line) for line in cli("history", *key, "--json", data=data)[1].splitlines()]
    fired = [row for row in rows if first["command_id"] in row["commands"]]
    assert len(fired) == 1 and fired[0]["offset"] == first["trigger_offset"]
    trigger = fired[0]["trigger"]
    assert Fraction(trigger["margin_balance_B"]) <= Fraction(trigger["maintenance_margin_MM"])
    assert trigger["mark_price"].rstrip("0").rstrip(".") == first["mark_price"].rstrip("0").rstrip(".")
    assert all(a["after"] == b["before"] or a["after"]["mark_price"] != b["before"]["mark_price"]
               for a, b in zip(rows, rows[1:]) if a["after"] and b["before"])  # fmt: skip
    text = cli("history", *key, data=data)[1]
    assert "trigger at mark" in text and f"B = {trigger['margin_balance_B']} <= MM = " in text
    err = cli("history", "nobody", "BTCUSDT", data=data, check_rc=2)[2]
    assert err.strip() == "ringfence: error: no event touched nobody BTCUSDT BOTH"


def test_audit_arguments_that_cannot_work_are_one_line(tmp_path, cli):
    data = ingested_and_run(tmp_path, cli, count=300)
    cases = [
        (["positions", "--at-time", "5"], "no event is stamped at or before 5"),
        (["positions", "--at", "-3"], "argument --at: -3 is not at least 0"),
        (["replay", "--from", "100"], "--from goes with --verify"),
        (["replay", "--verify", "--from", "50"], "no snapshot at or before offset 50"),
        (["run", "--chain-every", "0"], "argument --chain-every: 0 is not at least 1"),
        (["run", "--chain-every", "x"], "argument --chain-every: 'x' is not a whole number"),
        (["positions", "--at", "1", "--at-time", "1"], "not allowed with argument"),
    ]
    for arguments, message in cases:
        err = cli(*arguments, data=data, check_rc=2)[2]
        assert message in err and err.count("\n") == 1, err
