"""The fund stage: at each barrier, one decision on what the insurance funds cover and what ADL closes.

A *barrier* is an applied mark, funding or market event: every partition of
the events topic holds the same ones in the same order (partitioning.py), so
each partition's state at a barrier is the same whatever the partition count.
Between barriers a partition decides only what depends on its own positions
(liquidate commands of positions that are not bankrupt). What depends on
other accounts or on a fund waits for the barrier:

- a bankrupt position (margin balance below zero at the mark) that needs
  commands *awaits* the barrier: how much of it the fund can take, and who
  deleverages the rest, is decided here;
- an ADL command's legs may be in two partitions: a leg that stops fitting
  its position between barriers is *cut* there (episodes.EpisodeBook.cut),
  and the whole command is cancelled here, in every partition at once.

Every partition sends a ``Report`` per barrier: its contribution to each
fund (its reducer's ``insurance``), its cut legs, and its bankrupt positions
(``Need``). ``decide`` turns the reports of one barrier into ``Decisions``:
it depends only on their contents, never on their order or on which
partition a position is in (reports are merged and needs taken in position
key order, ADL candidates merged by their exact rank), so the same log gives
the same decisions on 1, 2 or k partitions and on the embedded log, which is
one partition with this very stage in process. docs/decisions.md ("The fund
stage") has the argument.

The stage needs no state of its own between barriers: a fund's balance is
the sum of the partitions' contributions, and everything else it needs is in
the reports. What it decided is its own record all the same: every partition
chains the barriers' decisions (``stage_link``: the barrier's number, the
domains' balances it saw, its cancels and issues), so the chain head is the
same on every partition and on the embedded log, stored and digested with
each partition's projection, and ``ringfence digest --fund-stage`` prints it.
"""

import hashlib
import heapq
from collections.abc import Callable, Iterable

import msgspec

from ringfence.core.check import InvariantError
from ringfence.core.fixed import mul_div_ceil
from ringfence.core.state import PositionKey
from ringfence.projections import adl
from ringfence.projections.episodes import ADL, LIQUIDATE, POSITION_LEG
from ringfence.projections.outputs import output_id


