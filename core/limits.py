"""Every bound in one place, with the reason beside it."""

# Ids of accepted events are remembered in generations of N offsets (offset //
# N): the current and the previous generation, so an id is recognised as a
# duplicate for at least N and at most 2N events after it. Producers retry
# within seconds; 50k-100k events is many seconds of a busy exchange's log and
# costs ~10 MB of state. A duplicate older than that is applied again.
# Generations (rather than a sliding window) make forgetting free: a whole
# generation is dropped at once instead of one dict deletion per event.
DEDUP_GENERATION_EVENTS = 50_000

# A market with more brackets than this is a configuration error (Binance's
# largest table has 11); it also bounds the liquidation-price solve.
MAX_BRACKETS = 32

# Leverage above this is not offered by any venue we model.
MAX_LEVERAGE = 200

# Identifiers (accounts, markets, assets, event ids) are short; a longer one is
# a producer bug and would bloat every key that contains it.
MAX_ID_CHARS = 128

# One JSON line larger than this is not an exchange event; it is dead-lettered
# without being parsed, and only its first bytes are kept.
MAX_LINE_BYTES = 64 * 1024
DEADLETTER_RAW_BYTES = 2048

# A record nests 3 deep (the record, its brackets list, a bracket). A line that
# nests arrays and objects deeper than this is dead-lettered before it is
# parsed: parsers recurse per level, and 9,000 levels exhaust Python's stack.
# 16 leaves room for fields later issues add.
MAX_NESTING_DEPTH = 16

# Embedded log: a record larger than this is a corrupt length field.
MAX_RECORD_BYTES = 1024 * 1024
# Segments roll over at this size so recovery scans and deletions stay bounded.
SEGMENT_BYTES = 64 * 1024 * 1024

# The runner checkpoints at least this often (events), bounding both the replay
# after a crash (~5 s at this size) and the size of one RocksDB write batch. A
# checkpoint costs in proportion to what changed, so a longer interval
# coalesces repeated updates of busy positions and wallets.
CHECKPOINT_EVERY_EVENTS = 500_000

# The digest chain links the state digest every N events (DESIGN.md §2, issue
# 5). A digest hashes the whole state (~95 ms with 45k positions, 20k wallets
# and 100k remembered ids), so N trades audit granularity against cost: at
# 500k it is ~0.2 us per event; the records between links are still
# pinpointed one by one by their fingerprints.
CHAIN_EVERY_EVENTS = 500_000

# At every chain link `run` and `serve` keep a snapshot of the store (a RocksDB
# checkpoint: hard links, ~20 ms) for point-in-time queries and verification
# from a checkpoint. Old ones are pruned: each pins the files compaction has
# since replaced, so disk use grows with their number.
SNAPSHOTS_KEPT = 10

# A liquidation timeout above a day is a configuration error: a command that
# nobody answers for that long leaves the position without protection.
MAX_LIQUIDATION_TIMEOUT_MS = 86_400_000

# Ended liquidation commands (cancelled, timed out, answered) are remembered so
# that a late answer from the matching engine is still recognised as one of
# them: for an hour of event time after they ended (an engine answers in
# milliseconds; an hour covers any outage it recovers from), and at most the
# last 256 of a position (a bankrupt position's ADL split can be dozens of
# commands, superseded again and again in a storm). An answer
# naming a forgotten command is dead-lettered as unknown_command. Event time,
# not offsets, so the answer is the same on every partition layout.
ENDED_COMMANDS_MS = 3_600_000
ENDED_COMMANDS_KEPT = 256
