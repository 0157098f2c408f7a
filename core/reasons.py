"""Stable reason codes, in precedence order, with pinned numbers.

The code string is the public contract (DESIGN.md §4.1); the number pins its
place so reports can sort by it. Never renumber; add at the end.
"""

# Stateless, found at the edge (events/) before a record reaches the log.
MALFORMED_JSON = "malformed_json"
RECORD_TOO_LARGE = "record_too_large"
DUPLICATE_KEY = "duplicate_key"
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_TYPE = "unknown_type"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
INVALID_TYPE = "invalid_type"
INVALID_VALUE = "invalid_value"
INVALID_DECIMAL = "invalid_decimal"
TOO_MANY_DECIMALS = "too_many_decimals"
OUT_OF_RANGE = "out_of_range"
NEGATIVE_VALUE = "negative_value"
NOT_POSITIVE = "not_positive"
INVALID_BRACKETS = "invalid_brackets"
UNDECODABLE_RECORD = "undecodable_record"

# Stateful, found by the reducer: the event cannot be applied (dead letter).
DUPLICATE_ID = "duplicate_id"
UNKNOWN_MARKET = "unknown_market"
IMMUTABLE_MARKET_FIELD = "immutable_market_field"
PRICE_NOT_ON_TICK = "price_not_on_tick"
QTY_NOT_ON_LOT = "qty_not_on_lot"
POSITION_MODE_CONFLICT = "position_mode_conflict"
REDUCE_EXCEEDS_POSITION = "reduce_exceeds_position"
LIQUIDATION_EXCEEDS_POSITION = "liquidation_exceeds_position"
BALANCE_OVERFLOW = "balance_overflow"

# Requests refused by the state (rejection).
STALE_MARK = "stale_mark"
INSUFFICIENT_BALANCE = "insufficient_balance"
NO_OPEN_POSITION = "no_open_position"
NO_MARK_PRICE = "no_mark_price"
MARGIN_TRANSFER_EXCEEDS_MAX = "margin_transfer_exceeds_max"
LEVERAGE_EXCEEDS_BRACKET = "leverage_exceeds_bracket"
ADL_EXCEEDS_POSITION = "adl_exceeds_position"  # dead letter (listed last to keep the numbers)

# Dead letters: an answer (liquidation_fill / adl_fill) that does not fit the
# commands the liquidation projection issued (projections.episodes).
UNKNOWN_COMMAND = "unknown_command"
COMMAND_FOR_OTHER_POSITION = "command_for_other_position"
ANSWER_EXCEEDS_COMMAND = "answer_exceeds_command"
ANSWER_SIDE_MISMATCH = "answer_side_mismatch"

# Stateless, found at the edge (added later, so numbered last).
NESTED_TOO_DEEP = "nested_too_deep"  # arrays and objects nested beyond limits.MAX_NESTING_DEPTH

# Dead letters of a market config and its insurance-fund domain (added later, so numbered last).
FUND_DOMAIN_OTHER_ASSET = "fund_domain_other_asset"  # the domain already holds another asset
FUND_DOMAIN_CHANGE_WITH_POSITIONS = "fund_domain_change_with_positions"  # a market moves only when flat

# Dead letters of the fund stage's board (ops.fund_board): a report record no partition of the topic sent.
UNKNOWN_PARTITION = "unknown_partition"
# ... and of the events topic: an account's event on another partition than its account key's (ops.kafka_log).
WRONG_PARTITION = "wrong_partition"

# Stateless, of a market's liquidation policy (core.policy; added later, so numbered last).
UNKNOWN_LIQUIDATION_POLICY = "unknown_liquidation_policy"  # a kind that is not full / tier_step / fraction
INVALID_LIQUIDATION_POLICY = "invalid_liquidation_policy"  # a parameter out of range, or of another kind
# Dead letters: an answer that does not settle the way its command was issued (projections.episodes).
ANSWER_ORDER_MISMATCH = "answer_order_mismatch"  # a takeover's answer for a market command, or the reverse
ANSWER_BEYOND_PROTECTION = "answer_beyond_protection"  # a market command filled worse than its protection price
# Rejections of a position trigger (core.reducer; added later, so numbered last).
TRIGGER_WOULD_FIRE = "trigger_would_fire"  # its price is already reached by the mark (a long's stop-loss above it...)
TRIGGER_EXCEEDS_POSITION = "trigger_exceeds_position"  # a qty above the position's size
TOO_MANY_TRIGGERS = "too_many_triggers"  # the position holds limits.MAX_TRIGGERS_PER_POSITION already
UNKNOWN_TRIGGER = "unknown_trigger"  # a cancel naming no live trigger of the account

ORDER = (
    MALFORMED_JSON,
    RECORD_TOO_LARGE,
    DUPLICATE_KEY,
    NOT_AN_OBJECT,
    UNKNOWN_TYPE,
    MISSING_FIELD,
    UNKNOWN_FIELD,
    INVALID_TYPE,
    INVALID_VALUE,
    INVALID_DECIMAL,
    TOO_MANY_DECIMALS,
    OUT_OF_RANGE,
    NEGATIVE_VALUE,
    NOT_POSITIVE,
    INVALID_BRACKETS,
    UNDECODABLE_RECORD,
    DUPLICATE_ID,
    UNKNOWN_MARKET,
    IMMUTABLE_MARKET_FIELD,
    PRICE_NOT_ON_TICK,
    QTY_NOT_ON_LOT,
    POSITION_MODE_CONFLICT,
    REDUCE_EXCEEDS_POSITION,
    LIQUIDATION_EXCEEDS_POSITION,
    BALANCE_OVERFLOW,
    STALE_MARK,
    INSUFFICIENT_BALANCE,
    NO_OPEN_POSITION,
    NO_MARK_PRICE,
    MARGIN_TRANSFER_EXCEEDS_MAX,
    LEVERAGE_EXCEEDS_BRACKET,
    ADL_EXCEEDS_POSITION,
    UNKNOWN_COMMAND,
    COMMAND_FOR_OTHER_POSITION,
    ANSWER_EXCEEDS_COMMAND,
    ANSWER_SIDE_MISMATCH,
    NESTED_TOO_DEEP,
    FUND_DOMAIN_OTHER_ASSET,
    FUND_DOMAIN_CHANGE_WITH_POSITIONS,
    UNKNOWN_PARTITION,
    WRONG_PARTITION,
    UNKNOWN_LIQUIDATION_POLICY,
    INVALID_LIQUIDATION_POLICY,
    ANSWER_ORDER_MISMATCH,
    ANSWER_BEYOND_PROTECTION,
    TRIGGER_WOULD_FIRE,
    TRIGGER_EXCEEDS_POSITION,
    TOO_MANY_TRIGGERS,
    UNKNOWN_TRIGGER,
)
NUMBER = {code: number for number, code in enumerate(ORDER, start=1)}
