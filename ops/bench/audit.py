"""Benchmark: audit replay with and without --verify, and point-in-time queries with and without a snapshot.

    python -m ringfence.ops.bench.audit [--events 750000] [--traders 2000] [--chain-every 100000]
    python -m ringfence.ops.bench.audit --adl [--events 150000] [--repeat 3]

1. Writes a demo session (`ringfence demo`: the matching engine answers the
   liquidation commands, so the log is a realistic exchange history) of
   --events generated events, about 1M with the answers, then runs the core
   over it again into a fresh store (a chain link and a snapshot every
   --chain-every events).
2. replay: rebuild core + liquidation projection from offset 0 in memory
   (`ringfence replay`), events/s.
3. replay --verify: the same, computing each record's fingerprint and each
   chain link and comparing them with the store (`ringfence replay --verify`).
4. --at: the state 50 events before the end, from the nearest snapshot
   (`positions --at`), and without any (from offset 0); and at the end, where
   the store's own checkpoint is the starting point.

--adl instead compares an ADL-heavy replay with one without ADL (issue 14):
two demo sessions of --events generated events, the same seed and traders,
one with the default matching engine (its liquidations refill the insurance
fund: no ADL) and one with a thin book (every liquidation executes 1-3 %
beyond the mark, the fund runs dry and bankrupt positions are deleveraged:
each such event ranks the opposite side). Both are replayed from offset 0 over
the same number of events (the shorter log's), best of --repeat, interleaved;
the ratio of the rates is the figure (target: ADL-heavy >= 80 % of no-ADL).
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from ringfence.events.embedded import EmbeddedLog
from ringfence.ops.demo import run_demo
from ringfence.projections.runner import run_core
from ringfence.projections.store import StateStore
from ringfence.replay.audit import replay_digest
from ringfence.replay.point_in_time import state_at
from ringfence.replay.verify import verify


def timed(action):
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def row(name: str, events: int, seconds: float) -> None:
    rate = f"{events / seconds:>12,.0f}" if events else f"{'-':>12}"
    print(f"{name:<58}{events:>10,}{seconds:>10.2f} s{rate}/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=None, help="default 750,000 (--adl: 150,000)")
    parser.add_argument("--traders", type=int, default=2_000)
    parser.add_argument("--chain-every", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--adl", action="store_true", help="ADL-heavy replay against one without ADL")
    parser.add_argument("--repeat", type=int, default=3, help="--adl: replays of each session (the best counts)")
    args = parser.parse_args()
    if args.adl:
        adl_comparison(args.events or 150_000, args.traders, args.seed, args.repeat)
        return
    args.events = args.events or 750_000
    root = Path(tempfile.mkdtemp(prefix="ringfence-bench-audit-"))
    try:
        summary, seconds = timed(lambda: run_demo(root, seed=args.seed, traders=args.traders, events=args.events))
        count = summary.offset + 1
        print(f"demo session: {count:,} events ({args.traders:,} traders, {summary.commands:,} liquidation "
              f"commands) in {seconds:.1f} s")  # fmt: skip
        shutil.rmtree(root / "state")
        shutil.rmtree(root / "snapshots", ignore_errors=True)
        log = EmbeddedLog(root / "log", writable=False)
        with StateStore(root / "state") as store:
            (_, report), seconds = timed(lambda: run_core(log, store, chain_every=args.chain_every))
        print(f"run (core + projection, a link and a snapshot every {args.chain_every:,} events): "
              f"{report.events / seconds:,.0f} events/s")  # fmt: skip
        end = count - 1
        print(f"{'measure':<58}{'events':>10}{'time':>12}{'rate':>13}")
        (offset, _), seconds = timed(lambda: replay_digest(log))
        row("replay from offset 0", offset + 1, seconds)
        with StateStore(root / "state", read_only=True) as store:
            result, seconds = timed(lambda: verify(log, store))
        assert result.divergence is None, result.divergence
        row(f"replay --verify from offset 0 ({result.links} links, {offset + 1:,} fingerprints)", offset + 1, seconds)
        target = end - 50
        for name, use in ((f"--at {target:,}, from the nearest snapshot", True), (f"--at {target:,}, no snapshot", False)):
            point, seconds = timed(lambda use=use: state_at(log, root / "state", target, use_checkpoints=use))
            row(f"{name} ({point.source})", point.replayed, seconds)
        point, seconds = timed(lambda: state_at(log, root / "state", end))
        row(f"--at {end:,} (the end), from the store ({point.source})", point.replayed, seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def adl_comparison(events: int, traders: int, seed: int, repeat: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="ringfence-bench-adl-"))
    try:
        sessions = []
        for name, thin_book in (("no ADL (default engine)", False), ("ADL-heavy (thin book, the fund runs dry)", True)):
            summary, seconds = timed(lambda thin_book=thin_book: run_demo(root / str(thin_book), seed=seed, traders=traders,
                                                                          events=events, thin_book=thin_book))  # fmt: skip
            print(f"{name}: {summary.offset + 1:,} events, {summary.commands:,} commands, {summary.adl_commands:,} ADL "
                  f"fills, insurance fund {summary.insurance_fund} at the end ({seconds:.1f} s)")  # fmt: skip
            sessions.append((name, EmbeddedLog(root / str(thin_book) / "log", writable=False), summary.offset))
        until = min(offset for _, _, offset in sessions)
        best = {name: float("inf") for name, _, _ in sessions}
        for _ in range(repeat):
            for name, log, _ in sessions:
                _, seconds = timed(lambda log=log: replay_digest(log, until))
                best[name] = min(best[name], seconds)
        print(f"{'replay from offset 0 (best of ' + str(repeat) + ')':<58}{'events':>10}{'time':>12}{'rate':>13}")
        for name, _, _ in sessions:
            row(name, until + 1, best[name])
        no_adl, heavy = (best[name] for name, _, _ in sessions)
        print(f"ADL-heavy / no-ADL rate: {no_adl / heavy:.1%} (target >= 80 %)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
