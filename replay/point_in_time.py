"""The state at a past offset or time, rebuilt beside the live store without touching it.

1. Pick the nearest starting point at or before the target offset: the
   newest snapshot (``snapshots/<offset>``, kept at every chain link), or the
   live store itself when its checkpoint is not past the target; both are
   opened read-only. Without one, start from an empty state at offset 0.
2. Replay the log from there up to the target, in memory.

A time is turned into an offset first: the state "at time TS" is the state
after the longest log prefix whose events are all stamped at or before TS
(the log is in offset order; an event stamped after TS ends the prefix).
"""

from dataclasses import dataclass
from pathlib import Path

from ringfence.core.model import InvalidInput
from ringfence.core.state import State
from ringfence.projections.chain import DigestChain
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.runner import reduce_records
from ringfence.projections.store import StateStore, snapshot_offsets, snapshot_path, snapshots_dir


class BeyondLog(Exception):
    """The target is past the end of the log."""


@dataclass
class PointInTime:
    state: State
    projection: LiquidationProjection
    source: str  # "snapshot <offset>", "store" or "empty"
    replayed: int  # events replayed after the starting point


def starting_points(store_path: Path) -> list[tuple[int, Path, str]]:
    """(offset, path, name) of every starting point: the snapshots and the live store."""
    directory = snapshots_dir(store_path)
    points = [(offset, snapshot_path(directory, offset), f"snapshot {offset}") for offset in snapshot_offsets(directory)]
    if (store_path / "CURRENT").exists():
        with StateStore(store_path, read_only=True) as store:
            points.append((store.stored_offset(), store_path, "store"))
    return sorted(points)


def nearest_snapshot(store_path: Path, offset: int) -> Path | None:
    """The newest snapshot at or before ``offset``, or None."""
    directory = snapshots_dir(store_path)
    offsets = [at for at in snapshot_offsets(directory) if at <= offset]
    return snapshot_path(directory, offsets[-1]) if offsets else None


def load_point(path: Path) -> tuple[State, LiquidationProjection, DigestChain]:
    with StateStore(path, read_only=True) as store:
        state = store.load()
        return state, store.load_projection(state), store.load_chain()


def state_at(log, store_path: Path, offset: int, *, use_checkpoints: bool = True) -> PointInTime:
    """The core state and projection after the record at ``offset``."""
    candidates = [p for p in starting_points(store_path) if p[0] <= offset] if use_checkpoints else []
    if candidates:
        start, path, source = candidates[-1]
        state, projection, _ = load_point(path)
    else:
        start, source = -1, "empty"
        state, projection = State(), LiquidationProjection()
    replayed = reduce_records(state, log.read(start + 1), until=offset, projection=projection, decode=log.decode)
    if state.offset < offset:
        raise BeyondLog(f"the log ends at offset {state.offset}, before {offset}")
    return PointInTime(state, projection, source, replayed)


def offset_at_time(log, ts: int) -> int:
    """The last offset of the longest prefix stamped at or before ``ts`` (-1: none)."""
    last = -1
    for offset, payload in log.read(0):
        event = log.decode(payload)  # an undecodable record (InvalidInput) has no time
        if type(event) is not InvalidInput and event.ts > ts:
            break
        last = offset
    return last
