"""The episode book: every liquidation and ADL command, whether it is live, and what answered it.

The rules (docs/decisions.md, "Liquidation episodes") are enforced by the
projection (projections.liquidation) through this book, the one place that
knows which commands exist:

- A command is issued for one position, the one it liquidates (for an ADL
  command: the bankrupt one), and closes it on ``closing_side`` for ``qty``.
  An ADL command also closes its *target*, the profitable counterparty, on
  the other side. Each position it closes is a *leg*: the position leg is
  answered by ``liquidation_fill``s naming the command on that position, the
  target leg by ``adl_fill``s naming it on the target.
- A command is live until every leg is answered in full, it is cancelled, or
  the positions it closes are gone. Ended commands are remembered for
  limits.ENDED_COMMANDS_MS of event time (at most ENDED_COMMANDS_KEPT per
  position), so a fill that raced a cancel is still recognised.
- An answer must name a command of that very position (and leg), for at most
  the leg's unanswered quantity, on a side that still closes the position;
  anything else is a dead letter (``check_answer``) and changes nothing.
- A live command expires ``liquidation_timeout_ms`` of event time after it
  was issued (``expired``).

``commitments(key)`` is what the invariant is stated in: the quantity live
commands will close of a position, its own position legs plus the ADL target
legs against it.

A book holds the legs of the positions its partition owns (``legs``): a
liquidate command is one position leg; an ADL command's two legs may live in
two partitions' books (the bankrupt's and the counterparty's), or both in one.
A leg is never ended alone by what happens to its own position between
barriers, except by its answers: it is *cut* (no longer counted, answers still
recognised) and the fund stage cancels the whole command at the next barrier,
for every partition at once (projections.fund_stage).
"""

from heapq import heappop, heappush

import msgspec

from ringfence.core import reasons as r
from ringfence.core.fixed import format_decimal as dec
from ringfence.core.limits import ENDED_COMMANDS_KEPT, ENDED_COMMANDS_MS
from ringfence.core.model import BUY, MARKET, SELL, TAKEOVER, AdlFill, Verdict
from ringfence.core.state import PositionKey, State
from ringfence.projections.outputs import output_id

LIQUIDATE, ADL = 0, 1
POSITION_LEG, TARGET_LEG = 1, 2  # Command.legs: the legs this book holds (bits)
BOOK_VERSION = "episodes-v3"  # the stored form of the book (sections); v2: legs held and cut; v3: orders


class Command(msgspec.Struct, array_like=True, gc=False):
    command_id: str
    kind: int  # LIQUIDATE / ADL
    account: str  # the position it was issued for (the bankrupt one of an ADL command)
    market: str
    position_side: str
    closing_side: str  # the side that closes that position
    qty: int
    issued_ts: int
    expires_ts: int
    filled: int = 0  # answered on the position leg
    target_account: str = ""  # ADL only: the counterparty's position
    target_side: str = ""
    target_filled: int = 0  # answered on the target leg
    live: bool = True  # some leg this book holds is open
    ended_ts: int = -1  # event time it ended (cancelled or answered in full)
    legs: int = POSITION_LEG  # the legs this book holds
    position_cut: bool = False  # the position leg was cut, awaiting the barrier's cancel
    target_cut: bool = False
    order: str = TAKEOVER  # how its liquidation_fills settle (core.model): a policy's step is a MARKET order
    protection: int = 0  # a MARKET order's worst price (the bankruptcy price when issued)

    @property
    def key(self) -> PositionKey:
        return (self.account, self.market, self.position_side)

    @property
    def target(self) -> PositionKey | None:
        return (self.target_account, self.market, self.target_side) if self.kind == ADL else None

    def position_leg_open(self) -> bool:
        return self.live and self.legs & POSITION_LEG and not self.position_cut and self.filled < self.qty

    def target_leg_open(self) -> bool:
        return (self.live and self.kind == ADL and self.legs & TARGET_LEG and not self.target_cut
                and self.target_filled < self.qty)  # fmt: skip

    def open_qty(self) -> int:
        """Unanswered quantity of the position leg (0 once ended, cut, or not held here)."""
        return self.qty - self.filled if self.position_leg_open() else 0

    def open_target_qty(self) -> int:
        return self.qty - self.target_filled if self.target_leg_open() else 0


class PositionEpisodes(msgspec.Struct, array_like=True, gc=False):
    """A position's commands, in issue order: those whose position leg is open, and the rest it remembers.

    Kept while the position is open or any of its commands is remembered.
    """

    open: list[str] = []  # live, position leg not yet answered in full
    done: list[str] = []  # ended (or live only for an ADL target leg): remembered for late answers
    partial_ts: int = -1  # event time of its last partial liquidation (a MARKET fill that left it open), for cooldowns

    def empty(self) -> bool:
        return not self.open and not self.done


