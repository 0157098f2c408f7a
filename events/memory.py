"""An in-memory Log (events.log): the embedded log's records in a list, for tests and analysts' notebooks.

Same record format as the embedded log (events.log_codec) and the same
contract (tests/integration/test_log_contract.py); nothing is durable.
"""

from collections.abc import Iterable, Iterator

from ringfence.events.log_codec import decode_logged, encode_record


class MemoryLog:
    def __init__(self, payloads: Iterable[bytes] = ()):
        self._committed: list[bytes] = list(payloads)
        self._pending: list[bytes] = []

    @classmethod
    def of_events(cls, events) -> "MemoryLog":
        return cls(encode_record(event) for event in events)

    decode = staticmethod(decode_logged)

    def append(self, payload: bytes) -> int:
        self._pending.append(bytes(payload))
        return len(self._committed) + len(self._pending) - 1

    def commit(self) -> None:
        self._committed += self._pending
        self._pending.clear()

    def read(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        committed = self._committed
        return ((offset, committed[offset]) for offset in range(max(0, start), len(committed)))

    def end_offset(self) -> int:
        return len(self._committed)

    def close(self) -> None:
        self.commit()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
