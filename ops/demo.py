"""`ringfence demo`: a whole exchange session end to end on the embedded log.

A seeded session (ops.simulate) is written to the event log in slices; after
each slice the real `run` path (projections.runner.run_core: reduce, project,
checkpoint, publish) processes it, and a simulated matching engine answers
the new commands and cancels (MatchingEngine: fills near the mark with an
ordinary counterparty, ADL trades, races with cancels, lost orders), which
enter the log with the next slice (the engine's latency). Same seed, same
log, same digest. The summary counts the positions the episode invariant
would call stuck (liquidatable without live commands for all of them): 0.
"""

import random
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ringfence.core import model as m
from ringfence.core.digest import compute_digest
from ringfence.core.fixed import SCALE, format_decimal, parse_decimal
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.log_codec import encode_record
from ringfence.ops.simulate import MARKETS, Session
from ringfence.projections.liquidation import stuck_positions
from ringfence.projections.outbox import publish_pending
from ringfence.projections.runner import run_core
from ringfence.projections.store import StateStore

# The matching engine answers after each slice, so a slice is its latency: 250 events are ~37 s of the
# session's event time, inside the markets' default liquidation time-out (60 s), which so cancels only
# the orders the engine lost.
SLICE_EVENTS = 250
# taker fee the matching engine charges the liquidation's counterparty (0.05 %)
COUNTERPARTY_FEE_BP10 = 5


@dataclass
class DemoSummary:
    events: int
    seconds: float
    open_positions: int
    commands: int
    cancels: int
    live_commands: int
    stuck_positions: int
    adl_commands: int
    liquidation_fills: int
    rejections: int
    deadletters: int
    insurance_fund: str
    partial_liquidations: int
    clearance_fees: str
    auto_margin_added: str
    stop_losses: int  # set by the traders
    stop_loss_closes: int  # close commands of fired stop-losses
    offset: int
    digest: str
    chain_links: int = 0
    chain: str = ""


# The demo links its digest chain (and keeps a snapshot) this often, so that
# `replay --verify`, `chain` and `--at` have something to show on its data.
DEMO_CHAIN_EVERY = 50_000


