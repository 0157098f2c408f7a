"""Audit replay: rebuild the state from offset 0 in memory, touching no store."""

from ringfence.core.digest import compute_digest
from ringfence.core.state import State
from ringfence.projections.runner import reduce_records


def replay(log, until: int | None = None) -> State:
    """The state after every record of ``log`` up to ``until`` (inclusive; None = the end)."""
    state = State()
    reduce_records(state, log.read(0), until=until)
    return state


def replay_digest(log, until: int | None = None) -> tuple[int, str]:
    state = replay(log, until)
    return state.offset, compute_digest(state)
