"""A projection in a dozen lines: fees paid per account (see projections/sdk.py).

    ringfence project examples.fees:FeesPerAccount
"""

import msgspec

from ringfence.projections.sdk import Projection, event_type, units


class FeesPerAccount(Projection):
    class State(msgspec.Struct):
        fees: dict[str, int] = {}
        fills: dict[str, int] = {}

    def apply(self, event, view):
        if event_type(event) == "fill" and view.applied:
            self.state.fees[event.account] = self.state.fees.get(event.account, 0) + event.fee
            self.state.fills[event.account] = self.state.fills.get(event.account, 0) + 1

    def rows(self):
        return [{"account": a, "fills": self.state.fills[a], "fees": units(f)} for a, f in sorted(self.state.fees.items())]
