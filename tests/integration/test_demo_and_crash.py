"""The demo end to end (crashes of `run`: tests/integration/test_crash_points.py)."""

import json

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
