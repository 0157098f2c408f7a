"""Named crash points: deterministic kill -9 for crash tests (TigerBeetle's VOPR is the model).

A test arms one point with ``RINGFENCE_CRASH_AT=<name>[:<n>]`` in the
environment of the process it starts; the process then dies with
``os._exit(CRASH_EXIT_CODE)`` (no cleanup, no flush: as kill -9 would) the
n-th time (default 1) it passes ``crash_point(name)``. Unarmed, a crash point
costs one comparison. The points and where they sit:

    checkpoint.before_write run: a checkpoint batch staged, not written
    checkpoint.after_write  run: a checkpoint batch written, the outbox not yet published
    snapshot.before         run: at a chain link, checkpointed, its snapshot not yet taken
    outbox.appended         the outbox: one more record appended to a sink, not committed
    outbox.before_mark      the outbox: a sink committed, its published mark not yet moved
    worker.sync             the projection worker's child, about to answer a sync
    ingest.appended         ingest: one more record appended (buffered), not committed
    ingest.before_commit    ingest: a batch appended, the log not yet committed
    ingest.committed        ingest: the log committed (fsynced), its progress not yet saved
    ingest.progress_staged  ingest: the progress file's replacement written and fsynced, not yet renamed
    ingest.progress_saved   ingest: the progress saved (first: the intent, before any append)

tests/integration/test_crash_points.py runs every point of `run` (RUN_POINTS)
under seeds that pick n; tests/integration/test_ingest_exactly_once.py those
of `ingest` (INGEST_POINTS).
"""

import os
import sys

ENV = "RINGFENCE_CRASH_AT"
CRASH_EXIT_CODE = 86  # tells a test the process died at its armed point, not of something else

RUN_POINTS = ("checkpoint.before_write", "checkpoint.after_write", "snapshot.before", "outbox.appended",
              "outbox.before_mark", "worker.sync")  # fmt: skip
INGEST_POINTS = ("ingest.appended", "ingest.before_commit", "ingest.committed", "ingest.progress_staged",
                 "ingest.progress_saved")  # fmt: skip
POINTS = RUN_POINTS + INGEST_POINTS


def _armed() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS or (count and not count.isdigit()) or count == "0":
        raise SystemExit(f"ringfence: {ENV}={spec!r}: expected one of {', '.join(POINTS)}, optionally :N with N >= 1")
    return name, int(count or 1)


_ARMED = _armed()
_passes = 0


def crash_point(name: str) -> None:
    """Die here if this is the armed point's n-th pass."""
    global _passes
    if _ARMED is None or _ARMED[0] != name:
        return
    _passes += 1
    if _passes == _ARMED[1]:
        sys.stderr.write(f"ringfence: crash point {name}:{_passes} reached\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
