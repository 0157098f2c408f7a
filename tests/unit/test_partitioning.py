"""Routing JSON lines to partitions: by account, broadcasts everywhere, bad lines kept on partition 0."""

import pytest
from kafka.partitioner.default import murmur2

from ringfence.ops.partitioning import route


def test_an_account_event_goes_to_the_partition_kafka_would_choose_for_its_key():
    line = b'{"type":"fill","id":"f1","ts":1,"account":"alice","market":"BTCUSDT"}'
    key, partitions = route(line, 4)
    assert key == b"alice"
    assert list(partitions) == [(murmur2(b"alice") & 0x7FFFFFFF) % 4]
    # every event of one account lands on the same partition, whatever its type
    assert route(b'{"type":"deposit","account":"alice","amount":"1"}', 4) == (key, partitions)


def test_accounts_spread_over_the_partitions():
    seen = {route(b'{"type":"deposit","account":"T%06d"}' % n, 4)[1][0] for n in range(200)}
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("kind", ["mark", "funding", "market"])
def test_market_wide_events_go_to_every_partition(kind):
    key, partitions = route(b'{"type":"%s","market":"BTCUSDT","price":"1"}' % kind.encode(), 3)
    assert key is None and list(partitions) == [0, 1, 2]


@pytest.mark.parametrize(
    "line",
    [b"", b"not json", b"[1, 2]", b'{"type": "fill"}', b'{"type": "fill", "account": 7}', b'{"account": null}',
     b'{"type": ["mark"]}', b"\xff\xfe"],
)  # fmt: skip
def test_a_line_that_cannot_be_routed_goes_to_partition_0_to_be_dead_lettered(line):
    assert route(line, 4) == (None, (0,))
