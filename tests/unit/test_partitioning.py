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


def test_an_account_event_read_from_another_partition_than_its_keys_decodes_as_a_dead_letter():
    from ringfence.ops.kafka_log import KafkaLog, KafkaSettings

    names = [f"trader-{n}" for n in range(40)]
    logs = [KafkaLog(KafkaSettings("127.0.0.1:1"), "rf.events", p, partitions=3) for p in range(3)]  # no connection
    for name in names:
        line = b'{"type":"deposit","id":"d","ts":1,"account":"%s","asset":"USDT","amount":"1"}' % name.encode()
        home = route(line, 3)[1][0]
        for _ in range(2):  # the second time from the cache of the partition's own accounts
            for p, log in enumerate(logs):
                event = log.decode(line)
                if p == home:
                    assert type(event).__name__ == "Deposit"
                else:
                    assert (event.reason, event.source) == ("wrong_partition", f"rf.events/{p}")
                    assert f"belongs to partition {home} of 3" in event.detail and event.raw == line
    mark = b'{"type":"mark","id":"m","ts":1,"market":"BTCUSDT","price":"1"}'
    assert all(type(log.decode(mark)).__name__ == "MarkPrice" for log in logs)  # on every partition
    assert type(KafkaLog(KafkaSettings("x"), "rf.events", 2).decode(line)).__name__ == "Deposit"  # no count: no check
