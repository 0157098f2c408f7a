"""One session as k partitions in one process, with the fund stage between them: what `serve` does over Kafka.

Each event goes where `ringfence publish` sends it (ops.partitioning): an
account's events to its partition, marks, funding and market configs to
every partition, in the session's order. Each partition has its own state,
reducer and liquidation projection; at each barrier (an applied mark,
funding or market event) every partition reports and the fund stage decides
(projections.fund_stage), then every partition applies the decisions. The
order the reports are taken in is a parameter (``report_order``): the
decisions must not depend on it, nor on k (tests/property/test_fund_stage.py).

Used by the tests and by `ringfence replay --partitions K`, which shows an
auditor that the session's answers do not depend on the partition count.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from ringfence.core import model as m
from ringfence.core.check import InvariantError
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.projections import fund_stage
from ringfence.projections.liquidation import LiquidationProjection
from ringfence.projections.outputs import Alert

BROADCAST = (m.MarketConfig, m.MarkPrice, m.Funding)


@dataclass
class Partition:
    number: int
    state: State = field(default_factory=State)
    projection: LiquidationProjection | None = None
    outputs: list = field(default_factory=list)  # (offset, output) in this partition's order
    verdicts: list = field(default_factory=list)  # (offset, event id, verdict)


def run_partitioned(events: Iterable, partitions: int, split: Callable[[str], int],
                    report_order: Callable[[list], list] | None = None,
                    targets: Iterable | None = None) -> list[Partition]:  # fmt: skip
    """Reduce and project ``events`` (domain events or InvalidInput) on ``partitions`` partitions.

    ``split(account)`` is an account's partition (`publish`'s: ops.partitioning.account_partition).
    ``targets``: the partitions of each event, as `publish` routed its line (ops.partitioning.route); by
    default an account's events go to ``split(account)``, market-wide ones everywhere, the rest to 0.
    """
    parts = [Partition(p) for p in range(partitions)]
    for part in parts:
        part.projection = LiquidationProjection(lambda account, p=part.number: split(account) == p, part.number)
        part.projection.open_elsewhere = _open_elsewhere(parts, part.number)
    for event, where in zip(events, targets if targets is not None else _targets(split, partitions)):
        if type(event) in BROADCAST:
            applied = [_apply(part, event) for part in parts]
            if len(set(applied)) != 1:
                raise InvariantError(f"partitions disagree on the broadcast event {event.id!r}: {applied}")
            if applied[0]:
                _barrier(parts, report_order)
            continue
        for p in where(event) if callable(where) else where:
            _apply(parts[p], event)
    return parts


def _targets(split, partitions: int):
    def where(event):
        account = getattr(event, "account", None)
        return (split(account) if isinstance(account, str) else 0,)

    while True:
        yield where


def run_embedded(events: Iterable) -> list[Partition]:
    """The same events on the embedded path: one partition, the fund stage in process (what `run` does)."""
    part = Partition(0, projection=LiquidationProjection())
    for event in events:
        _apply(part, event)
    return [part]


def _open_elsewhere(parts: list[Partition], number: int):
    return lambda event: sum(len(p.state.by_market.get(event.market, ())) for p in parts if p.number != number)


def _apply(part: Partition, event) -> bool:
    state, projection = part.state, part.projection
    offset = state.offset + 1
    verdict = apply_event(state, offset, event, projection.check_answer)
    part.verdicts.append((offset, getattr(event, "id", None), verdict))
    part.outputs.extend((offset, output) for output in projection.after_event(state, offset, event, verdict is None))
    return verdict is None


def _barrier(parts: list[Partition], report_order) -> None:
    pending = [part.projection.pending for part in parts]
    if any(p is None for p in pending):
        raise InvariantError("a partition did not report at a barrier")
    reports = [report for report, _ in pending]
    fund_stage.check_reports(reports, len(parts))
    ordered = report_order(reports) if report_order is not None else reports

    # as over Kafka: each partition sends only the prefix of its ranking the barrier may need (phase 2)
    barrier, wanted = fund_stage.barrier_demand(reports)
    prefixes = [fund_stage.own_prefixes(part.projection, part.state, barrier, wanted) for part in parts] if wanted else []
    decisions = fund_stage.decide_with_prefixes(ordered, report_order(prefixes) if report_order else prefixes)
    for part, (_, trigger) in zip(parts, pending):
        part.projection.pending = None
        outputs: list = []
        part.projection.apply(part.state, decisions, trigger, outputs)
        part.outputs.extend((trigger.offset, output) for output in outputs)


# where a partition's log put the trigger: not part of the answer
PER_PARTITION_FIELDS = frozenset({"trigger_offset", "offset"})


def _answer(output) -> tuple:
    fields = msgspec.structs.asdict(output)
    return (type(output).__name__, *sorted((k, v) for k, v in fields.items() if k not in PER_PARTITION_FIELDS))


def outcome(parts: list[Partition]) -> dict:
    """What must not depend on the partitioning: every command and cancel, alerts (one per id: every partition
    sees a mark jump), positions, wallets, fund balances, the verdict on every event id, and the fund stage's chain."""
    verdicts: dict = {}
    for part in parts:
        for _, event_id, verdict in part.verdicts:
            verdicts.setdefault(event_id, set()).add(None if verdict is None else (verdict.kind, verdict.reason))
    funds: dict = {}
    for part in parts:
        for domain, balance in part.state.insurance.items():
            funds[domain] = funds.get(domain, 0) + balance
    return {
        "commands": sorted((_answer(o) for part in parts for _, o in part.outputs if type(o) is not Alert), key=repr),
        "alerts": sorted({_answer(o) for part in parts for _, o in part.outputs if type(o) is Alert}, key=repr),
        "positions": sorted((k, p.size, p.cost, p.margin, p.shortfall) for part in parts
                            for k, p in part.state.positions.items()),  # fmt: skip
        "wallets": sorted((k, w.balance) for part in parts for k, w in part.state.wallets.items() if w.balance),
        "funds": sorted((domain, balance) for domain, balance in funds.items() if balance),
        "verdicts": verdicts,
        # every partition's record of the fund stage: one (decisions, chain head) for all, the embedded one's
        "fund stage": sorted({(part.projection.stage_decisions, part.projection.stage_digest) for part in parts}),
    }


def differences(one: dict, other: dict) -> list[str]:
    """The names of the parts of two outcomes that differ, with a first example of each."""
    found = []
    for name in one:
        if one[name] == other[name]:
            continue
        if name == "verdicts":
            event_id = next(e for e in sorted(one[name].keys() | other[name].keys(), key=str)
                            if one[name].get(e) != other[name].get(e))  # fmt: skip
            found.append(f"verdicts (event {event_id!r}: {one[name].get(event_id)} vs {other[name].get(event_id)})")
        else:
            extra = [x for x in other[name] if x not in one[name]] or [x for x in one[name] if x not in other[name]]
            found.append(f"{name} ({len(one[name])} vs {len(other[name])}, e.g. {str(extra[:1])[:200]})")
    return found
