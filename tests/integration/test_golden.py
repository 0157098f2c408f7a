"""Golden replay files: small JSON Lines logs with their expected digest, chain and outputs.

The expected files change only on purpose: RINGFENCE_REGEN_GOLDEN=1 pytest
tests/integration/test_golden.py rewrites them (review the diff before you
commit it). Without the flag a difference fails the test.
"""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
LOGS = {"session-42": GOLDEN / "session-42.jsonl", "example": ROOT / "examples" / "session.jsonl"}
CHAIN_EVERY = 100


def outcome(cli, data) -> dict:
    def rows(command: str) -> list:
        return [json.loads(line) for line in cli(command, "--json", data=data)[1].splitlines()]

    offset, digest = cli("digest", data=data)[1].split()
    return {
        "chain_every": CHAIN_EVERY,
        "offset": int(offset),
        "digest": digest,
        "chain": rows("chain"),
        "commands": rows("commands"),
        "rejections": rows("rejections"),
        "deadletters": rows("deadletters"),
        "positions": rows("positions"),
    }


@pytest.mark.parametrize("name", sorted(LOGS))
def test_a_golden_log_replays_to_its_recorded_digest_chain_and_outputs(tmp_path, cli, name):
    data = tmp_path / name
    cli("ingest", str(LOGS[name]), data=data, check_rc=None)
    cli("run", "--chain-every", str(CHAIN_EVERY), data=data, check_rc=None)
    got = outcome(cli, data)
    expected_file = GOLDEN / f"{name}.expected.json"
    if os.environ.get("RINGFENCE_REGEN_GOLDEN") == "1":
        expected_file.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(expected_file.read_text())
    assert got["digest"] == expected["digest"] and got["offset"] == expected["offset"]
    assert got == expected
    assert cli("replay", "--verify", data=data)[0] == 0
    assert cli("replay", data=data)[1].split() == [str(expected["offset"]), expected["digest"]]
    # the same answers on 3 partitions as on the embedded log (replay.partitioned, the fund stage between them)
    out = cli("replay", "--as-partitions", "3", data=data)[1]
    assert f"{expected['offset'] + 1} events on 3 partitions: the same " in out and "as on one" in out
    rc, _, err = cli("replay", "--as-partitions", "0", data=data, check_rc=None)
    assert rc == 2 and err.count("\n") == 1 and "--as-partitions" in err
