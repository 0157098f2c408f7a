"""Audit replay: rebuild the state from offset 0 in memory, touching no store."""

from ringfence.core.digest import compute_digest
from ringfence.core.state import State
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.runner import reduce_records


def replay(log, until: int | None = None) -> State:
    """The core state after every record of ``log`` up to ``until`` (inclusive; None = the end).

    With the liquidation projection: whether a liquidation or ADL fill applies
    depends on the commands it issued (an answer to none is a dead letter).
    """
    return replay_with_liquidations(log, until)[0]


def replay_with_liquidations(log, until: int | None = None,
                             projection: LiquidationProjection | None = None) -> tuple[State, LiquidationProjection, list]:
    """Core state, liquidation projection and every command and alert, as `run` makes them.

    ``projection``: a fresh one set up as one partition of several (ops.fund_board.BoardCoordinator).
    """
    state, projection, decisions = State(), projection or LiquidationProjection(), []
    reduce_records(state, log.read(0), until=until, projection=projection, decode=log.decode,
                   on_outputs=lambda outputs, _: decisions.extend(outputs))  # fmt: skip
    return state, projection, decisions


def replay_digest(log, until: int | None = None, projection: LiquidationProjection | None = None) -> tuple[int, str]:
    """``OFFSET DIGEST`` of core and projection, as `ringfence digest` prints after `run`."""
    state, projection, _ = replay_with_liquidations(log, until, projection)
    return state.offset, compute_digest(state, projection.canonical_sections())
