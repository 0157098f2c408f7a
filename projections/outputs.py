"""What the liquidation projection emits (DESIGN.md §4.1 outputs), and how their ids are made.

Ids never depend on a log offset: they hash the command's kind, the position
key (and an ADL target's), the triggering event's producer ``id`` and ``ts``,
and the command's number among those the same event issued with the same
parts (projections.episodes). The same session therefore yields the same ids
on the embedded log and on a Kafka topic of any partition count (marks and
funding carry the same producer id on every partition), and an id names one
position only. docs/decisions.md ("Command ids") has the scheme.
"""

import hashlib

import msgspec

_pack = msgspec.msgpack.Encoder().encode
ID_HEX_CHARS = 20  # 80 bits: no collision among the commands of any exchange's lifetime


def output_id(prefix: str, *parts) -> str:
    """``prefix-<hash of parts>``; parts are strs and ints, packed unambiguously (msgpack)."""
    return f"{prefix}-{hashlib.blake2b(_pack(parts), digest_size=ID_HEX_CHARS // 2).hexdigest()}"


class LiquidateCommand(msgspec.Struct, frozen=True, gc=False, tag="liquidate", tag_field="type"):
    command_id: str
    account: str
    market: str
    position_side: str
    side: str  # the closing side
    qty: str
    bankruptcy_price: str  # a takeover's price; a market order's protection price (it never fills worse)
    mark_price: str
    trigger_offset: int
    trigger_event_id: str
    ts: int
    order: str = "takeover"  # takeover / market: the answering liquidation_fill names it (core.model)


class AdlCommand(msgspec.Struct, frozen=True, gc=False, tag="adl", tag_field="type"):
    """Close ``qty`` of a profitable opposite position at the bankrupt position's bankruptcy price.

    The matching engine answers with both sides of the trade at ``price``: an
    ``adl_fill`` for this position and a ``liquidation_fill`` (with this
    command's id) for the bankrupt one, which so closes without touching the fund.
    """

    command_id: str
    account: str
    market: str
    position_side: str
    side: str  # the closing side of this position
    qty: str
    price: str
    bankrupt_account: str
    bankrupt_position_side: str
    trigger_offset: int
    trigger_event_id: str
    ts: int


class CloseCommand(msgspec.Struct, frozen=True, gc=False, tag="close", tag_field="type"):
    """A position trigger fired: close ``qty`` of the position at market (the trader's own order, answered by an
    ordinary ``fill``). One per trigger; its id is hashed from the trigger, so every replay names it the same."""

    command_id: str
    account: str
    market: str
    position_side: str
    side: str  # the closing side
    qty: str  # the trigger's qty, or the whole position, at most the position's size when it fired
    trigger_id: str
    kind: str  # stop_loss / take_profit
    trigger_price: str
    mark_price: str  # the mark that reached it
    trigger_offset: int
    trigger_event_id: str
    ts: int


class CancelCommand(msgspec.Struct, frozen=True, gc=False, tag="cancel", tag_field="type"):
    """A live command is withdrawn: the matching engine stops working it.

    The position fields are those of the command it cancels: for a
    ``liquidate`` the position it closes, for an ``adl`` the counterparty in
    ``account``/``position_side`` and the bankrupt position in
    ``bankrupt_account``/``bankrupt_position_side`` (None for a liquidate).
    An execution that raced the cancel is still a fact: its fill is applied
    within the position and the position is judged again (docs/decisions.md).
    """

    cancel_id: str  # its own id, for consumers that deduplicate (a command is cancelled once: hashed from its id)
    command_id: str
    account: str
    market: str
    position_side: str
    reason: str  # CANCEL_REASONS
    trigger_offset: int
    trigger_event_id: str
    ts: int
    bankrupt_account: str | None = None
    bankrupt_position_side: str | None = None


class Alert(msgspec.Struct, frozen=True, gc=False, tag="alert", tag_field="type"):
    alert_id: str
    market: str
    reason: str  # mark_jump / mark_resumed / mark_stale
    mark_price: str
    previous_mark: str
    offset: int
    trigger_event_id: str
    ts: int


# Why a command was cancelled (stable codes)
POSITION_CHANGED = "position_changed"  # something other than its own answers changed the position
NO_LONGER_LIQUIDATABLE = "no_longer_liquidatable"  # B > MM at the mark now
TIMED_OUT = "timed_out"  # unanswered for the market's liquidation_timeout_ms
MARKET_PAUSED = "market_paused"  # the mark jumped beyond the market's band, or went stale at a barrier
MARK_STALE = "mark_stale"  # the position's own event came later than its market's mark_stale_ms after its mark
POSITION_CLOSED = "position_closed"  # closed by something other than this command's answers
TARGET_CHANGED = "target_changed"  # the ADL counterparty no longer holds what the command closes
CANCEL_REASONS = (POSITION_CHANGED, NO_LONGER_LIQUIDATABLE, TIMED_OUT, MARKET_PAUSED, MARK_STALE, POSITION_CLOSED,
                  TARGET_CHANGED)