class MatchingEngine:
    """A liquidation desk: works the commands of the outbox the way a matching engine would.

    After each slice it reads the new outbox records in order: a command
    becomes a working order; a cancel withdraws the order, unless (now and
    then) the order had already executed, in which case its fill arrives
    anyway, naming the cancelled command, as a real race would. A few orders
    are lost and never answered: the projection times them out and commands
    again. The rest execute, each against what the position holds by then:
    the liquidated side near the mark with some slippage and an ordinary
    counterparty, or both sides of an ADL trade at its price.
    """

    LOST = 0.02  # orders the desk never answers
    RACED = 0.15  # cancelled orders that had already executed
    THIN_BOOK_BP = (100, 300)  # ``thin_book``: every liquidation crosses 1-3 %, beyond bankruptcy, so the fund runs dry

    def __init__(self, session: Session, seed: int, thin_book: bool = False):
        self.session = session
        self.rng = random.Random(seed ^ 0x5EED)
        self.thin_book = thin_book
        self.partials = 0  # market liquidations that left part of the position (a policy's steps)
        self.closes = 0  # fired stop-losses whose close order executed

    def answer(self, records: list[dict], state, ts: int) -> list[m.Event]:
        """The answers to one slice's outbox records, against ``state`` (the positions as the log has them)."""
        working: dict[str, dict] = {}
        executed: list[dict] = []
        for record in records:
            if record["type"] == "cancel":
                order = working.pop(record["command_id"], None)
                if order is not None and self.rng.random() < self.RACED:
                    executed.append(order)
            elif self.rng.random() >= self.LOST:
                working[record["command_id"]] = record
        executed.extend(working.values())
        sizes: dict = {}  # what each position holds as the answers so far leave it

        def held(key) -> int:
            if key not in sizes:
                position = state.positions.get(key)
                sizes[key] = 0 if position is None else position.size
            return sizes[key]

        answers: list[m.Event] = []
        for order in executed:
            kind = order["type"]
            handle = self._deleverage if kind == "adl" else self._close if kind == "close" else self._liquidate
            answers.extend(handle(order, held, sizes, ts))
        return answers

    @staticmethod
    def _closing(command: dict, held) -> tuple[str, int, int, bool, tuple, int, int]:
        """(market, tick, mark, selling, key, size, qty) of a closing command: it closes what the account holds now
        (it may have traded since the command), at most the command's qty."""
        market = command["market"]
        selling = command["side"] == m.SELL
        key = (command["account"], market, command["position_side"])
        size = held(key)
        qty = min(parse_decimal(command["qty"]), size if selling else -size)
        return market, MARKETS[market][0], parse_decimal(command["mark_price"]), selling, key, size, qty

    def _close(self, command: dict, held, sizes: dict, ts: int) -> list[m.Event]:
        """A fired stop-loss: the trader's own market order, 0-10 bp from the mark, against an ordinary counterparty."""
        market, tick, mark, selling, key, size, qty = self._closing(command, held)
        if qty <= 0:
            return []
        sizes[key] = size + (-qty if selling else qty)
        self.session.sizes[key] = sizes[key]
        slippage_bp = self.rng.randint(0, 10)
        price = max(tick, mark * (10_000 - slippage_bp if selling else 10_000 + slippage_bp) // 10_000 // tick * tick)
        self.closes += 1
        fee = -((-qty * price * COUNTERPARTY_FEE_BP10) // (SCALE * 10_000))
        answer_id = f"cl-{command['command_id']}-{ts}"
        trade = m.Fill(answer_id, ts, command["account"], market, command["position_side"], command["side"], qty, price,
                       fee)  # fmt: skip
        return [trade, self._counterparty_fill(command["account"], market, selling, qty, price, sizes, held, answer_id,
                                               ts)]  # fmt: skip

    def _counterparty_fill(self, account: str, market: str, selling: bool, qty: int, price: int, sizes: dict, held,
                           answer_id: str, ts: int) -> m.Fill:  # fmt: skip
        """The ordinary trader on the other side of a closing order (never the account itself)."""
        counterparty = self.rng.choice(self.session.traders)
        while counterparty == account:
            counterparty = self.rng.choice(self.session.traders)
        leg = self.session.choose_leg(counterparty, market, buying=selling, qty=qty)
        counter_key = (counterparty, market, leg)
        self.session.sizes[counter_key] = self.session.sizes.get(counter_key, 0) + (qty if selling else -qty)
        sizes[counter_key] = held(counter_key) + (qty if selling else -qty)  # its ordinary fill is an answer too
        fee = -((-qty * price * COUNTERPARTY_FEE_BP10) // (SCALE * 10_000))
        return m.Fill(f"lc-{answer_id}", ts, counterparty, market, leg, m.BUY if selling else m.SELL, qty, price, fee)

    def _liquidate(self, command: dict, held, sizes: dict, ts: int) -> list[m.Event]:
        market, tick, mark, selling, key, size, qty = self._closing(command, held)
        if qty <= 0:
            return []
        # a liquidation order crosses the book: 0-20 bp of slippage, and a thin book now and then costs 1 %
        if self.thin_book:
            slippage_bp = self.rng.randint(*self.THIN_BOOK_BP)
        else:
            slippage_bp = self.rng.randint(0, 20) if self.rng.random() > 0.02 else 100
        moved = mark * (10_000 - slippage_bp if selling else 10_000 + slippage_bp) // 10_000
        price = max(tick, moved // tick * tick)
        order = command.get("order", m.TAKEOVER)
        if order == m.MARKET:  # a market order fills no worse than its protection price
            protection = parse_decimal(command["bankruptcy_price"])
            price = max(price, protection) if selling else min(price, protection)
            if qty < (size if selling else -size):
                self.partials += 1
        sizes[key] = size + (-qty if selling else qty)
        self.session.sizes[key] = sizes[key]
        answer_id = f"lf-{command['command_id']}-{ts}"
        return [
            m.LiquidationFill(answer_id, ts, command["command_id"], command["account"], market,
                              command["position_side"], qty, price, order),
            self._counterparty_fill(command["account"], market, selling, qty, price, sizes, held, answer_id, ts),
        ]  # fmt: skip

    def _deleverage(self, command: dict, held, sizes: dict, ts: int) -> list[m.Event]:
        """Both sides of an ADL trade at the bankruptcy price: the counterparty closes, the bankrupt is liquidated."""
        market = command["market"]
        price = parse_decimal(command["price"])
        counter_key = (command["account"], market, command["position_side"])
        bankrupt_key = (command["bankrupt_account"], market, command["bankrupt_position_side"])
        counter_held, bankrupt_held = held(counter_key), held(bankrupt_key)
        # both positions may have traded since the command: trade what both still hold
        counter_buys = command["side"] == m.BUY
        qty = min(parse_decimal(command["qty"]), -counter_held if counter_buys else counter_held,
                  bankrupt_held if counter_buys else -bankrupt_held)  # fmt: skip
        if qty <= 0:
            return []
        sizes[counter_key] = self.session.sizes[counter_key] = counter_held + (qty if counter_buys else -qty)
        sizes[bankrupt_key] = self.session.sizes[bankrupt_key] = bankrupt_held + (-qty if counter_buys else qty)
        answer_id = f"{command['command_id']}-{ts}"
        return [
            m.AdlFill(f"af-{answer_id}", ts, command["command_id"], command["account"], market,
                      command["position_side"], qty, price),
            m.LiquidationFill(f"ab-{answer_id}", ts, command["command_id"], command["bankrupt_account"],
                              market, command["bankrupt_position_side"], qty, price),
        ]  # fmt: skip


def run_demo(data: Path, *, seed: int, traders: int, events: int, progress=None, stop=None,
             thin_book: bool = False) -> DemoSummary:
    """The session through log, run and engine, slice by slice; ``stop()`` true ends it after a slice (checkpointed).

    ``thin_book``: the engine liquidates 1-3 % beyond the mark, the insurance fund runs dry and bankrupt
    positions are deleveraged (an ADL-heavy session, for the audit benchmark).
    """
    live: dict = {}

    def free_balance(trader: str) -> int:
        wallet = live["state"].wallets.get((trader, "USDT")) if "state" in live else None
        return session.deposit[trader] if wallet is None else wallet.balance

    session = Session(seed, traders, free_balance=free_balance)
    engine = MatchingEngine(session, seed, thin_book)
    generated = session.events(events)
    started = time.perf_counter()
    decode_command = msgspec.json.Decoder().decode
    state = projection = chain = None
    totals = {"events": 0, "commands": 0, "cancels": 0, "adl": 0, "fills": 0, "rejections": 0, "deadletters": 0,
              "closes": 0}  # fmt: skip
    pending: list[m.Event] = []
    with EmbeddedLog(data / "log") as log, StateStore(data / "state") as store, \
            EmbeddedLog(data / "commands") as commands_log:  # fmt: skip
        seen = store.published()
        exhausted = False
        while not exhausted or pending:
            batch, pending = pending, []
            for event in generated:
                batch.append(event)
                if len(batch) >= SLICE_EVENTS:
                    break
            else:
                exhausted = True
            if not batch:
                break
            for event in batch:
                log.append(encode_record(event))
            log.commit()
            state, report = run_core(log, store, state=state, projection=projection, chain=chain,
                                     chain_every=DEMO_CHAIN_EVERY,
                                     publish=lambda: publish_pending(store, {"commands": commands_log}))  # fmt: skip
            projection, chain = report.projection, report.chain
            live["state"] = state
            totals["events"] += report.events
            totals["commands"] += report.commands
            totals["rejections"] += report.rejections
            totals["deadletters"] += report.deadletters
            records = []
            for sequence, record in store.commands(after=seen):
                seen = sequence
                records.append(decode_command(record))
            answers = engine.answer(records, state, session.ts)
            totals["adl"] += sum(type(a) is m.AdlFill for a in answers)
            totals["fills"] += sum(type(a) is m.LiquidationFill for a in answers)
            totals["cancels"] += sum(r["type"] == "cancel" for r in records)
            totals["closes"] += sum(r["type"] == "close" for r in records)
            pending.extend(answers)
            if progress is not None:
                progress(totals["events"], events)
            if stop is not None and stop():
                break  # the engine's answers to this slice are not in the log: they were never sent
        digest = compute_digest(state, projection.canonical_sections())
    return DemoSummary(
        events=totals["events"],
        seconds=time.perf_counter() - started,
        open_positions=len(state.positions),
        commands=totals["commands"],
        cancels=totals["cancels"],
        live_commands=projection.book.live_count(),
        stuck_positions=len(stuck_positions(state, projection)),
        adl_commands=totals["adl"],
        liquidation_fills=totals["fills"],
        rejections=totals["rejections"],
        deadletters=totals["deadletters"],
        insurance_fund=format_decimal(state.insurance.get("USDT", 0)),
        partial_liquidations=engine.partials,
        clearance_fees=format_decimal(state.clearance_fees.get("USDT", 0)),
        auto_margin_added=format_decimal(state.auto_margin_added.get("USDT", 0)),
        stop_losses=session.stop_losses,
        stop_loss_closes=totals["closes"],
        offset=state.offset,
        digest=digest,
        chain_links=(chain.last_offset + 1) // chain.every,
        chain=chain.last_chain,
    )