def closes(side: str, size: int) -> bool:
    """Does a trade on ``side`` close (reduce) a position of signed ``size``?"""
    return size < 0 if side == BUY else size > 0


def other_side(side: str) -> str:
    return SELL if side == BUY else BUY


class EpisodeBook:
    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}  # live and remembered, by id
        self.positions: dict[PositionKey, PositionEpisodes] = {}
        # derived (rebuilt on restore): live ADL commands by target, expiry heaps per market
        self.targets: dict[PositionKey, list[str]] = {}
        self._expiry: dict[str, list[tuple[int, str]]] = {}
        self._ended: list[tuple[int, str]] = []  # heap of (ended_ts, id): the order they are forgotten in
        self._reserved: dict[PositionKey, int] = {}  # target -> the sum of open_target_qty() against it
        # commands issued by the current event, per id parts (numbers the second one with the same parts)
        self._counted_offset, self._counts = -1, {}
        # changed since the last checkpoint: the store writes (or deletes) just these
        self.dirty_commands: set[str] = set()
        self.dirty_positions: set[PositionKey] = set()

    # -- queries ---------------------------------------------------------------------------

    def live_for(self, key: PositionKey) -> list[Command]:
        """The live commands issued for this position whose position leg is still open."""
        episodes = self.positions.get(key)
        if episodes is None:
            return []
        commands = self.commands
        return [commands[i] for i in episodes.open]

    def has_live(self, key: PositionKey) -> bool:
        episodes = self.positions.get(key)
        return episodes is not None and bool(episodes.open)

    def live_against(self, target: PositionKey) -> list[Command]:
        """Live ADL commands whose target leg on this position is still open."""
        commands = self.commands
        return [commands[i] for i in sorted(self.targets.get(target, ()))]

    def reserved(self, target: PositionKey) -> int:
        """What live ADL commands will close of this position as their target (kept as a running sum)."""
        return self._reserved.get(target, 0)

    def _reserve(self, target: PositionKey, qty: int) -> None:
        left = self._reserved.get(target, 0) + qty
        if left:
            self._reserved[target] = left
        else:
            self._reserved.pop(target, None)

    def commitments(self, key: PositionKey) -> int:
        return sum(c.open_qty() for c in self.live_for(key)) + self.reserved(key)

    def live_count(self) -> int:
        return sum(1 for command in self.commands.values() if command.live)

    def live(self):
        """Every live command, in id order."""
        return [self.commands[i] for i in sorted(self.commands) if self.commands[i].live]

    # -- issuing and ending ------------------------------------------------------------------

    def issue(self, kind: int, key: PositionKey, closing_side: str, qty: int, ts: int, timeout_ms: int,
              trigger_event_id: str, trigger_offset: int, target: PositionKey | None = None,
              command_id: str | None = None, legs: int = POSITION_LEG, order: str = TAKEOVER,
              protection: int = 0) -> Command:  # fmt: skip
        """Record a new command for ``key`` (the legs of it this book holds: ``legs``).

        Its id hashes the kind, the position key (and an ADL target's), the
        triggering event's producer id and ts, and how many such commands this
        same event already issued for it: nothing that depends on where the
        event sits in a log, or on what other positions did (outputs.py). The
        fund stage names the commands it decides itself (``command_id``).
        """
        if command_id is None:
            if trigger_offset != self._counted_offset:
                self._counted_offset, self._counts = trigger_offset, {}
            parts = (kind, *key, trigger_event_id, ts)
            number = self._counts[parts] = self._counts.get(parts, -1) + 1
            command_id = output_id("liq", *parts, number)
        command = Command(command_id, kind, *key, closing_side, qty, ts, ts + timeout_ms, legs=legs, order=order,
                          protection=protection)  # fmt: skip
        if target is not None:
            command.target_account, command.target_side = target[0], target[2]
            if legs & TARGET_LEG:
                self.targets.setdefault(target, []).append(command_id)
                self._reserve(target, qty)
        if legs & POSITION_LEG:
            episodes = self.positions.get(key)
            if episodes is None:
                episodes = self.positions[key] = PositionEpisodes([], [])
            episodes.open.append(command_id)
            self.dirty_positions.add(key)
        self.commands[command_id] = command
        self.dirty_commands.add(command_id)
        heappush(self._expiry.setdefault(key[1], []), (command.expires_ts, command_id))
        return command

    def end(self, command: Command, ts: int) -> None:
        """The command is no longer live (cancelled, or every leg answered); it stays remembered for a while."""
        if not command.live:
            return
        if command.kind == ADL:
            self._reserve(command.target, -command.open_target_qty())
        command.live = False
        command.ended_ts = ts
        self.dirty_commands.add(command.command_id)
        if command.kind == ADL:
            self._drop_target(command)
        heappush(self._ended, (ts, command.command_id))
        episodes = self.positions.get(command.key) if command.legs & POSITION_LEG else None
        if episodes is None:
            return
        if command.command_id in episodes.open:
            self._leg_done(episodes, command.command_id)
        if len(episodes.done) > ENDED_COMMANDS_KEPT:  # the oldest ended one goes first
            oldest = next((i for i in episodes.done if not self.commands[i].live), None)
            if oldest is not None:
                self._forget(oldest)

    def cut(self, command: Command, leg: int, ts: int) -> None:
        """End one leg of an ADL command here (its position changed, closed, ...); the fund stage cancels the command.

        The leg no longer counts (it reserves and commits nothing); its answers
        are still recognised. The command ends here once no leg it holds is open.
        """
        if leg == POSITION_LEG:
            command.position_cut = True
            episodes = self.positions.get(command.key)
            if episodes is not None and command.command_id in episodes.open:
                self._leg_done(episodes, command.command_id)
        else:
            self._reserve(command.target, -command.open_target_qty())
            command.target_cut = True
            self._drop_target(command)
        self.dirty_commands.add(command.command_id)
        if not command.position_leg_open() and not command.target_leg_open():
            self.end(command, ts)

    def _leg_done(self, episodes: PositionEpisodes, command_id: str) -> None:
        episodes.open.remove(command_id)
        episodes.done.append(command_id)
        self.dirty_positions.add(self.commands[command_id].key)

    def position_closed(self, key: PositionKey) -> None:
        """The position is flat (its live commands were ended first): drop its record if nothing is remembered."""
        episodes = self.positions.get(key)
        if episodes is None:
            return
        if episodes.partial_ts >= 0:  # a new position in this key starts without a cooldown
            episodes.partial_ts = -1
            self.dirty_positions.add(key)
        if episodes.empty():
            del self.positions[key]
            self.dirty_positions.add(key)

    def partial_ts(self, key: PositionKey) -> int:
        """Event time of the position's last partial liquidation (-1: none remembered)."""
        episodes = self.positions.get(key)
        return -1 if episodes is None else episodes.partial_ts

    def record_partial(self, key: PositionKey, ts: int) -> None:
        episodes = self.positions.get(key)
        if episodes is not None:  # a MARKET command's answer: the command made the record
            episodes.partial_ts = ts
            self.dirty_positions.add(key)

    def ended_before(self, ts: int) -> bool:
        """Is some ended command due to be forgotten at ``ts``? (cheap: the heap's top)"""
        return bool(self._ended) and self._ended[0][0] + ENDED_COMMANDS_MS <= ts

    def expires_by(self, market: str, ts: int) -> bool:
        """May a command of the market have timed out at ``ts``? (cheap: the heap's top, maybe a stale entry)"""
        heap = self._expiry.get(market)
        return bool(heap) and heap[0][0] <= ts

    def forget_ended(self, state: State, ts: int) -> None:
        """Forget the commands that ended ENDED_COMMANDS_MS or more before event time ``ts``."""
        ended = self._ended
        while ended and ended[0][0] + ENDED_COMMANDS_MS <= ts:
            _, command_id = heappop(ended)
            command = self.commands.get(command_id)
            if command is not None and not command.live:
                self._forget(command_id, state)

    def _forget(self, command_id: str, state: State | None = None) -> None:
        command = self.commands.pop(command_id)
        self.dirty_commands.add(command_id)
        episodes = self.positions.get(command.key) if command.legs & POSITION_LEG else None
        if episodes is None:
            return  # a target leg only: its bankrupt position's record is another partition's
        episodes.done.remove(command_id)
        self.dirty_positions.add(command.key)
        if episodes.empty() and state is not None and command.key not in state.positions:
            del self.positions[command.key]

    def expired(self, market: str, ts: int) -> list[Command]:
        """Live commands of the market whose time-out is at or before ``ts``, oldest first."""
        heap = self._expiry.get(market)
        found = []
        while heap and heap[0][0] <= ts:
            expires_ts, command_id = heappop(heap)
            command = self.commands.get(command_id)
            if command is not None and command.live and command.expires_ts == expires_ts:
                found.append(command)
        return found

    # -- answers -----------------------------------------------------------------------------

    def check_answer(self, state: State, event) -> Verdict | None:
        """Why this liquidation or ADL fill answers no command of its position, or None (before it is applied)."""
        command = self.commands.get(event.command_id)
        key = (event.account, event.market, event.position_side)
        # a command of other accounts only is unknown here: another partition may hold it (fund_stage)
        if command is None or event.account not in (command.account, command.target_account):
            return Verdict("deadletter", r.UNKNOWN_COMMAND, f"no command {event.command_id!r} was issued for {key}")
        if type(event) is AdlFill:
            if command.target != key or not command.legs & TARGET_LEG:
                return Verdict("deadletter", r.COMMAND_FOR_OTHER_POSITION,
                               f"{event.command_id} is not an ADL command against {key}")  # fmt: skip
            unanswered, side = command.qty - command.target_filled, other_side(command.closing_side)
        else:
            if command.key != key or not command.legs & POSITION_LEG:
                return Verdict("deadletter", r.COMMAND_FOR_OTHER_POSITION,
                               f"{event.command_id} was issued for {command.key}, not {key}")  # fmt: skip
            unanswered, side = command.qty - command.filled, command.closing_side
        if type(event) is not AdlFill and event.order != command.order:
            return Verdict("deadletter", r.ANSWER_ORDER_MISMATCH,
                           f"{event.command_id} is a {command.order} order; the fill says {event.order}")  # fmt: skip
        if command.order == MARKET and (event.price < command.protection if side == SELL else event.price > command.protection):
            return Verdict("deadletter", r.ANSWER_BEYOND_PROTECTION,
                           f"{event.command_id} {side}s at no worse than {dec(command.protection)}; filled at {dec(event.price)}")  # fmt: skip
        if event.qty > unanswered:
            return Verdict("deadletter", r.ANSWER_EXCEEDS_COMMAND,
                           f"{dec(event.qty)} exceeds the {dec(unanswered)} of {event.command_id} not yet answered")  # fmt: skip
        position = state.positions.get(key)
        if position is not None and not closes(side, position.size):
            return Verdict("deadletter", r.ANSWER_SIDE_MISMATCH,
                           f"{event.command_id} {side}s, which no longer closes the position of size {dec(position.size)}")  # fmt: skip
        return None  # a flat position: the reducer says the fill exceeds it

    def record_answer(self, event) -> Command:
        """Count an applied answer against its command; the command ends when every leg is answered."""
        command = self.commands[event.command_id]
        self.dirty_commands.add(command.command_id)
        if type(event) is AdlFill:
            self._reserve(command.target, -min(event.qty, command.open_target_qty()))
            command.target_filled += event.qty
            if not command.target_leg_open():
                self._drop_target(command)
        else:
            command.filled += event.qty
            episodes = self.positions.get(command.key)
            if not command.position_leg_open() and episodes is not None and command.command_id in episodes.open:
                self._leg_done(episodes, command.command_id)
        if command.live and not command.position_leg_open() and not command.target_leg_open():
            self.end(command, event.ts)  # every leg this book holds is answered (or cut)
        return command

    def _drop_target(self, command: Command) -> None:
        ids = self.targets.get(command.target)
        if ids is not None and command.command_id in ids:
            ids.remove(command.command_id)
            if not ids:
                del self.targets[command.target]

    # -- state -------------------------------------------------------------------------------

    def sections(self) -> list:
        """The whole book as digested and as restored: the stored records in key order."""
        return [
            [BOOK_VERSION],
            [self.commands[i] for i in sorted(self.commands)],
            [[*key, self.positions[key]] for key in sorted(self.positions)],
        ]

    def changes(self) -> tuple[dict[str, Command | None], dict[PositionKey, PositionEpisodes | None]]:
        """The records changed since ``clear_dirty`` (None: deleted), in the form ``sections`` lists them."""
        return ({i: self.commands.get(i) for i in sorted(self.dirty_commands)},
                {k: self.positions.get(k) for k in sorted(self.dirty_positions)})  # fmt: skip

    def clear_dirty(self) -> None:
        self.dirty_commands.clear()
        self.dirty_positions.clear()

    def restore(self, sections: list) -> None:
        version, commands, positions = sections
        if version != [BOOK_VERSION]:
            raise ValueError(f"episode book {version!r} is not {BOOK_VERSION}")
        self.commands = {c.command_id: c for c in (msgspec.convert(c, Command) for c in commands)}
        self.positions = {(a, m, s): msgspec.convert(e, PositionEpisodes) for a, m, s, e in positions}
        self.targets, self._expiry, self._ended, self._reserved = {}, {}, [], {}
        self.clear_dirty()
        for command_id in sorted(self.commands):
            command = self.commands[command_id]
            if command.target_leg_open():
                self.targets.setdefault(command.target, []).append(command_id)
                self._reserve(command.target, command.open_target_qty())
            if command.live:
                heappush(self._expiry.setdefault(command.market, []), (command.expires_ts, command_id))
            else:
                heappush(self._ended, (command.ended_ts, command_id))
