"""The projection SDK: write a read model over the event history in a dozen lines.

A projection is a class with its own msgspec state and an ``apply(event,
view)``::

    import msgspec
    from ringfence.projections.sdk import Projection

    class FeesPerAccount(Projection):
        class State(msgspec.Struct):
            fees: dict[str, int] = {}

        def apply(self, event, view):
            if event_type(event) == "fill" and view.applied:
                self.state.fees[event.account] = self.state.fees.get(event.account, 0) + event.fee

        def rows(self):
            return [{"account": a, "fees": units(f)} for a, f in sorted(self.state.fees.items())]

Run it with ``ringfence project mymodule:FeesPerAccount``. ``event`` is the
domain event (``ringfence.core.model``: amounts, prices and quantities are
ints in units of 1e-8, cost bases in 1e-16); ``view`` is a read-only view of
the core's state *after* the event (``View`` below). ``self.state`` is
checkpointed with the offset in the projection's own store and restored on
restart, so it must hold only what msgspec encodes (ints, str, lists, dicts,
structs); ``rows()`` is what `ringfence project` prints at the end.

Determinism rules (DESIGN.md §2) apply: no clock, no randomness, no floats
in the state; the same log gives the same projection state.
"""

from collections.abc import Iterator

import msgspec

from ringfence.core import margin as mm
from ringfence.core.fixed import format_decimal
from ringfence.core.state import PositionKey, State


def units(value: int) -> str:
    """An amount in 1e-8 units as a decimal string (exact, trailing zeros trimmed)."""
    return format_decimal(value)


def event_type(event) -> str:
    """The wire type of a domain event ("fill", "mark", ...; "invalid" for a dead letter)."""
    config = getattr(event, "__struct_config__", None)
    return config.tag if config is not None and config.tag is not None else "invalid"


class PositionFigures(msgspec.Struct, frozen=True):
    """One isolated position as the view shows it (ints in the core's units; 0 where there is no mark)."""

    account: str
    market: str
    position_side: str
    size: int  # signed, 1e-8
    entry_price: int  # 1e-8
    isolated_margin: int  # 1e-8
    mark_price: int  # 1e-8, 0 before the market's first mark
    unrealized_pnl: int  # 1e-8, rounded down
    maintenance_margin: int  # 1e-8, rounded up
    liquidation_price: tuple[int, int] | None  # exact fraction (numerator, denominator) in 1e-8 price units


class View:
    """A read-only window on the core's state after the event at ``offset``.

    It hands out values and frozen copies, never the core's own objects, so
    a projection cannot change the core's state through it.
    """

    __slots__ = ("_state", "offset", "applied", "reason", "decisions")

    def __init__(self, state: State) -> None:
        self._state = state
        self.offset = -1
        self.applied = False  # False: the core refused the event (reason says why)
        self.reason: str | None = None
        self.decisions: tuple = ()  # liquidation / ADL commands and alerts this event caused

    def position(self, account: str, market: str, position_side: str = "BOTH") -> PositionFigures | None:
        key = (account, market, position_side)
        position = self._state.positions.get(key)
        if position is None:
            return None
        return self._figures(key, position)

    def positions(self, market: str | None = None) -> Iterator[PositionFigures]:
        """Every open position (of one market), in key order."""
        for key in sorted(self._state.positions):
            if market is None or key[1] == market:
                yield self._figures(key, self._state.positions[key])

    def wallet(self, account: str, asset: str) -> int:
        wallet = self._state.wallets.get((account, asset))
        return 0 if wallet is None else wallet.balance

    def auto_margin_added(self) -> list[tuple[str, str, str, int]]:
        """At an applied mark: the (account, market, position_side, amount) auto-add margin moved from wallets."""
        return [(*key, amount) for key, amount in self._state.top_ups]

    def mark(self, market: str) -> int:
        state = self._state.markets.get(market)
        return 0 if state is None else state.mark

    def markets(self) -> list[str]:
        return sorted(self._state.markets)

    def settle_asset(self, market: str) -> str:
        return self._state.markets[market].config.settle

    def fund_domain(self, market: str) -> str:
        """The insurance fund the market belongs to (its settle asset's, unless the market names one)."""
        return self._state.markets[market].fund

    def insurance_fund(self, domain: str) -> int:
        """The balance of an insurance-fund domain (a settle asset's name for the default ones)."""
        return self._state.insurance.get(domain, 0)

    def _figures(self, key: PositionKey, position) -> PositionFigures:
        market = self._state.markets[key[1]]
        brackets, mark, size, cost, margin = market.config.brackets, market.mark, position.size, position.cost, position.margin
        solved = mm.liquidation_price_fraction(brackets, size, cost, margin)  # (numerator, denominator, bracket)
        return PositionFigures(
            *key, size, mm.entry_price_units(size, cost), margin, mark,
            mm.unrealized_pnl_units(size, cost, mark) if mark else 0,
            mm.maintenance_margin_units(brackets, size, mark) if mark else 0,
            None if solved is None else solved[:2],
        )  # fmt: skip


class Projection:
    """Base class of a projection: set ``State`` (a msgspec.Struct) and write ``apply``."""

    State: type = msgspec.Struct
    name: str | None = None  # its store's directory name; default: the class name

    def __init__(self) -> None:
        self.state = self.State()

    @classmethod
    def store_name(cls) -> str:
        return cls.name or cls.__name__

    def apply(self, event, view: View) -> None:
        raise NotImplementedError

    def rows(self) -> list[dict]:
        """What `ringfence project` prints when the run ends (default: the state as one row)."""
        return [msgspec.to_builtins(self.state)]
