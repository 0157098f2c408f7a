"""Position triggers by price: which stop-losses and take-profits a mark reaches (docs/decisions.md, "Position triggers").

The reducer keeps the live triggers (core.state.Trigger: set, cancelled, and
dropped with their position); this is the projection's index of them, per
market two heaps: triggers that fire at a mark at or below their price (a
long's stop-loss, a short's take-profit; a max-heap) and those that fire at or
above it (a min-heap). A quiet mark costs two peeks; a mark that reaches k
triggers pops k. Entries are lazy: one whose trigger is gone (cancelled, its
position closed) or replaced (the same id set again: another ``serial``), or
that already fired, is dropped when it surfaces. The heaps are derived from
the core state and rebuilt on restore; which triggers fired is the
projection's state (stored, digested).
"""

from heapq import heapify, heappop, heappush

from ringfence.core.state import PositionKey, State, Trigger, TriggerKey

Entry = tuple[int, int, TriggerKey]  # (sort key: -price below / price above, serial, trigger key)


class TriggerIndex:
    def __init__(self) -> None:
        self.heaps: dict[str, tuple[list[Entry], list[Entry]]] = {}  # market -> (below, above)
        self.fired: dict[PositionKey, dict[str, int]] = {}  # position -> {trigger id: serial} of triggers that fired

    def rebuild(self, state: State) -> None:
        self.heaps.clear()
        for trigger_key, trigger in state.triggers.items():
            self.add(trigger_key, trigger, heapify_later=True)
        for heaps in self.heaps.values():
            for heap in heaps:
                heapify(heap)

    def add(self, trigger_key: TriggerKey, trigger: Trigger, heapify_later: bool = False) -> None:
        if self.has_fired(trigger_key, trigger):
            return
        below, above = self.heaps.setdefault(trigger.market, ([], []))
        heap, entry = (below, (-trigger.price, trigger.serial, trigger_key)) if trigger.below else \
            (above, (trigger.price, trigger.serial, trigger_key))  # fmt: skip
        if heapify_later:
            heap.append(entry)
        else:
            heappush(heap, entry)

    def has_fired(self, trigger_key: TriggerKey, trigger: Trigger) -> bool:
        fired = self.fired.get((trigger_key[0], trigger.market, trigger.position_side))
        return fired is not None and fired.get(trigger_key[1]) == trigger.serial

    def reached(self, state: State, market: str, mark: int) -> list[tuple[TriggerKey, Trigger]]:
        """Pop the live, unfired triggers of ``market`` that ``mark`` reaches, in trigger-key order."""
        heaps = self.heaps.get(market)
        if heaps is None:
            return []
        below, above = heaps
        reached = []
        triggers = state.triggers
        while below and -below[0][0] >= mark:
            _, serial, trigger_key = heappop(below)
            trigger = triggers.get(trigger_key)
            if trigger is not None and trigger.serial == serial and not self.has_fired(trigger_key, trigger):
                reached.append((trigger_key, trigger))
        while above and above[0][0] <= mark:
            _, serial, trigger_key = heappop(above)
            trigger = triggers.get(trigger_key)
            if trigger is not None and trigger.serial == serial and not self.has_fired(trigger_key, trigger):
                reached.append((trigger_key, trigger))
        reached.sort(key=lambda item: item[0])
        return reached

    def fire(self, key: PositionKey, trigger_id: str, trigger: Trigger) -> None:
        self.fired.setdefault(key, {})[trigger_id] = trigger.serial

    def forget(self, key: PositionKey, trigger_id: str | None = None) -> None:
        """A position closed (every trigger of it died), or one trigger was cancelled."""
        if trigger_id is None:
            self.fired.pop(key, None)
            return
        fired = self.fired.get(key)
        if fired is not None and fired.pop(trigger_id, None) is not None and not fired:
            del self.fired[key]

    def section(self) -> list:
        return [[list(key), sorted(fired.items())] for key, fired in sorted(self.fired.items())]

    def restore(self, section: list) -> None:
        self.fired = {tuple(key): dict((trigger_id, serial) for trigger_id, serial in fired) for key, fired in section}
