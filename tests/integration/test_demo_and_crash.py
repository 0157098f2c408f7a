"""The demo end to end, and kill -9 at random points of `run` over a long demo log."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ringfence.events.embedded import EmbeddedLog


def published_ids(data) -> list[str]:
    log = EmbeddedLog(data / "commands", writable=False)
    return [json.loads(bytes(record))["command_id"] for _, record in log.read(0)]


def summary_digest(out: str) -> str:
    return next(line.split(None, 1)[1] for line in out.splitlines() if line.strip().startswith("digest"))


def summary_count(out: str, name: str) -> int:
    line = next(line for line in out.splitlines() if line.strip().startswith(name))
    return int(line.split(name, 1)[1].split()[0].replace(",", ""))


def test_the_default_demo_twice_gives_the_same_digest_and_no_stuck_position(tmp_path, cli):
    outs = [cli("demo", "--data", str(tmp_path / f"d{n}"), data=tmp_path)[1] for n in range(2)]
    assert summary_digest(outs[0]) == summary_digest(outs[1])
    # the episode invariant at the end, and an engine that raced cancels and lost orders without a bad answer
    assert summary_count(outs[0], "stuck positions") == 0 and summary_count(outs[0], "dead letters") == 0
    reasons = {json.loads(c).get("reason") for c in cli("commands", "--json", data=tmp_path / "d0")[1].splitlines()}
    assert {"timed_out", "position_changed", "no_longer_liquidatable"} <= reasons
    # what the demo did is what `run` and `replay` make of its log
    assert cli("digest", data=tmp_path / "d0")[1].strip() == summary_digest(outs[0])
    assert cli("replay", data=tmp_path / "d0")[1].strip() == summary_digest(outs[0])
    commands = cli("commands", "--json", data=tmp_path / "d0")[1].splitlines()
    assert commands and sorted(published_ids(tmp_path / "d0")) == sorted(json.loads(c)["command_id"] for c in commands)


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory):
    """A long demo log (and the outputs of one uninterrupted run over it)."""
    root = tmp_path_factory.mktemp("crash")
    subprocess.run([sys.executable, "-m", "ringfence.ops.cli", "demo", "--seed", "9", "--events", "120000",
                    "--data", str(root / "demo")], check=True, capture_output=True)  # fmt: skip
    clean = root / "clean"
    shutil.copytree(root / "demo" / "log", clean / "log")
    env = {**os.environ, "RINGFENCE_DATA": str(clean)}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "ringfence.ops.cli", "run", "--checkpoint-every", "15000"], env=env,
                   capture_output=True)  # fmt: skip
    duration = time.monotonic() - started
    digest = subprocess.run([sys.executable, "-m", "ringfence.ops.cli", "digest"], env=env, capture_output=True)
    return root, digest.stdout.decode(), set(published_ids(clean)), duration


@pytest.mark.parametrize("seed", range(20))
def test_kill_minus_nine_loses_and_duplicates_nothing(demo_log, tmp_path, seed, cli):
    root, expected_digest, expected_ids, duration = demo_log
    assert len(expected_ids) > 100
    data = tmp_path / "data"
    shutil.copytree(root / "demo" / "log", data / "log")
    env = {**os.environ, "RINGFENCE_DATA": str(data)}
    rng = random.Random(seed)
    interrupted = 0
    for _ in range(2):  # two kills in a row (somewhere inside a run's duration), then a clean finish
        process = subprocess.Popen([sys.executable, "-m", "ringfence.ops.cli", "run", "--checkpoint-every", "15000"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(0.05, 0.7) * duration)  # early enough to land inside a run that goes faster than the measured one
        process.send_signal(signal.SIGKILL)
        interrupted += process.wait() == -signal.SIGKILL
    assert interrupted  # at least one kill landed before the run finished
    cli("run", "--checkpoint-every", "15000", data=data, check_rc=None)
    published = published_ids(data)
    assert set(published) == expected_ids  # every command published at least once, none invented
    assert cli("digest", data=data)[1] == expected_digest
