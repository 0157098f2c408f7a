"""One contract for every Log backend (events.log.Log): embedded segment files, memory, Kafka (the real broker).

Whatever reads a log (run, serve, replay, history, whatif, forked projections)
relies on exactly these properties and on nothing backend-specific.
"""

import pytest

from ringfence.core.model import InvalidInput
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.json_codec import encode_line
from ringfence.events.log_codec import encode_record
from ringfence.events.memory import MemoryLog
from ringfence.ops.kafka_log import KafkaLog, KafkaSettings, ensure_topics
from ringfence.ops.simulate import generate
from tests.integration.kafka_harness import unique_prefix

EVENTS = list(generate(7, 60, 5))
GARBAGE = [b"this is not a record", b"\xc1\xff\x00", b"[1,2,3]", b'{"type":"fill"}']


class Backend:
    """Opens (and reopens) one log of one backend, and encodes events as that backend's payloads."""

    def __init__(self, name: str, tmp_path, broker_address=None):
        self.name = name
        if name == "embedded":
            self.directory = tmp_path / "log"
            self.encode = encode_record
        elif name == "memory":
            self.memory = MemoryLog()
            self.encode = encode_record
        else:
            self.settings = KafkaSettings(broker_address, prefix=unique_prefix("contract"))
            ensure_topics(self.settings, 1)
            self.encode = encode_line

    def open(self):
        if self.name == "embedded":
            return EmbeddedLog(self.directory)
        if self.name == "memory":
            return self.memory
        return KafkaLog(self.settings, self.settings.topic("events"), 0, read_timeout=10.0)


@pytest.fixture(params=["embedded", "memory", "kafka"])
def backend(request, tmp_path):
    address = request.getfixturevalue("broker") if request.param == "kafka" else None
    return Backend(request.param, tmp_path, address)


def append_all(log, payloads) -> list:
    returned = [log.append(payload) for payload in payloads]
    log.commit()
    return returned


def test_an_empty_log_reads_nothing(backend):
    log = backend.open()
    assert log.end_offset() == 0
    assert list(log.read(0)) == []
    log.close()


def test_committed_records_read_back_in_order_from_any_offset(backend):
    payloads = [backend.encode(event) for event in EVENTS]
    log = backend.open()
    returned = append_all(log, payloads[:25])
    returned += append_all(log, payloads[25:])  # a second commit continues the numbering
    assert all(offset in (None, n) for n, offset in enumerate(returned)), returned
    assert log.end_offset() == len(payloads)
    read = [(offset, bytes(payload)) for offset, payload in log.read(0)]
    assert read == list(enumerate(payloads))
    assert [offset for offset, _ in log.read(40)] == list(range(40, len(payloads)))
    assert list(log.read(len(payloads))) == []
    log.close()


def test_records_survive_a_new_instance(backend):
    payloads = [backend.encode(event) for event in EVENTS[:10]]
    log = backend.open()
    append_all(log, payloads)
    log.close()
    again = backend.open()
    assert again.end_offset() == 10
    assert [bytes(payload) for _, payload in again.read(3)] == payloads[3:]
    again.close()


def test_decode_gives_back_the_event(backend):
    log = backend.open()
    append_all(log, [backend.encode(event) for event in EVENTS])
    assert [log.decode(payload) for _, payload in log.read(0)] == EVENTS
    log.close()


@pytest.mark.parametrize("garbage", GARBAGE)
def test_decode_never_raises_on_garbage(backend, garbage):
    log = backend.open()
    append_all(log, [garbage])
    (offset, payload), = log.read(0)
    record = log.decode(payload)
    assert offset == 0 and type(record) is InvalidInput and record.reason, record
    log.close()


def test_decode_of_an_empty_payload_is_a_dead_letter(backend):
    # the embedded log refuses to append one; a Kafka producer not ours may still send it
    log = backend.open()
    record = log.decode(b"")
    assert type(record) is InvalidInput and record.reason, record
    log.close()
