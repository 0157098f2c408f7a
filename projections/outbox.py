"""The outbox: outputs are stored with the state that produced them, then published.

1. The runner's checkpoint writes the outputs (commands ``c:<sequence>``;
   rejections, dead letters and alerts by offset) in the same batch as the
   state and offset, so an output exists iff its cause is applied.
2. ``publish_pending`` appends every output after its kind's published mark
   to that kind's log and commits it (fsync / acks).
3. Only then is the mark moved. A crash between 2 and 3 publishes those
   outputs again, identical: at least once, and consumers deduplicate by
   command id (or offset).
4. The outbox never drops a published command: when the commands log has
   lost some (its recovery moved a damaged tail aside, or a file was cut),
   ``republish_lost`` moves the mark back to the last command the log still
   holds, so that 2 publishes the rest again from the store.
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


def republish_lost(store: StateStore, log) -> str | None:
    """Move the commands' published mark back to the last command ``log`` still holds; say so, or None.

    The log's last record is found among the store's ``c:`` records by its
    bytes (each names a unique command or cancel id): first at the mark and
    after it (a crash between publish and mark), then before it, one seek a
    step (a torn tail costs one). No match at all (an emptied or foreign log)
    republishes everything. Publishing from there repeats no command the
    log still holds (beyond the duplicates at-least-once allows anyway).
    """
    published = store.published(COMMAND)
    if published == 0:
        return None
    end = log.end_offset()
    last = bytes(next(iter(log.read(end - 1)))[1]) if end > 0 else None
    held = 0
    if last is not None:
        for _, record in store.outputs(COMMAND, after=published - 1):  # the mark's, then those not marked yet
            if record == last:
                return None  # nothing lost
        for sequence in range(published - 1, 0, -1):
            found = next(iter(store.outputs(COMMAND, after=sequence - 1)), None)
            if found is not None and found[0] == sequence and found[1] == last:
                held = sequence
                break
    store.set_published(held, COMMAND)
    return (f"the commands log in {log.directory} holds commands up to {held} of the {published} published "
            f"(its end is offset {end - 1}): publishing {held + 1}..{published} again from the store")


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
