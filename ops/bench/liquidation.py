"""Benchmark: cost of a mark with N open positions (index vs naive scan), and run with vs without liquidations.

    python -m ringfence.ops.bench.liquidation [--sizes 1000,10000,100000,1000000] [--demo-events 200000]

1. Per size N, one market holds N open positions (longs and shorts, leverage
   2x-100x, entries spread around the price). A quiet mark moves the price by
   a tick without liquidating anything; a crash mark drops it 8 % and
   liquidates the exposed longs. Both are timed with the projection's index
   and with a naive scan that checks every position exactly.
2. (Printed first.) The demo workload (ops.demo) is generated once; `run_core` then reduces
   its log into fresh stores without the liquidation projection, with it in
   process, and with it in a worker process (projections.worker, what `run`
   does on a long log).
3. Per size N again, every position also holding a stop-loss 5 % from its
   entry: the cost of a quiet mark with the projection (its trigger heaps
   included), and its ratio to the smallest size's (issue 16's target: a
   quiet mark at 1,000,000 positions with a stop-loss each within 2x of the
   cost at 1,000).
"""

import argparse
import gc
import random
import shutil
import tempfile
import time
from pathlib import Path

from ringfence.core import margin as mm
from ringfence.core import model as m
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.events.embedded import EmbeddedLog
from ringfence.ops.demo import run_demo
from ringfence.ops.simulate import market_events
from ringfence.projections.liquidation import LiquidationProjection, Trigger
from ringfence.projections.runner import close_projection, run_core
from ringfence.projections.store import StateStore

U = 10**8
PRICE = 60_000 * U


def build(positions: int, seed: int = 1, stop_losses: bool = False) -> tuple[State, int]:
    rng = random.Random(seed)
    state = State()
    offset = 0
    for config in market_events(0):
        apply_event(state, offset, config)
        offset += 1
    for n in range(positions):
        account = f"A{n:07d}"
        state.wallet(account, "USDT").balance = 10**15
        apply_event(state, offset, m.SetLeverage(f"l{n}", 0, account, "BTCUSDT", rng.choice((2, 5, 10, 20, 50, 100))))
        entry = PRICE + rng.randint(-3000, 3000) * U // 10 // 10**6 * 10**6
        side = m.BUY if n % 2 == 0 else m.SELL
        apply_event(state, offset + 1, m.Fill(f"f{n}", 0, account, "BTCUSDT", "BOTH", side, 10**6, entry, 0))
        offset += 2
    apply_event(state, offset, m.MarkPrice("m0", 0, "BTCUSDT", PRICE))
    if stop_losses:  # 5 % from the entry, against the position: far from any quiet mark
        for n in range(positions):
            account, long = f"A{n:07d}", n % 2 == 0
            entry = abs(state.positions[(account, "BTCUSDT", "BOTH")].cost) // 10**6
            stop = entry * (95 if long else 105) // 100 // 10**7 * 10**7
            offset += 1
            verdict = apply_event(state, offset, m.PositionTrigger(f"s{n}", 0, account, "BTCUSDT", "BOTH", m.STOP_LOSS, stop))
            assert verdict is None, verdict
        offset += 1
    state.clear_dirty()
    return state, offset + 1


def naive_scan(state: State, market: str, offset: int, event, commander: LiquidationProjection) -> int:
    """Check every position exactly; command the liquidatable ones the same way the projection does (bankrupt
    ones at the mark's barrier, by the fund stage, as the projection's own mark handler does)."""
    config = state.markets[market]
    trigger = Trigger(offset, event)
    found: list = []
    for key, position in list(state.positions.items()):
        if key[1] == market and not commander.book.has_live(key) and mm.is_liquidatable(
            config.config.brackets, position.size, position.cost, position.margin, config.mark
        ):
            commander._judge(state, key, trigger, found)
    commander.barrier(state, trigger, found)
    return len(found)


def time_marks(state: State, offset: int, projection: LiquidationProjection | None, prices: list[int]) -> tuple[float, int]:
    commands = 0
    commander = LiquidationProjection()  # keeps the naive scan's outstanding commands
    started = time.perf_counter()
    for n, price in enumerate(prices):
        event = m.MarkPrice(f"q{offset + n}", offset + n, "BTCUSDT", price)
        apply_event(state, offset + n, event)
        if projection is None:
            commands += naive_scan(state, "BTCUSDT", offset + n, event, commander)
        else:
            commands += len(projection.after_event(state, offset + n, event, True))
    return (time.perf_counter() - started) / len(prices), commands


