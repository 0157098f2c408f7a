"""Which partitions of the events topic a JSON line belongs to (DESIGN.md §6).

- An event with an account goes to one partition, chosen as Kafka's default
  partitioner chooses for the key ``account`` (murmur2 of its UTF-8 bytes,
  made positive, modulo the partition count), so any producer that keys by
  account agrees with `ringfence publish`.
- Mark, funding and market events go to every partition, so that each
  partition is a self-contained, totally ordered log.
- A line that names no account and no broadcast type (not JSON, no type, a
  non-string account, nested beyond the depth bound) goes to partition 0,
  where it is dead-lettered: bad input is never dropped.

`ringfence publish` and `ringfence ingest --partition P --of N` share this
function, so one partition of a published session can be replayed offline.
"""

from functools import lru_cache

import msgspec
from kafka.partitioner.default import murmur2

from ringfence.events.json_codec import too_deep

BROADCAST_TYPES = frozenset({"mark", "funding", "market"})


class _Routing(msgspec.Struct):
    """The only fields routing reads; any other field, or type, is the reducer's to judge."""

    type: object = None
    account: object = None


_decode_routing = msgspec.json.Decoder(_Routing).decode


@lru_cache(maxsize=1 << 16)
def account_partition(account: str, partitions: int) -> int:
    return (murmur2(account.encode()) & 0x7FFFFFFF) % partitions


def route(line: bytes, partitions: int) -> tuple[bytes | None, range | tuple[int]]:
    """(Kafka key, partitions) of one JSON line."""
    if too_deep(line):  # before the decoder recurses into it
        return None, (0,)
    try:
        fields = _decode_routing(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, (0,)
    if isinstance(fields.type, str) and fields.type in BROADCAST_TYPES:
        return None, range(partitions)
    if isinstance(fields.account, str):
        return fields.account.encode(), (account_partition(fields.account, partitions),)
    return None, (0,)
