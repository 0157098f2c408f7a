"""The outbox: commands are stored with the state that produced them, then published.

1. The runner's checkpoint writes the commands (``c:<sequence>``) in the same
   batch as the state and offset, so a command exists iff its cause is applied.
2. ``publish_pending`` appends every command after ``meta:published`` to the
   commands log and commits it (fsync / acks).
3. Only then is ``meta:published`` moved. A crash between 2 and 3 publishes
   those commands again with the same ids: at least once, and consumers
   deduplicate by command id.
"""

from ringfence.projections.store import StateStore


def publish_pending(store: StateStore, commands_log) -> int:
    """Publish what the store holds beyond the published mark; return how many were published."""
    published = store.published()
    last = published
    for sequence, record in store.commands(after=published):
        commands_log.append(record)
        last = sequence
    if last == published:
        return 0
    commands_log.commit()
    store.set_published(last)
    return last - published
