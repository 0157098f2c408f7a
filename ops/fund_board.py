"""The fund stage over Kafka: every partition's barrier reports on ``<prefix>.reports``, read by every instance.

Partition p of the events topic writes its reports to partition p of the
reports topic; every `serve` instance reads all of them into a ``Board``. At
a barrier (projections.fund_stage) a partition waits until the board holds
the barrier's report of every partition (phase 1). If the reports leave some
market side to deleverage, each partition sends the prefix of its ADL
ranking the barrier may need and waits for every partition's (phase 2). Then
every partition runs the same ``decide`` on the same reports and applies its
part: no instance is special, nothing is decided twice differently.

A record is the same whenever its partition computes it (a restarted
partition sends its reports again, from its checkpoint on): the board keeps
the first of each (barrier, phase, partition) and refuses a different second
one loudly (``BoardConflict``: two logs, or a bug, never a silent choice).
A record naming a partition outside the topic's count, or the wrong count,
or one that does not decode, is a dead letter of the board, never used: the
service logs it and publishes it on the dead-letters topic (``dead_letters``).
"""

import msgspec

from ringfence.core import reasons as r
from ringfence.core.model import InvalidInput
from ringfence.events.json_codec import invalid
from ringfence.projections import fund_stage
from ringfence.projections.fund_stage import Candidate, Report

# a market config moving a market to another fund (every partition's open positions in it), a barrier's
# reports, a barrier's ADL candidates
PHASE_MARKET, PHASE_REPORT, PHASE_CANDIDATES = 0, 1, 2


class ReportRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One partition's part of one barrier's exchange."""

    partitions: int  # the events topic's partition count it was computed for
    partition: int
    number: int  # the barrier's number: applied barriers up to it in the log (the same in every partition)
    phase: int
    report: Report | None = None  # PHASE_REPORT
    candidates: tuple[tuple[str, bool, tuple[Candidate, ...]], ...] = ()  # PHASE_CANDIDATES: (market, long, prefix)
    count: int = 0  # PHASE_MARKET: the partition's open positions in the market
    tag: str = ""  # PHASE_MARKET: the market config's id


# JSON, not msgpack: a cost basis (1e-16 units) does not fit 64 bits
encode_record = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(ReportRecord).decode


class BoardConflict(Exception):
    """Two different records for one (barrier, phase, partition)."""


class Board:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.entries: dict[tuple[int, int, str], dict[int, ReportRecord]] = {}
        # records that were not used, as (partition, offset, dead letter) of the reports topic: the service
        # publishes them
        self.dead_letters: list[tuple[int, int, InvalidInput]] = []

    def add(self, payload: bytes | None, source: str = "", partition: int = -1, offset: int = -1) -> None:
        """Take one record of the reports topic (``source``, ``partition``, ``offset``: where it was read, for its
        dead letter); BoardConflict if it contradicts one already taken."""
        where = (source, partition, offset)
        payload = payload or b""  # a tombstone is a record too
        try:
            record = _decode_record(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            self._refuse(r.UNDECODABLE_RECORD, f"not a fund-stage report record: {error}", payload, *where)
            return
        if record.partitions != self.partitions or not 0 <= record.partition < self.partitions:
            self._refuse(r.UNKNOWN_PARTITION, f"a report of partition {record.partition} of {record.partitions}; "
                         f"this topic has {self.partitions} partitions", payload, *where)  # fmt: skip
            return
        if (record.phase == PHASE_REPORT) != (record.report is not None) or record.phase not in (0, 1, 2):
            self._refuse(r.INVALID_VALUE, f"a report record of phase {record.phase} with the wrong contents",
                         payload, *where)  # fmt: skip
            return
        report = record.report
        if report is not None and (report.partition != record.partition or not all(
                need.size > 0 and need.loss > 0 and need.lot > 0 for need in report.needs)):  # fmt: skip
            self._refuse(r.INVALID_VALUE, f"a report of partition {record.partition} that no partition computes "
                         "(another partition inside, or a need without size, loss or lot)", payload, *where)  # fmt: skip
            return
        found = self.entries.setdefault((record.number, record.phase, record.tag), {})
        known = found.get(record.partition)
        if known is None:
            found[record.partition] = record
        elif known != record:
            raise BoardConflict(f"partition {record.partition} sent two different records for barrier "
                                f"{record.number} phase {record.phase}: the reports topic mixes two logs")  # fmt: skip

    def _refuse(self, reason: str, detail: str, payload: bytes, source: str, partition: int, offset: int) -> None:
        self.dead_letters.append((partition, offset, invalid(reason, detail, payload, source)))

    def complete(self, number: int, phase: int, tag: str = "") -> list[ReportRecord] | None:
        """Every partition's record of one barrier phase, by partition, once all are in."""
        found = self.entries.get((number, phase, tag), {})
        if len(found) < self.partitions:
            return None
        return [found[p] for p in range(self.partitions)]

    def missing(self, number: int, phase: int, tag: str = "") -> list[int]:
        found = self.entries.get((number, phase, tag), {})
        return [p for p in range(self.partitions) if p not in found]

    def forget_before(self, number: int) -> None:
        for key in [key for key in self.entries if key[0] < number]:
            del self.entries[key]


class ReportsUnusable(Exception):
    """A replay of one partition cannot take a barrier's decision from the reports topic: one line saying why."""


class BoardCoordinator:
    """The fund stage for a replay of one partition: the other partitions' parts come from the reports topic.

    What this partition computes itself (its report, its candidates, its
    count of a market's positions) must be what it recorded; anything else
    (another log, a changed reducer) is ``ReportsUnusable``, never a guess.
    """

    def __init__(self, board: Board, partition: int, projection) -> None:
        self.board, self.partition, self.projection = board, partition, projection

    def _complete(self, number: int, phase: int, tag: str = "") -> list[ReportRecord]:
        records = self.board.complete(number, phase, tag)
        if records is None:
            raise ReportsUnusable(f"the reports topic has no phase-{phase} record of partitions "
                                  f"{self.board.missing(number, phase, tag)} for barrier {number}")  # fmt: skip
        return records

    def __call__(self, report: Report, projection, state) -> fund_stage.Decisions:
        number = projection.barriers
        records = self._complete(number, PHASE_REPORT)
        if records[self.partition].report != report:
            raise ReportsUnusable(f"partition {self.partition}'s report at barrier {number} is not the one on the "
                                  f"reports topic: the topic or the reducer is another")  # fmt: skip
        reports = [record.report for record in records]
        barrier, wanted = fund_stage.barrier_demand(reports)
        prefixes = []
        if wanted:
            candidates = self._complete(number, PHASE_CANDIDATES)
            if candidates[self.partition].candidates != fund_stage.own_prefixes(projection, state, barrier, wanted):
                raise ReportsUnusable(f"partition {self.partition}'s ADL candidates at barrier {number} are not "
                                      f"the ones on the reports topic")  # fmt: skip
            prefixes = [record.candidates for record in candidates]
        return fund_stage.decide_with_prefixes(reports, prefixes)

    def open_elsewhere(self, event) -> int:
        """A market config's market: its open positions in the other partitions, as they recorded them."""
        records = self._complete(self.projection.barriers, PHASE_MARKET, event.id)
        return sum(record.count for record in records if record.partition != self.partition)
