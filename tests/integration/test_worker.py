"""The liquidation projection in a worker process decides exactly what it decides in process.

Real embedded logs, real RocksDB stores, a real child process. Equality is
checked on everything a run stores (state, outputs, projection, chain links,
fingerprints), byte for byte.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from itertools import islice

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.core import model as m
from ringfence.core.digest import compute_digest
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.log_codec import encode_record
from ringfence.ops.demo import run_demo
from ringfence.ops.simulate import MARKETS, market_events
from ringfence.core.state import State
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.outbox import decision_records
from ringfence.projections.runner import close_projection, reduce_records, run_core
from ringfence.projections.store import FINGERPRINTS, StateStore
from ringfence.projections.worker import ProjectionWorker, WorkerFailed
from tests.property.streams import adversarial_stream

U = 10**8


def hostile_log(path, seed: int, count: int) -> None:
    """Adversarial trading plus what else the projection reacts to: a mark band, jumps beyond it, a new config."""
    events, funds = [], {}
    for event, state in adversarial_stream(seed, count):
        events.append(event)
        if len(events) == count // 3:  # the insurance fund each market is in there: a band keeps it
            funds = {name: market.config.insurance_fund for name, market in state.markets.items()}
    banded = [msgspec.structs.replace(config, id=f"band-{config.market}", mark_band=U // 100,
                                      insurance_fund=funds.get(config.market, ""))
              for config in market_events(0)]  # fmt: skip
    at = count // 3
    events[at:at] = banded
    for n, position in enumerate(range(at + 40, len(events), max(1, len(events) // 7))):
        market = sorted(MARKETS)[n % 2]
        price = MARKETS[market][2] * (100 + (-1) ** n * 6) // 100
        events.insert(position, m.MarkPrice(f"jump-{n}", events[position - 1].ts, market, price))
    with EmbeddedLog(path) as log:
        for event in events:
            log.append(encode_record(event))
        log.commit()


def run_store(log_dir, store_dir, *, worker: bool, until=None, **kw) -> str:
    log = EmbeddedLog(log_dir, writable=False)
    with StateStore(store_dir) as store:
        state, report = run_core(log, store, worker=worker, until=until, **kw)
        digest = compute_digest(state, report.projection.canonical_sections())
        close_projection(report.projection)
    return digest


def stored(store_dir) -> list:
    """Every key a run wrote, byte for byte; the record fingerprints by offset (their chunks follow the checkpoints)."""
    with StateStore(store_dir, read_only=True) as store:
        keys = [(key, value) for key, value in store._db.items() if not key.startswith(FINGERPRINTS)]
        return keys + list(store.fingerprints())


@contextmanager
def recording_workers():
    """Every ProjectionWorker started inside, in order."""
    workers = []
    original = ProjectionWorker.__init__

    def remember(self, *args):
        original(self, *args)
        workers.append(self)

    ProjectionWorker.__init__ = remember
    try:
        yield workers
    finally:
        ProjectionWorker.__init__ = original


def test_worker_and_in_process_store_the_same_on_a_demo_log(tmp_path):
    summary = run_demo(tmp_path / "demo", seed=4, traders=300, events=30_000)
    assert summary.commands > 100 and summary.adl_commands and summary.cancels  # liquidations, ADL, cancels
    log_dir = tmp_path / "demo" / "log"
    options = {"checkpoint_every": 7_000, "chain_every": 5_000}
    digests = {mode: run_store(log_dir, tmp_path / f"s-{mode}", worker=mode, **options) for mode in (False, True)}
    assert digests[False] == digests[True] == summary.digest
    assert stored(tmp_path / "s-False") == stored(tmp_path / "s-True")


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(300, 1500), split=st.floats(0.1, 0.9))
def test_worker_agrees_on_hostile_streams_and_across_a_resume(tmp_path_factory, seed, count, split):
    root = tmp_path_factory.mktemp("hostile")
    hostile_log(root / "log", seed, count)
    whole = run_store(root / "log", root / "in-process", worker=False, checkpoint_every=200)
    assert run_store(root / "log", root / "worker", worker=True, checkpoint_every=200) == whole
    # a store the worker started and the in-process projection finishes (and the other way round)
    middle = int(count * split)
    run_store(root / "log", root / "w-then-p", worker=True, until=middle)
    assert run_store(root / "log", root / "w-then-p", worker=False) == whole
    run_store(root / "log", root / "p-then-w", worker=False, until=middle)
    assert run_store(root / "log", root / "p-then-w", worker=True) == whole
    reference = stored(root / "in-process")
    for name in ("worker", "w-then-p", "p-then-w"):
        assert stored(root / name) == reference, name
    alerts = [key for key, _ in reference if isinstance(key, bytes) and key.startswith(b"a:")]
    assert alerts  # the jumps beyond the band paused and resumed liquidations


def test_a_worker_that_dies_stops_the_run_and_the_next_run_goes_on(tmp_path):
    run_demo(tmp_path / "demo", seed=4, traders=300, events=8_000)  # no refused answers: the worker runs throughout
    shutil.copytree(tmp_path / "demo" / "log", tmp_path / "log")
    expected = run_store(tmp_path / "log", tmp_path / "reference", worker=False)
    checkpoints = []

    def kill_the_worker(done, end):
        checkpoints.append(done)
        if len(checkpoints) == 2:
            os.kill(workers[0]._process.pid, signal.SIGKILL)

    log = EmbeddedLog(tmp_path / "log", writable=False)
    with recording_workers() as workers, StateStore(tmp_path / "store") as store:
        with pytest.raises(WorkerFailed, match="exit code -9"):
            run_core(log, store, worker=True, checkpoint_every=1_000, progress=kill_the_worker)
    with StateStore(tmp_path / "store", read_only=True) as store:
        kept = store.stored_offset()
    assert 0 < kept < 8_000  # the checkpoints before the kill stand, nothing after it was written
    assert run_store(tmp_path / "log", tmp_path / "store", worker=True) == expected


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return [int(child) for child in file.read().split()]


def exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited, init reaps it
    except FileNotFoundError:
        return True


def test_an_answer_the_worker_refuses_is_dead_lettered_as_in_process(tmp_path):
    """The parent applies answers as read; the child refuses a forged one; run goes on in process from the checkpoint."""
    run_demo(tmp_path / "demo", seed=4, traders=300, events=8_000)
    with EmbeddedLog(tmp_path / "demo" / "log", writable=False) as source, EmbeddedLog(tmp_path / "log") as log:
        for offset, payload in source.read(0):
            log.append(payload)
            if offset == 4_000:  # a forged answer for an open position, halfway
                key = sorted(open_positions(tmp_path / "demo" / "log", 4_000))[0]
                tick, lot, price, _ = MARKETS[key[1]]
                log.append(encode_record(m.LiquidationFill("forged", 0, "liq-00000000000000000000", *key, lot, price)))
        log.commit()
    expected = run_store(tmp_path / "log", tmp_path / "in-process", worker=False, checkpoint_every=1_000)
    log = EmbeddedLog(tmp_path / "log", writable=False)
    with recording_workers() as workers, StateStore(tmp_path / "worker") as store:
        state, report = run_core(log, store, worker=True, checkpoint_every=1_000)
        digest = compute_digest(state, report.projection.canonical_sections())
        close_projection(report.projection)
    assert report.worker_refused == 4_001 and len(workers) == 1  # refused: the rest of the run in process
    assert digest == expected
    assert stored(tmp_path / "worker") == stored(tmp_path / "in-process")
    with StateStore(tmp_path / "worker", read_only=True) as store:
        (letter,) = [json.loads(raw) for raw in store.deadletters() if b"forged" in raw]
    assert (letter["offset"], letter["reason"]) == (4_001, "unknown_command")


def open_positions(log_dir, until: int) -> set:
    from ringfence.replay.audit import replay

    return set(replay(EmbeddedLog(log_dir, writable=False), until).positions)


def test_cli_worker_output_equals_in_process_and_dies_with_its_parent(tmp_path, cli):
    hostile_log(tmp_path / "log", seed=8, count=3_000)
    outs = {}
    for flag in ("--worker", "--no-worker"):
        shutil.copytree(tmp_path / "log", tmp_path / flag / "log")
        outs[flag] = cli("run", flag, data=tmp_path / flag, check_rc=None)[1]
    assert outs["--worker"] == outs["--no-worker"]
    assert "commands this run" in outs["--worker"]

    # a parent killed with -9 leaves no worker behind: the child sees its stdin close
    run_demo(tmp_path / "big", seed=2, traders=500, events=60_000)
    shutil.rmtree(tmp_path / "big" / "state")
    env = {**os.environ, "RINGFENCE_DATA": str(tmp_path / "big")}
    parent = subprocess.Popen([sys.executable, "-m", "ringfence.ops.cli", "run", "--worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while not children(parent.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    (worker,) = children(parent.pid)
    parent.send_signal(signal.SIGKILL)
    assert parent.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while not exited(worker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert exited(worker)


def test_a_sync_asked_for_before_more_rows_covers_them_too(tmp_path):
    """request_sync, then more events fed: the sync that waits must answer for all of them."""
    run_demo(tmp_path / "demo", seed=11, traders=300, events=4_000)  # answers that fit (reduce_records has no fallback)
    log = EmbeddedLog(tmp_path / "demo" / "log", writable=False)
    decided = {}
    for mode in ("in process", "worker"):
        state = State()
        projection = LiquidationProjection() if mode == "in process" else ProjectionWorker(state, None, log.directory)
        outputs = []
        records = log.read(0)
        reduce_records(state, islice(records, 1_000), projection=projection,
                       on_outputs=lambda decisions, sequence: outputs.extend(decision_records(decisions, sequence)[0]))
        if mode == "worker":
            projection.request_sync()  # answered for the first 1,000 events only ...
        reduce_records(state, records, projection=projection,
                       on_outputs=lambda decisions, sequence: outputs.extend(decision_records(decisions, sequence)[0]))
        if mode == "worker":
            outputs = projection.take_outputs()[0]  # ... so this must ask again for the rest
            sections = projection.canonical_sections()
            close_projection(projection)
        else:
            sections = projection.sections()
        decided[mode] = (outputs, msgspec.msgpack.encode(sections))
    assert decided["in process"][0]  # commands and alerts to agree on
    assert decided["worker"] == decided["in process"]
