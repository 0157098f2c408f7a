"""Benchmark: `run` (decode, reduce, checkpoint) against the ceiling of any Python reducer.

    python -m ringfence.ops.bench.reduce [--events 1000000] [--traders 20000] [--positions 1000000]

1. Generates a realistic mixed session (ops.simulate) of --events events into
   a fresh embedded log (validated fixed-point records, as `ingest` writes).
2. Ceiling: reads the same log, decodes every record and dispatches it by
   type to a handler that does nothing.
3. run: the real `run_core` over the same log into a fresh RocksDB store,
   checkpoints included, core only (the reducer of issue 2); with
   --with-liquidations also with the liquidation projection.
4. Memory: builds a state of --positions open positions and reports bytes per
   position and the pause of a full garbage collection, with and without
   gc.freeze() (what run_core does after a restore).

The machine is noisy, so the ratio run / ceiling is the figure that counts.
"""

import argparse
import gc
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

from ringfence.core.model import Fill
from ringfence.core.reducer import apply_event
from ringfence.core.state import State
from ringfence.events.embedded import EmbeddedLog
from ringfence.events.log_codec import decode_record, encode_record
from ringfence.ops.simulate import Session, market_events
from ringfence.projections.runner import run_core
from ringfence.projections.store import StateStore


def build_log(directory: Path, events: int, traders: int, seed: int) -> int:
    log = EmbeddedLog(directory)
    count = 0
    for event in Session(seed, traders).events(events):
        log.append(encode_record(event))
        count += 1
        if count % 100_000 == 0:
            log.commit()
    log.commit()
    log.close()
    return count


def measure_ceiling(directory: Path) -> tuple[int, float]:
    log = EmbeddedLog(directory, writable=False)
    handlers: dict = {}

    def nothing(event):
        return None

    started = time.perf_counter()
    count = 0
    for _, payload in log.read(0):
        event = decode_record(payload)
        handler = handlers.get(type(event))
        if handler is None:
            handler = handlers[type(event)] = nothing
        handler(event)
        count += 1
    return count, time.perf_counter() - started


def measure_run(directory: Path, store_dir: Path, liquidations: bool) -> tuple[int, float, int]:
    shutil.rmtree(store_dir, ignore_errors=True)
    log = EmbeddedLog(directory, writable=False)
    log.end_offset()  # counting the log is not reducing it (the ceiling does not count it either)
    started = time.perf_counter()
    with StateStore(store_dir) as store:
        state, report = run_core(log, store, liquidations=liquidations)
    elapsed = time.perf_counter() - started
    gc.unfreeze()
    return report.events, elapsed, len(state.positions)


def measure_memory(positions: int) -> dict:
    """Bytes per open position, and full-collection pauses, at ``positions`` positions."""
    gc.collect()
    tracemalloc.start()
    state = State()
    offset = 0
    for config in market_events(0):
        apply_event(state, offset, config)
        offset += 1
    base = tracemalloc.get_traced_memory()[0]
    price, qty = 60_000 * 10**8, 10**5
    for n in range(positions):
        account = f"A{n // 2:07d}"
        market = "BTCUSDT" if n % 2 == 0 else "ETHUSDT"
        # a realistic open position: wallet, leverage default, one fill
        state.wallet(account, "USDT").balance = 10**12
        apply_event(state, offset, Fill(f"f{n}", n, account, market, "BOTH", "buy", qty, price // (1 if n % 2 == 0 else 20), 0))
        offset += 1
    state.recent_ids.clear()  # remembered ids are bounded separately (DEDUP_GENERATION_EVENTS)
    state.older_ids.clear()
    state.clear_dirty()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    started = time.perf_counter()
    gc.collect()
    pause_plain = time.perf_counter() - started
    started = time.perf_counter()
    gc.collect()
    pause_again = time.perf_counter() - started
    gc.freeze()
    started = time.perf_counter()
    gc.collect()
    pause_frozen = time.perf_counter() - started
    gc.unfreeze()
    return {
        "positions": len(state.positions),
        "bytes_per_position": used // max(len(state.positions), 1),
        "gc_pause_ms": pause_plain * 1000,
        "gc_pause_again_ms": pause_again * 1000,
        "gc_pause_frozen_ms": pause_frozen * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--traders", type=int, default=20_000)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--with-liquidations", action="store_true",
                        help="also time run with the liquidation projection (no matching engine answers here)")
    parser.add_argument("--keep", type=Path, help="keep the generated log and store in this directory")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="ringfence-bench-"))
    log_dir, store_dir = root / "log", root / "state"
    shutil.rmtree(log_dir, ignore_errors=True)
    shutil.rmtree(store_dir, ignore_errors=True)
    try:
        started = time.perf_counter()
        count = build_log(log_dir, args.events, args.traders, args.seed)
        print(f"generated {count:,} events ({args.traders:,} traders) in {time.perf_counter() - started:.1f} s")
        ceiling_events, ceiling_s = measure_ceiling(log_dir)
        run_events, run_s, open_positions = measure_run(log_dir, store_dir, liquidations=False)
        ceiling_rate, run_rate = ceiling_events / ceiling_s, run_events / run_s
        print(f"{'measure':<48}{'events/s':>12}{'us/event':>10}")
        print(f"{'ceiling: decode + no-op dispatch':<48}{ceiling_rate:>12,.0f}{1e6 / ceiling_rate:>10.2f}")
        print(f"{'run: decode + reduce + checkpoint':<48}{run_rate:>12,.0f}{1e6 / run_rate:>10.2f}")
        if args.with_liquidations:
            events_l, seconds_l, _ = measure_run(log_dir, store_dir, liquidations=True)
            print(f"{'run with the liquidation projection':<48}{events_l / seconds_l:>12,.0f}"
                  f"{1e6 * seconds_l / events_l:>10.2f}")  # fmt: skip
        print(f"ratio run / ceiling: {run_rate / ceiling_rate:.1%} (target >= 15 %); "
              f"{open_positions:,} open positions at the end")  # fmt: skip
        if args.positions:
            memory = measure_memory(args.positions)
            print(
                f"memory: {memory['positions']:,} open positions, {memory['bytes_per_position']} bytes each; "
                f"full gc {memory['gc_pause_ms']:.0f} ms (first), {memory['gc_pause_again_ms']:.0f} ms (next), "
                f"{memory['gc_pause_frozen_ms']:.1f} ms after gc.freeze() (what run does after each checkpoint)"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
