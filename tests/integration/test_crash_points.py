"""kill -9 at every named crash point of `run` (events.crashpoints), chosen by seed: nothing lost, nothing invented.

Each case crashes `run` at one point's n-th pass (n from the seed), once or
twice in a row, then finishes with a clean `run`; the state's digest and the
published commands must be those of one uninterrupted run. A failure names
its point and seed: `RINGFENCE_SEED=<seed> pytest -k <point>` replays it.
"""

import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from ringfence.events.crashpoints import CRASH_EXIT_CODE, ENV, RUN_POINTS
from ringfence.events.embedded import EmbeddedLog
from ringfence.ops.cli import EXIT_FLAGGED, EXIT_OK

RUN = ["run", "--checkpoint-every", "1000", "--chain-every", "2000"]  # ~19 checkpoints, ~9 links: room for two crashes
SEEDS = [int(os.environ["RINGFENCE_SEED"])] if os.environ.get("RINGFENCE_SEED") else [1, 2]


def ringfence(data, *args, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RINGFENCE_DATA": str(data)}
    env.pop(ENV, None)
    if crash is not None:
        env[ENV] = crash
    return subprocess.run([sys.executable, "-m", "ringfence.ops.cli", *args], env=env, capture_output=True, text=True)


def published(data) -> list[str]:
    """The id of every record in the commands log: a command's, or a cancel's own."""
    log = EmbeddedLog(data / "commands", writable=False)
    records = [json.loads(bytes(record)) for _, record in log.read(0)]
    return [record.get("cancel_id") or record["command_id"] for record in records]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A demo log with liquidations, and what one uninterrupted `run` makes of it."""
    root = tmp_path_factory.mktemp("crash-points")
    demo = subprocess.run([sys.executable, "-m", "ringfence.ops.cli", "demo", "--seed", "9", "--events", "16000",
                           "--data", str(root / "demo")], capture_output=True, text=True)  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    clean = root / "clean"
    shutil.copytree(root / "demo" / "log", clean / "log")
    assert ringfence(clean, *RUN).returncode in (EXIT_OK, EXIT_FLAGGED)  # the demo's log holds some rejections
    ids = published(clean)
    assert len(ids) > 50 and len(set(ids)) == len(ids)
    return root, ringfence(clean, "digest").stdout, set(ids)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("point", RUN_POINTS)
def test_a_crash_at_any_point_loses_and_invents_nothing(session, tmp_path, point, seed):
    root, expected_digest, expected_ids = session
    data = tmp_path / "data"
    shutil.copytree(root / "demo" / "log", data / "log")
    rng = random.Random(f"{point}/{seed}")
    worker = ["--worker"] if point == "worker.sync" else ["--no-worker"]
    where = f"point {point}, seed {seed} (replay: RINGFENCE_SEED={seed} pytest -k '{point}')"
    for _ in range(2):  # a crash, then a crash of the restarted run, then a clean finish
        n = rng.randint(1, 3)
        crashed = ringfence(data, *RUN, *worker, crash=f"{point}:{n}")
        if point == "worker.sync":  # the child dies; the parent stops with one line, having stored nothing since
            assert crashed.returncode == 1 and "projection worker stopped" in crashed.stderr, (where, crashed.stderr)
            assert "Traceback" not in crashed.stderr, where
        else:
            assert crashed.returncode == CRASH_EXIT_CODE, (where, n, crashed.returncode, crashed.stderr)
    finished = ringfence(data, *RUN)
    assert finished.returncode in (EXIT_OK, EXIT_FLAGGED), (where, finished.stderr)
    ids = published(data)
    assert set(ids) == expected_ids, where  # every command published, at least once, none invented
    assert ringfence(data, "digest").stdout == expected_digest, where
