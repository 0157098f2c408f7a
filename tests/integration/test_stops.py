"""Graceful stops (ops.stopping): SIGINT / SIGTERM in `run`, `demo` and `ingest` finish the batch in hand, make it
durable, say so in one line and exit 130 / 143, with no traceback, no worker left behind and nothing lost.

Each command runs in a session of its own, so that its process group is the job a terminal's Ctrl-C would reach.
The signal comes from a named point: the command's N-th check for a stop (RINGFENCE_SIGNAL_AT), or, from outside,
once the command has said it started.
"""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path

import pytest

from ringfence.core import model as m
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.json_codec import encode_line
from ringfence.events.log_codec import encode_record
from tests.helpers import market

EVENTS = 40_000
SIGNALS = [("SIGINT", 130), ("SIGTERM", 143)]


def session(count: int) -> list:
    """A market, deposits and a mark every 100 events (rows for the projection worker)."""
    events = [market()]
    for n in range(1, count):
        events.append(m.MarkPrice(f"m{n}", n, "BTCUSDT", (60_000 + n % 7) * 10**8) if n % 100 == 0
                      else m.Deposit(f"d{n}", n, f"A{n % 500}", "USDT", 10**8))  # fmt: skip
    return events


def write_log(data: Path, count: int) -> None:
    with EmbeddedLog(data / "log") as log:
        for event in session(count):
            log.append(encode_record(event))
        log.commit()


def start(args: list[str], data: Path, env: dict | None = None, **kw) -> tuple[subprocess.Popen, str]:
    """The real CLI in a new session, tagged in its environment (which a worker it starts inherits)."""
    tag = uuid.uuid4().hex
    process = subprocess.Popen([sys.executable, "-m", "ringfence.ops.cli", *args], start_new_session=True,
                               env={**os.environ, "RINGFENCE_DATA": str(data), "RINGFENCE_TEST_TAG": tag, **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip
    return process, tag


def tagged(tag: str) -> list[int]:
    """The processes still alive whose environment carries ``tag``: the command, and any worker it started."""
    mark, alive = f"RINGFENCE_TEST_TAG={tag}".encode(), []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                alive.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            pass
    return alive


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
def clean_digest(tmp_path_factory):
    """The digest of an uninterrupted run over the session."""
    from tests.integration.conftest import ringfence

    data = tmp_path_factory.mktemp("clean")
    write_log(data, EVENTS)
    ringfence("run", "--no-worker", data=data)
    return ringfence("digest", data=data)[1]


@pytest.mark.parametrize("name, code", SIGNALS)
def test_a_signal_stops_run_at_a_checkpoint_with_one_line_and_no_worker_left(tmp_path, cli, clean_digest, name, code):
    data = tmp_path / "data"
    write_log(data, EVENTS)
    # slices of 10,000 events, each followed by a check; a periodic checkpoint after 20,000 (the first slice end
    # past 15,000); the signal at the third check, at offset 29,999: the whole job's process group gets it
    process, tag = start(["run", "--worker", "--checkpoint-every", "15000"], data,
                         {"RINGFENCE_SIGNAL_AT": f"3:{name}"})  # fmt: skip
    rc, out, err = finish(process)
    assert (rc, out, err.splitlines()) == (code, "", ["interrupted: applied up to offset 29999, checkpointed"])
    assert not tagged(tag)  # the worker is gone with its parent
    assert cli("digest", data=data)[1].split()[0] == "29999"  # past the last periodic checkpoint (19,999)
    cli("run", data=data)
    assert cli("digest", data=data)[1] == clean_digest  # nothing lost, nothing applied twice


@pytest.mark.parametrize("name, code", SIGNALS)
def test_a_signal_stops_ingest_after_committing_what_it_appended(tmp_path, name, code):
    source = tmp_path / "session.jsonl"
    source.write_bytes(b"".join(encode_line(event) + b"\n" for event in session(25_000)))
    # commits every 10,000 lines; the signal after the 15,000th
    process, tag = start(["ingest", str(source)], tmp_path / "data", {"RINGFENCE_SIGNAL_AT": f"15000:{name}"})
    rc, out, err = finish(process)
    assert (rc, out, err.splitlines()) == (code, "", ["interrupted: appended 15000 records, up to offset 14999, "
                                                      "committed"])  # fmt: skip
    assert EmbeddedLog(tmp_path / "data" / "log", writable=False).end_offset() == 15_000 and not tagged(tag)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_ctrl_c_cuts_an_ingest_waiting_on_its_input(tmp_path):
    read_end, write_end = os.pipe()
    process, tag = start(["ingest", "-", "--source", "pipe"], tmp_path / "data", stdin=read_end)
    lines = b"".join(encode_line(event) + b"\n" for event in session(100))
    os.write(write_end, lines)  # and the pipe stays open: ingest reads them, then waits for more
    unread = bytearray(4)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # polls the state of the pipe and the process, times nothing
        fcntl.ioctl(read_end, termios.FIONREAD, unread)
        if int.from_bytes(unread, sys.byteorder) == 0 and _state(process.pid) == "S":
            break  # it has read every line and sleeps: in the read of its input
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    rc, out, err = finish(process)
    os.close(write_end)
    os.close(read_end)
    assert (rc, out, err.splitlines()) == (130, "", ["interrupted: appended 100 records, up to offset 99, committed"])
    assert EmbeddedLog(tmp_path / "data" / "log", writable=False).end_offset() == 100 and not tagged(tag)


def test_ctrl_c_stops_the_demo_at_a_checkpoint(tmp_path, cli):
    data = tmp_path / "demo"
    process, tag = start(["demo", "--data", str(data)], tmp_path)
    assert process.stdout.readline().decode().startswith("demo: seed 1")  # it has started its session
    os.killpg(process.pid, signal.SIGINT)
    rc, out, err = finish(process)
    assert rc == 130 and out == "" and len(err.splitlines()) == 1, err
    offset = re.fullmatch(r"interrupted: applied up to offset (\d+), checkpointed\n", err).group(1)
    digest = cli("digest", data=data)[1]
    assert digest.split()[0] == offset and cli("replay", data=data)[1] == digest  # the store is the log's answer
    commands = [json.loads(line) for line in cli("commands", "--json", data=data)[1].splitlines()]
    published = [json.loads(bytes(r)) for _, r in EmbeddedLog(data / "commands", writable=False).read(0)]
    assert published == commands  # the outbox went out with the checkpoint
    assert not tagged(tag)
