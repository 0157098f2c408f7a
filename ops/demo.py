"""`ringfence demo`: a whole exchange session end to end on the embedded log.

A seeded session (ops.simulate) is written to the event log in slices; after
each slice the real `run` path (projections.runner.run_core: reduce, project,
checkpoint, publish) processes it, and a simulated matching engine answers
every new liquidation command with a liquidation fill near the mark plus the
counterparty's ordinary fill, which enter the log with the next slice (the
engine's latency). Same seed, same log, same digest.
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
from ringfence.projections.outbox import publish_pending
from ringfence.projections.runner import run_core
from ringfence.projections.store import StateStore

SLICE_EVENTS = 2_000
# taker fee the matching engine charges the liquidation's counterparty (0.05 %)
COUNTERPARTY_FEE_BP10 = 5


@dataclass
class DemoSummary:
    events: int
    seconds: float
    open_positions: int
    commands: int
    adl_commands: int
    liquidation_fills: int
    rejections: int
    deadletters: int
    insurance_fund: str
    offset: int
    digest: str
    chain_links: int = 0
    chain: str = ""


# The demo links its digest chain (and keeps a snapshot) this often, so that
# `replay --verify`, `chain` and `--at` have something to show on its data.
DEMO_CHAIN_EVERY = 50_000


class MatchingEngine:
    """Answers liquidation commands: the liquidated side at the mark with some slippage, and a counterparty."""

    def __init__(self, session: Session, seed: int):
        self.session = session
        self.rng = random.Random(seed ^ 0x5EED)

    def answer(self, command: dict, ts: int) -> list[m.Event]:
        if command["type"] == "adl":
            return self._deleverage(command, ts)
        market = command["market"]
        tick, _, _, _ = MARKETS[market]
        mark = parse_decimal(command["mark_price"])
        selling = command["side"] == m.SELL
        key = (command["account"], market, command["position_side"])
        # the engine closes what the account holds now (it may have traded since the command)
        held = self.session.sizes.get(key, 0)
        qty = min(parse_decimal(command["qty"]), held if selling else -held)
        if qty <= 0:
            return []
        # a liquidation order crosses the book: 0-20 bp of slippage, and a thin book now and then costs 1 %
        slippage_bp = self.rng.randint(0, 20) if self.rng.random() > 0.02 else 100
        moved = mark * (10_000 - slippage_bp if selling else 10_000 + slippage_bp) // 10_000
        price = max(tick, moved // tick * tick)
        self.session.sizes[key] = self.session.sizes.get(key, 0) + (-qty if selling else qty)
        counterparty = self.rng.choice(self.session.traders)
        while counterparty == command["account"]:
            counterparty = self.rng.choice(self.session.traders)
        leg = self.session.choose_leg(counterparty, market, buying=selling, qty=qty)
        counter_key = (counterparty, market, leg)
        self.session.sizes[counter_key] = self.session.sizes.get(counter_key, 0) + (qty if selling else -qty)
        fee = -((-qty * price * COUNTERPARTY_FEE_BP10) // (SCALE * 10_000))
        return [
            m.LiquidationFill(f"lf-{command['command_id']}", ts, command["command_id"], command["account"], market,
                              command["position_side"], qty, price),
            m.Fill(f"lc-{command['command_id']}", ts, counterparty, market, leg, m.BUY if selling else m.SELL,
                   qty, price, fee),
        ]  # fmt: skip


    def _deleverage(self, command: dict, ts: int) -> list[m.Event]:
        """Both sides of an ADL trade at the bankruptcy price: the counterparty closes, the bankrupt is liquidated."""
        market = command["market"]
        price = parse_decimal(command["price"])
        qty = parse_decimal(command["qty"])
        counter_key = (command["account"], market, command["position_side"])
        bankrupt_key = (command["bankrupt_account"], market, command["bankrupt_position_side"])
        counter_held, bankrupt_held = self.session.sizes.get(counter_key, 0), self.session.sizes.get(bankrupt_key, 0)
        # both positions may have traded since the command: trade what both still hold
        counter_buys = command["side"] == m.BUY
        qty = min(qty, -counter_held if counter_buys else counter_held, bankrupt_held if counter_buys else -bankrupt_held)
        if qty <= 0:
            return []
        self.session.sizes[counter_key] = counter_held + (qty if counter_buys else -qty)
        self.session.sizes[bankrupt_key] = bankrupt_held + (-qty if counter_buys else qty)
        return [
            m.AdlFill(f"af-{command['command_id']}", ts, command["command_id"], command["account"], market,
                      command["position_side"], qty, price),
            m.LiquidationFill(f"ab-{command['command_id']}", ts, command["command_id"], command["bankrupt_account"],
                              market, command["bankrupt_position_side"], qty, price),
        ]  # fmt: skip


def run_demo(data: Path, *, seed: int, traders: int, events: int, progress=None) -> DemoSummary:
    live: dict = {}

    def free_balance(trader: str) -> int:
        wallet = live["state"].wallets.get((trader, "USDT")) if "state" in live else None
        return session.deposit[trader] if wallet is None else wallet.balance

    session = Session(seed, traders, free_balance=free_balance)
    engine = MatchingEngine(session, seed)
    generated = session.events(events)
    started = time.perf_counter()
    decode_command = msgspec.json.Decoder().decode
    state = projection = chain = None
    totals = {"events": 0, "commands": 0, "adl": 0, "fills": 0, "rejections": 0, "deadletters": 0}
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
            for sequence, record in store.commands(after=seen):
                seen = sequence
                command = decode_command(record)
                answer = engine.answer(command, session.ts)
                totals["adl" if command["type"] == "adl" else "fills"] += bool(answer)
                pending.extend(answer)
            if progress is not None:
                progress(totals["events"], events)
        digest = compute_digest(state, projection.canonical_sections())
    return DemoSummary(
        events=totals["events"],
        seconds=time.perf_counter() - started,
        open_positions=len(state.positions),
        commands=totals["commands"],
        adl_commands=totals["adl"],
        liquidation_fills=totals["fills"],
        rejections=totals["rejections"],
        deadletters=totals["deadletters"],
        insurance_fund=format_decimal(state.insurance.get("USDT", 0)),
        offset=state.offset,
        digest=digest,
        chain_links=(chain.last_offset + 1) // chain.every,
        chain=chain.last_chain,
    )
