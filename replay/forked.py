"""Run a projection (projections.sdk) over the history, with its own checkpoint store.

1. Open the projection's store (RocksDB, its own directory). With a
   checkpoint there, resume after its offset with its state; else start
   observing at ``start_from``.
2. Rebuild the core's state at the offset before that point in memory, from
   the nearest core snapshot (opened read-only) or from offset 0: the core's
   store is never written.
3. Reduce the log from there with the liquidation projection (so the view
   shows its decisions) and call ``apply(event, view)`` for every event from
   ``start_from`` on.
4. Every ``checkpoint_every`` events, and at the end, write the projection's
   state (JSON: ints of any size) and the offset in one synced batch. A
   failure inside ``apply`` stops the run before the next checkpoint, so a
   restart replays those events again: nothing is half-applied.
"""

import importlib
import os
import shutil
import sys
from itertools import islice
from pathlib import Path

import msgspec
from rocksdict import Rdict, WriteBatch, WriteOptions

from ringfence.core.state import State
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.runner import reduce_records
from ringfence.projections.sdk import Projection, View
from ringfence.projections.store import open_read_only, store_options
from ringfence.replay.point_in_time import state_at

META_OFFSET = b"meta:offset"
META_FROM = b"meta:from"
META_CLASS = b"meta:class"
STATE = b"state"
# the file that makes a directory a projection store: written first when one is created; --restart deletes nothing else
STORE_MARKER = "RINGFENCE-PROJECTION-STORE"


class ProjectionError(Exception):
    """The projection cannot be loaded or does not belong to this store."""


class ProjectionFailed(Exception):
    """The projection's own code raised on an event; its last checkpoint is intact."""


def load_class(spec: str) -> type[Projection]:
    """``module:Class`` -> the class (the current directory is importable, as with `python -m`)."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ProjectionError(f"{spec!r} is not MODULE:CLASS")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ProjectionError(f"cannot import {module_name}: {error}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Projection)):
        raise ProjectionError(f"{spec} is not a subclass of ringfence.projections.sdk.Projection")
    return cls


def _not_a_store(path: Path) -> ProjectionError:
    return ProjectionError(f"{path} is not a projection store (it has no {STORE_MARKER} file); nothing was deleted "
                           "or written")  # fmt: skip


def _older_store(path: Path) -> bool:
    """A store from before the marker: a RocksDB whose meta:class names a projection (opened read-only)."""
    if not (path / "CURRENT").is_file():
        return False
    try:
        db, shadow = open_read_only(path, store_options())
    except Exception:  # not a RocksDB
        return False
    try:
        return db.get(META_CLASS) is not None
    finally:
        db.close()
        shutil.rmtree(shadow, ignore_errors=True)


def claim_store(path: Path) -> None:
    """Make sure ``path`` is a projection store: marked, or new or empty (marked now), or an older one (marked now)."""
    marker = path / STORE_MARKER
    if marker.is_file():
        return
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or _older_store(path))):
        raise _not_a_store(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(marker, "w") as file:  # durable before RocksDB writes a file beside it
        file.write("ringfence projection store: `ringfence project --restart` may delete this directory\n")
        file.flush()
        os.fsync(file.fileno())
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_store(path: Path) -> None:
    """``--restart``: delete the store, which must carry the marker (any other directory is refused, untouched)."""
    if not path.exists():
        return
    if not (path / STORE_MARKER).is_file():
        raise _not_a_store(path)
    shutil.rmtree(path)


class ProjectionStore:
    def __init__(self, path: Path, spec: str):
        claim_store(path)
        options = store_options()
        options.create_if_missing(True)
        self._db = Rdict(str(path), options)
        self._sync = WriteOptions()
        self._sync.sync = True
        owner = self._db.get(META_CLASS)
        if owner is not None and owner.decode() != spec:
            self._db.close()
            raise ProjectionError(f"{path} holds the checkpoint of {owner.decode()}, not {spec}")
        self.spec = spec

    def load(self, cls: type[Projection]) -> tuple[int, int, object] | None:
        """(offset, start, state) of the last checkpoint, or None."""
        raw = self._db.get(STATE)
        if raw is None:
            return None
        state = msgspec.json.decode(raw, type=cls.State)
        return int(self._db[META_OFFSET]), int(self._db[META_FROM]), state

    def save(self, offset: int, start: int, state) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.put(META_CLASS, self.spec.encode())
        batch.put(META_FROM, str(start).encode())
        batch.put(META_OFFSET, str(offset).encode())
        batch.put(STATE, msgspec.json.encode(state))
        self._db.write(batch, self._sync)

    def close(self) -> None:
        self._db.close()


def run_projection(spec: str, log, store_path: Path, core_store: Path, *, start_from: int = 0,
                   checkpoint_every: int = 50_000, progress=None) -> tuple[Projection, int, int]:  # fmt: skip
    """Run ``spec`` over ``log``; return (projection, its offset, events it saw in this run)."""
    cls = load_class(spec)
    projection = cls()
    store = ProjectionStore(store_path, spec)
    try:
        checkpoint = store.load(cls)
        if checkpoint is not None:
            offset, start_from, projection.state = checkpoint
        else:
            offset = start_from - 1
        if offset >= 0:
            point = state_at(log, core_store, offset)
            state, liquidation = point.state, point.projection
        else:
            state, liquidation = State(), LiquidationProjection()
        view = View(state)
        seen = 0

        def step(at: int, event, verdict, decisions) -> None:
            nonlocal seen
            if at < start_from:
                return
            view.offset, view.applied, view.decisions = at, verdict is None, tuple(decisions)
            view.reason = None if verdict is None else verdict.reason
            try:
                projection.apply(event, view)
            except Exception as error:
                raise ProjectionFailed(f"{spec} failed at offset {at}: {type(error).__name__}: {error}") from error
            seen += 1

        records = log.read(state.offset + 1)
        while reduce_records(state, islice(records, checkpoint_every), projection=liquidation, decode=log.decode,
                             on_step=step):  # fmt: skip
            store.save(state.offset, start_from, projection.state)
            if progress is not None:
                progress(state.offset + 1, 0)
        return projection, state.offset, seen
    finally:
        store.close()