def mark_table(sizes: list[int]) -> None:
    print(f"{'open positions':>14} {'quiet index':>13} {'quiet scan':>13} {'crash index':>13} {'crash scan':>13} {'liquidated':>11}")
    for size in sizes:
        state, offset = build(size)
        projection = LiquidationProjection()
        projection.rebuild(state)
        gc.collect()
        gc.freeze()
        quiet = [PRICE + (n % 2) * U // 10 for n in range(2000)]
        quiet_index, _ = time_marks(state, offset, projection, quiet)
        offset += len(quiet)
        scans = max(3, min(200, 2_000_000 // size))
        quiet_scan, _ = time_marks(state, offset, None, quiet[:scans])
        offset += scans
        crash = [PRICE * 92 // 100 // 10**7 * 10**7]
        crash_scan, _ = time_marks(state, offset, None, crash)
        crash_index, liquidated = time_marks(state, offset + 1, projection, crash)
        gc.unfreeze()
        print(f"{size:>14,} {quiet_index * 1e6:>10.2f} us {quiet_scan * 1e6:>10.0f} us "
              f"{crash_index * 1e3:>10.1f} ms {crash_scan * 1e3:>10.1f} ms {liquidated:>11,}")  # fmt: skip


def trigger_table(sizes: list[int]) -> None:
    print(f"{'open positions':>14} {'stop-losses':>12} {'quiet mark':>13} {'vs smallest':>12}")
    first = None
    for size in sizes:
        state, offset = build(size, stop_losses=True)
        projection = LiquidationProjection()
        projection.rebuild(state)
        gc.collect()
        gc.freeze()
        quiet = [PRICE + (n % 2) * U // 10 for n in range(2000)]
        cost, _ = time_marks(state, offset, projection, quiet)
        gc.unfreeze()
        first = first or cost
        print(f"{size:>14,} {len(state.triggers):>12,} {cost * 1e6:>10.2f} us {cost / first:>11.2f}x")
    print("target: a quiet mark at the largest size within 2x of the smallest's")


def projection_overhead(events: int, rounds: int = 3) -> None:
    """`run` over one demo log: without the projection, with it in process, and with it in a worker process."""
    root = Path(tempfile.mkdtemp(prefix="ringfence-bench-"))
    modes = {"without the projection": (False, False), "projection in process": (True, False),
             "projection in a worker": (True, True)}  # fmt: skip
    try:
        summary = run_demo(root / "demo", seed=1, traders=2000, events=events)
        rates: dict[str, list[float]] = {}
        for _ in range(rounds):  # interleaved, so that drift of the machine hits every mode alike
            for name, (liquidations, worker) in modes.items():
                store_dir = root / "state"
                shutil.rmtree(store_dir, ignore_errors=True)
                log = EmbeddedLog(root / "demo" / "log", writable=False)
                log.end_offset()  # counting the log is the same for every mode: not part of the comparison
                started = time.perf_counter()
                with StateStore(store_dir) as store:
                    _, report = run_core(log, store, liquidations=liquidations, worker=worker)
                    close_projection(report.projection)
                rates.setdefault(name, []).append(report.events / (time.perf_counter() - started))
                gc.unfreeze()
        print(f"demo workload: {summary.events:,} events, {summary.commands:,} liquidation commands "
              f"({summary.adl_commands:,} ADL); best of {rounds} runs each")  # fmt: skip
        without = max(rates["without the projection"])
        for name, measured in rates.items():
            best = max(measured)
            print(f"run, {name:<24} {best:>10,.0f} events/s  {1e6 / best:>5.2f} us/event  {best / without:>4.0%}")
        print("target: run with the projection >= 80 % of run without it")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--demo-events", type=int, default=200_000)
    args = parser.parse_args()
    # `run` first, in a process as fresh as the CLI's: after the 1M-position
    # table the heap is large and fragmented, and every mode runs ~8 % slower
    if args.demo_events:
        projection_overhead(args.demo_events)
    sizes = [int(size) for size in args.sizes.split(",")]
    mark_table(sizes)
    trigger_table(sizes)


if __name__ == "__main__":
    main()
