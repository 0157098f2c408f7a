"""Test projections: one that fails at an offset named in the environment, one that is not a Projection."""

import os

import msgspec

from ringfence.projections.sdk import Projection, event_type


class Tally(Projection):
    """Counts events by type and sums fill quantities, per account: enough state to tell two runs apart."""

    class State(msgspec.Struct):
        types: dict[str, int] = {}
        bought: dict[str, int] = {}
        first: int = -1
        last: int = -1

    def apply(self, event, view):
        if str(view.offset) == os.environ.get("FAIL_AT"):
            raise RuntimeError("boom")
        kind = event_type(event)
        self.state.types[kind] = self.state.types.get(kind, 0) + 1
        if kind == "fill" and view.applied:
            signed = event.qty if event.side == "buy" else -event.qty
            self.state.bought[event.account] = self.state.bought.get(event.account, 0) + signed
        if self.state.first < 0:
            self.state.first = view.offset
        self.state.last = view.offset


class NotAProjection:
    pass


class Deposits(Projection):
    """Applied deposits minus withdrawals per account and asset (a reference for the analytics tests)."""

    class State(msgspec.Struct):
        net: dict[str, int] = {}

    def apply(self, event, view):
        kind = event_type(event)
        if kind in ("deposit", "withdrawal") and view.applied:
            key = f"{event.account} {event.asset}"
            self.state.net[key] = self.state.net.get(key, 0) + (event.amount if kind == "deposit" else -event.amount)

    def rows(self):
        return [{"key": key, "net": net} for key, net in sorted(self.state.net.items())]
