"""The outbox: outputs are stored with the state that produced them, then published.

1. The runner's checkpoint writes the outputs (commands ``c:<sequence>``;
   rejections, dead letters and alerts by offset) in the same batch as the
   state and offset, so an output exists iff its cause is applied.
2. ``publish_pending`` appends every output after its kind's published mark
   to that kind's log and commits it (fsync / acks).
3. Only then is the mark moved. A crash between 2 and 3 publishes those
   outputs again, identical: at least once, and consumers deduplicate by
   command id (or offset).
"""

from collections.abc import Mapping

import msgspec

from ringfence.events.crashpoints import crash_point
from ringfence.projections.outputs import Alert, CancelCommand
from ringfence.projections.store import ALERT, CHAIN_LINK, COMMAND, DEADLETTER, REJECTION, StateStore, offset_key

_json = msgspec.json.Encoder().encode

OUTPUT_PREFIXES = {"commands": COMMAND, "rejections": REJECTION, "deadletters": DEADLETTER, "alerts": ALERT,
                   "digests": CHAIN_LINK}  # fmt: skip


def publish_pending(store: StateStore, sinks: Mapping[str, object]) -> int:
    """Publish what the store holds beyond each kind's mark to ``sinks[kind]``; return how many records."""
    total = 0
    for kind, sink in sinks.items():
        prefix = OUTPUT_PREFIXES[kind]
        published = last = store.published(prefix)
        for position, record in store.outputs(prefix, after=published):
            sink.append(record)
            crash_point("outbox.appended")
            last = position
            total += 1
        if last != published:
            sink.commit()
            crash_point("outbox.before_mark")
            store.set_published(last, prefix)
    return total


def decision_records(decisions, sequence: int) -> tuple[list[tuple[bytes, bytes]], int, int, int]:
    """The stored records of one event's decisions, with how many are commands, cancels and alerts.

    ``sequence`` is the projection's outbox count before them: each command
    and cancel takes the next outbox position, an alert is keyed by its offset.
    """
    records = []
    commands = cancels = alerts = 0
    for decision in decisions:
        kind = type(decision)
        if kind is Alert:
            alerts += 1
            records.append((offset_key(ALERT, decision.offset), _json(decision)))
        else:
            sequence += 1
            if kind is CancelCommand:
                cancels += 1
            else:
                commands += 1
            records.append((offset_key(COMMAND, sequence), _json(decision)))
    return records, commands, cancels, alerts
