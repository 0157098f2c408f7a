"""The board of fund-stage reports (ops/fund_board.py): complete per barrier, duplicates the same, strangers refused."""

import pytest

from ringfence.ops.fund_board import PHASE_MARKET, PHASE_REPORT, Board, BoardConflict, ReportRecord, encode_record
from ringfence.projections.fund_stage import Need, Report


def report(partition: int, funds=()) -> bytes:
    return encode_record(ReportRecord(2, partition, 7, PHASE_REPORT, Report(partition, "mark-9", 90, funds, (), ())))


def test_a_barrier_is_complete_once_every_partition_reported_in_any_order_and_duplicates_are_harmless():
    board = Board(2)
    board.add(report(1))
    assert board.complete(7, PHASE_REPORT) is None and board.missing(7, PHASE_REPORT) == [0]
    board.add(report(1))  # a restarted partition sends it again: the same record
    board.add(report(0))
    assert [r.partition for r in board.complete(7, PHASE_REPORT)] == [0, 1]
    board.forget_before(8)
    assert board.complete(7, PHASE_REPORT) is None


def test_a_second_different_record_for_the_same_barrier_is_refused_loudly():
    board = Board(2)
    board.add(report(0))
    with pytest.raises(BoardConflict, match="partition 0 sent two different records for barrier 7"):
        board.add(report(0, funds=(("USDT", 5),)))


@pytest.mark.parametrize("payload, reason", [
    (encode_record(ReportRecord(2, 5, 7, PHASE_REPORT, Report(5, "m", 1, (), (), ()))), "unknown_partition"),
    (encode_record(ReportRecord(3, 1, 7, PHASE_REPORT, Report(1, "m", 1, (), (), ()))), "unknown_partition"),
    (encode_record(ReportRecord(2, -1, 7, PHASE_REPORT, Report(1, "m", 1, (), (), ()))), "unknown_partition"),
    (encode_record(ReportRecord(2, 1, 7, PHASE_REPORT)), "invalid_value"),
    (encode_record(ReportRecord(2, 1, 7, 9)), "invalid_value"),
    (encode_record(ReportRecord(2, 1, 7, PHASE_REPORT, Report(0, "m", 1, (), (), ()))), "invalid_value"),
    (encode_record(ReportRecord(2, 1, 7, PHASE_REPORT, Report(1, "m", 1, (), (), (
        Need(("a", "BTCUSDT", "LONG"), "", 10, 0, (), 0, "sell", 1, 1),)))), "invalid_value"),  # loss 0
    (b"{not json", "undecodable_record"),
    (b"", "undecodable_record"),
    (None, "undecodable_record"),
    (b'[2, 1, 7, 1, [1, "m", 1, [], [], [["not a key"]]]]', "undecodable_record"),
    (b"[" * 10_000, "undecodable_record"),
])  # fmt: skip
def test_a_record_from_an_unknown_partition_or_malformed_is_a_dead_letter_and_never_used(payload, reason):
    board = Board(2)
    board.add(payload, "rf.reports/1", 1, 42)
    assert board.entries == {}
    [(partition, offset, dead)] = board.dead_letters
    assert (partition, offset, dead.reason, dead.source) == (1, 42, reason, "rf.reports/1")
    assert dead.detail and len(dead.raw) <= 4096 and (payload or b"").startswith(dead.raw[:100])


def test_market_counts_are_kept_apart_per_config():
    board = Board(2)
    for partition, count in ((0, 3), (1, 0)):
        board.add(encode_record(ReportRecord(2, partition, 4, PHASE_MARKET, count=count, tag="cfg-1")))
    assert [r.count for r in board.complete(4, PHASE_MARKET, "cfg-1")] == [3, 0]
    assert board.complete(4, PHASE_MARKET, "cfg-2") is None
