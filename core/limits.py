"""Every bound in one place, with the reason beside it."""

from ringfence.core.fixed import INT64_MAX, SCALE

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

# Stop-loss / take-profit triggers one position may hold at once (a bound on the state a trader can grow)
MAX_TRIGGERS_PER_POSITION = 10

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

# -- magnitudes (issue 13: no record that passes validation overflows what the core stores) ------------
#
# The store keeps a position's size, margin and shortfall, a market's mark and
# settings, and the episode book's quantities and times as msgpack int64;
# wallets, books, leverage and the cost basis as signed bytes of any length.
# Each field is bounded at the edge (events/wire.py: out_of_range), so that
# one record's products stay small; what accumulates over many records (a
# position's size, cost, margin and shortfall) is bounded by the reducer,
# which refuses the event that would exceed a bound (balance_overflow, a dead
# letter: nothing of it applies). Amounts and prices are in units of 1e-8.

# Event time is integer milliseconds. 9999-12-31T23:59:59.999Z is later than
# any real event, and keeps every ts plus a time-out or retention (stored:
# a command's expiry) far inside int64.
MAX_TS_MS = 253_402_300_799_999

# A price (fill, liquidation, ADL, mark, funding mark, tick size) above 1e9 of
# the settle asset per contract is not a market any venue lists.
MAX_PRICE_UNITS = 10**9 * SCALE

# A quantity (fill, liquidation, ADL, lot size) above 1e10 contracts is not
# one trade (venues cap an order far below; 1e10 covers 1000PEPE-style lots).
MAX_QTY_UNITS = 10**10 * SCALE

# An amount (deposit, withdrawal, margin transfer, a fee or rebate) above 1e10
# of an asset (ten billion dollars) is not one movement of money.
MAX_AMOUNT_UNITS = 10**10 * SCALE

# One trade's notional, qty x price, above 1e10 of the settle asset is not one
# trade either; it bounds the initial margin, cost and PnL a trade brings.
MAX_TRADE_NOTIONAL_UNITS = 10**10 * SCALE

# A position (what accumulates over fills): its size and its cost basis (entry
# notional) at most 5e10 contracts and 5e10 of the settle asset. Venues' risk
# limits (the last bracket's cap) are a few billion; five maximal trades fit.
MAX_POSITION_QTY_UNITS = 5 * 10**10 * SCALE
MAX_POSITION_NOTIONAL_UNITS = 5 * 10**10 * SCALE

# A position's isolated margin (either sign) and recorded shortfall: int64,
# rounded down to 9e10 of the settle asset. Margin transfers, funding and
# realized PnL retained over many events are what could take it further.
MAX_POSITION_BALANCE_UNITS = 9 * 10**18

# A wallet: int64 units. Wallets are stored as bytes of any length, so this
# bounds only deposits (balance_overflow), as before: money that arrives by
# release from a position or a rebate is never refused for the wallet's size.
MAX_WALLET_UNITS = INT64_MAX