class CutLeg(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An ADL command leg cut since the last barrier; the names are those its cancel record needs."""

    command_id: str
    leg: int  # episodes.POSITION_LEG / TARGET_LEG
    reason: str  # outputs.CANCEL_REASONS
    market: str
    bankrupt_account: str
    bankrupt_side: str
    target_account: str
    target_side: str


class Need(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A bankrupt, liquidatable position at the barrier, and what already closes it."""

    key: PositionKey
    fund: str  # its market's insurance-fund domain
    size: int  # |size|
    committed: int  # open qty of its liquidate commands
    adl_legs: tuple[tuple[str, int], ...]  # (command id, open qty) of the ADL legs closing it (either side)
    loss: int  # -B > 0: what closing all of it near the mark is expected to cost its fund
    closing_side: str
    bankruptcy_price: int
    lot: int


class Candidate(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A position in profit that may deleverage a bankrupt one: its rank inputs and what is reserved of it."""

    key: PositionKey
    size: int  # signed
    cost: int
    margin: int
    mark: int
    reserved: tuple[tuple[str, int], ...]  # (command id, open qty) of ADL target legs against it


class Report(msgspec.Struct, array_like=True, frozen=True, gc=False):
    partition: int
    barrier_id: str  # the barrier event's producer id
    barrier_ts: int
    funds: tuple[tuple[str, int], ...]  # (domain, this partition's contribution), by domain
    cut: tuple[CutLeg, ...]
    needs: tuple[Need, ...]


class Cancel(msgspec.Struct, array_like=True, frozen=True, gc=False):
    command_id: str
    reason: str
    leg: CutLeg  # the leg whose reason it is (a position leg's before a target leg's)


class Issue(msgspec.Struct, array_like=True, frozen=True, gc=False):
    command_id: str
    kind: int  # episodes.LIQUIDATE / ADL
    key: PositionKey  # the bankrupt position
    closing_side: str
    qty: int
    price: int  # the bankruptcy price (ADL executes at it)
    target: PositionKey | None = None


class Decisions(msgspec.Struct, array_like=True, frozen=True, gc=False):
    cancels: tuple[Cancel, ...] = ()
    issues: tuple[Issue, ...] = ()
    funds: tuple[tuple[str, int], ...] = ()  # (domain, balance: every partition's contribution), by domain

    def empty(self) -> bool:
        return not self.cancels and not self.issues


NO_DECISIONS = Decisions()

STAGE_CHAIN_VERSION = "ringfence-fund-stage-v1"
STAGE_GENESIS = "0" * 64  # the chain head before any decision
_encode_decisions = msgspec.json.Encoder().encode  # JSON: a balance sum is not bounded by 64 bits


def stage_link(previous: str, barrier: int, decisions: Decisions) -> str:
    """The fund stage's chain head after barrier number ``barrier`` decided ``decisions`` (not empty)."""
    hasher = hashlib.blake2b(f"{STAGE_CHAIN_VERSION}\n{previous}\n{barrier}\n".encode(), digest_size=32)
    hasher.update(_encode_decisions(decisions))
    return hasher.hexdigest()

# candidates(market, long) -> one iterable per partition, each in that partition's exact ADL rank order
CandidateSource = Callable[[str, bool], list[Iterable[Candidate]]]




class _Ranking:
    """The merged ranking of one market side, pulled as far as the barrier needs; ``start`` skips what is used up."""

    def __init__(self, sources: list[Iterable[Candidate]]) -> None:
        self._merged = heapq.merge(*sources, key=adl.rank_key)
        self.pulled: list[Candidate] = []
        self.start = 0

    def at(self, index: int) -> Candidate | None:
        while index >= len(self.pulled):
            candidate = next(self._merged, None)
            if candidate is None:
                return None
            self.pulled.append(candidate)
        return self.pulled[index]


def check_reports(reports: list[Report], partitions: int) -> None:
    """One report per partition 0..partitions-1, all of the same barrier (else InvariantError: a bug, not input)."""
    seen = sorted(report.partition for report in reports)
    if seen != list(range(partitions)):
        raise InvariantError(f"the fund stage needs one report from each of partitions 0..{partitions - 1}, got {seen}")
    barriers = {(report.barrier_id, report.barrier_ts) for report in reports}
    if len(barriers) != 1:
        raise InvariantError(f"reports of different barriers: {sorted(barriers)}")


class Plan(msgspec.Struct, gc=False):
    """What one barrier's reports decide before any ADL candidate is looked at."""

    barrier_id: str
    barrier_ts: int
    cut: dict  # command id -> {leg: CutLeg}
    cancels: list
    funds: tuple  # (domain, balance), by domain
    needs: list  # (need, open qty, qty its fund covers), in position key order
    bankrupt: set  # the needs' keys: never ADL counterparties (one in profit with a negative margin could be)


def plan(reports: list[Report]) -> Plan:
    """Cancels, and each bankrupt position's open quantity and fund cover, from the reports of one barrier."""
    cut: dict[str, dict[int, CutLeg]] = {}
    for report in reports:
        for leg in report.cut:
            cut.setdefault(leg.command_id, {})[leg.leg] = leg
    cancels = []
    for command_id in sorted(cut):
        legs = cut[command_id]
        leg = legs.get(POSITION_LEG) or next(iter(legs.values()))  # the bankrupt side's reason first
        cancels.append(Cancel(command_id, leg.reason, leg))
    funds: dict[str, int] = {}
    for report in reports:
        for domain, balance in report.funds:
            funds[domain] = funds.get(domain, 0) + balance
    available = {domain: max(0, balance) for domain, balance in funds.items()}
    needs = []
    for need in sorted((need for report in reports for need in report.needs), key=lambda need: need.key):
        open_qty = need.size - need.committed - sum(qty for command_id, qty in need.adl_legs if command_id not in cut)
        if open_qty <= 0:
            continue
        fund = available.get(need.fund, 0)
        # the share of the position whose expected loss the fund can still take, in lots
        coverable = min(open_qty, fund * need.size // need.loss // need.lot * need.lot)
        available[need.fund] = fund - mul_div_ceil(need.loss, coverable, need.size)
        needs.append((need, open_qty, coverable))
    return Plan(reports[0].barrier_id, reports[0].barrier_ts, cut, cancels,
                tuple(sorted((domain, balance) for domain, balance in funds.items() if balance)), needs,
                {need.key for report in reports for need in report.needs})  # fmt: skip


def _side(need: Need) -> tuple[str, bool]:
    """The market and side (long?) that deleverages a need: a short bankrupt is closed by longs."""
    return need.key[1], need.closing_side == "buy"


def demand(barrier: Plan) -> dict[tuple[str, bool], int]:
    """How much each market side must deleverage at this barrier, before any candidate is known (for phase 2)."""
    wanted: dict[tuple[str, bool], int] = {}
    for need, open_qty, coverable in barrier.needs:
        if open_qty > coverable:
            wanted[_side(need)] = wanted.get(_side(need), 0) + open_qty - coverable
    return wanted


def candidate_prefix(candidates: Iterable[Candidate], wanted: int, barrier: Plan) -> list[Candidate]:
    """A partition's candidates in rank order, as far as the barrier can need them: until those that any need
    may take hold ``wanted`` free. The merged ranking never goes past it (docs/decisions.md, "The fund stage")."""
    accounts = {need.key[0] for need, _, _ in barrier.needs}
    prefix, free = [], 0
    for candidate in candidates:
        if free >= wanted:
            break
        prefix.append(candidate)
        if candidate.key in barrier.bankrupt or candidate.key[0] in accounts:
            continue  # some needs may not take it: it counts for none
        free += abs(candidate.size) - sum(qty for command_id, qty in candidate.reserved if command_id not in barrier.cut)
    return prefix


def barrier_demand(reports: list[Report]) -> tuple[Plan | None, dict]:
    """(plan, what each market side must deleverage) of one barrier's reports ((None, {}) for the usual barrier)."""
    if not any(report.cut or report.needs for report in reports):
        return None, {}
    barrier = plan(reports)
    return barrier, demand(barrier)


def own_prefixes(projection, state, barrier: Plan, wanted: dict) -> tuple:
    """A partition's phase-2 part: for each market side the barrier deleverages, the prefix of its ranking it may
    need, as ``((market, long, (candidate, ...)), ...)``."""
    return tuple((market, long, tuple(candidate_prefix(projection.candidates(state, market, long), qty, barrier)))
                 for (market, long), qty in sorted(wanted.items()))  # fmt: skip


def decide_with_prefixes(reports: list[Report], prefixes: Iterable[tuple]) -> Decisions:
    """``decide`` from every partition's reports and phase-2 parts (``own_prefixes``), in any order."""
    lists: dict = {}
    for part in prefixes:
        for market, long, prefix in part:
            lists.setdefault((market, long), []).append(prefix)
    return decide(reports, lambda market, long: lists.get((market, long), []))


def decide(reports: list[Report], candidates: CandidateSource) -> Decisions:
    """The decisions of one barrier (module doc); ``reports`` in any order, one per partition."""
    if not any(report.cut or report.needs for report in reports):
        return NO_DECISIONS  # the usual barrier
    barrier = plan(reports)
    rankings: dict[tuple[str, bool], _Ranking] = {}
    assigned: dict[PositionKey, int] = {}  # quantity of candidates this barrier already deleverages
    issues: list[Issue] = []
    numbers: dict[tuple, int] = {}

    def named(prefix: str, *parts) -> str:
        number = numbers[parts] = numbers.get(parts, -1) + 1
        return output_id(prefix, *parts, number)

    for need, open_qty, coverable in barrier.needs:
        rest = open_qty
        if open_qty > coverable:
            ranking = rankings.get(_side(need))
            if ranking is None:
                ranking = rankings[_side(need)] = _Ranking(candidates(*_side(need)))
            for target, qty in _choose(ranking, need, open_qty - coverable, assigned, barrier.cut, barrier.bankrupt):
                parts = (ADL, *need.key, barrier.barrier_id, barrier.barrier_ts, target[0], target[2])
                issues.append(Issue(named("adl", *parts), ADL, need.key, need.closing_side, qty,
                                    need.bankruptcy_price, target))  # fmt: skip
                rest -= qty
        if rest:
            parts = (LIQUIDATE, *need.key, barrier.barrier_id, barrier.barrier_ts, "fund")
            issues.append(Issue(named("liq", *parts), LIQUIDATE, need.key, need.closing_side, rest, need.bankruptcy_price))
    return Decisions(tuple(barrier.cancels), tuple(issues), barrier.funds)


def _choose(ranking: _Ranking, need: Need, wanted: int, assigned: dict[PositionKey, int],
            cut: dict, bankrupt: set) -> list[tuple[PositionKey, int]]:  # fmt: skip
    """(target, qty) for up to ``wanted``, top-ranked first: never the bankrupt account itself, nor a bankrupt position."""
    picks = []
    got = 0
    index = ranking.start
    advancing = True  # the start moves past candidates used up for every later need of this barrier
    while got < wanted:
        candidate = ranking.at(index)
        if candidate is None:
            break
        index += 1
        key = candidate.key
        if key in bankrupt:
            if advancing:
                ranking.start = index
            continue
        if key[0] == need.key[0]:  # its other hedge leg: a self-trade
            advancing = False
            continue
        reserved = sum(qty for command_id, qty in candidate.reserved if command_id not in cut)
        free = abs(candidate.size) - reserved - assigned.get(key, 0)
        if free <= 0:
            if advancing:
                ranking.start = index
            continue
        qty = min(free, wanted - got)
        picks.append((key, qty))
        assigned[key] = assigned.get(key, 0) + qty
        got += qty
        if qty == free and advancing:
            ranking.start = index
        else:
            advancing = False
    return picks
