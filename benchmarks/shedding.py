"""Load shedding: does ``max_pending`` hold for a burst, and what do the shed calls cost?

A service's data layer on ``ThreadPool("db", max_workers=8, max_pending=64)`` meets a burst of
132 requests after a quiet spell (issue 13). Each request is one blocking call of 10 ms. The
burst starts in one loop turn, on a cold pool (no worker yet) and on a warm one (one idle
worker left from an earlier call), on every backend, for a thread pool and a process pool.

For each case it reports how many calls were admitted and shed (min-max over rounds: the bound
says 72 and 60, a few more are admitted when early calls finish while the burst is still being
started), the largest ``pending`` and ``busy`` seen by a watcher that samples ``stats()`` at
every loop turn and as each call is made (the bound: 64 and 8; the script exits with status 1
past them), and, as medians over rounds, the longest wait of an admitted call from the burst to
its result and how long a shed call took to get its ``Overloaded``.

    python benchmarks/shedding.py [--rounds N] [--backend asyncio|uvloop|trio|all]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from _common import load_average, offload_source, versions

import offload

MAX_WORKERS = 8
MAX_PENDING = 64
BURST = 132
WORK = 0.01  # seconds of blocking work per call

_names = itertools.count(1)


def blocking_call() -> None:
    """One request's data-layer call: 10 ms of blocking I/O."""
    time.sleep(WORK)


@dataclass
class Result:
    admitted: int
    shed: int
    max_pending: int
    max_busy: int
    longest_wait: float  # s, burst start to the last admitted result
    shed_latency: float  # s, median time from a call to its Overloaded


async def burst(kind: str, warm: bool) -> Result:
    name = f"shed-{kind}-{next(_names)}"
    pool: offload.ThreadPool | offload.ProcessPool
    if kind == "thread":
        pool = offload.ThreadPool(name, max_workers=MAX_WORKERS, max_pending=MAX_PENDING)
    else:
        pool = offload.ProcessPool(name, max_workers=MAX_WORKERS, max_pending=MAX_PENDING)

    admitted = shed = 0
    peak_pending = peak_busy = 0
    waits: list[float] = []
    shed_times: list[float] = []
    finished = 0

    def sample() -> None:
        nonlocal peak_pending, peak_busy
        stats = pool.stats()
        peak_pending = max(peak_pending, stats.pending)
        peak_busy = max(peak_busy, stats.busy)

    async def one(start: float) -> None:
        nonlocal admitted, shed, finished
        begun = time.perf_counter()
        sample()
        try:
            await pool.call(blocking_call)
        except offload.Overloaded:
            shed += 1
            shed_times.append(time.perf_counter() - begun)
        else:
            admitted += 1
            waits.append(time.perf_counter() - start)
        finally:
            finished += 1

    async def watch() -> None:
        while finished < BURST:
            sample()
            await anyio.lowlevel.checkpoint()

    async with pool:
        if warm:
            await pool.call(int)  # one worker, idle when the burst comes

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for _ in range(BURST):
                tg.start_soon(one, start)

    return Result(
        admitted,
        shed,
        peak_pending,
        peak_busy,
        max(waits, default=0.0),
        statistics.median(shed_times) if shed_times else 0.0,
    )


def run(backend: str, kind: str, warm: bool) -> Result:
    async def main() -> Result:
        return await burst(kind, warm)

    if backend == "trio":
        return anyio.run(main, backend="trio")

    options: dict[str, Any] = {"use_uvloop": backend == "uvloop"}
    return anyio.run(main, backend="asyncio", backend_options=options)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A burst of 132 calls on max_workers=8, max_pending=64: admitted, shed, "
        "peak pending, waits (medians over rounds)."
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio", "all"], default="all")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["asyncio", "uvloop", "trio"] if args.backend == "all" else [args.backend]
    cases = [(b, k, w) for b in backends for k in ("thread", "process") for w in (False, True)]
    results: dict[tuple[str, str, bool], list[Result]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:
            results[case].append(run(*case))

    print(f"offload {offload_source()}; {versions(['anyio', 'trio', 'uvloop'])}")
    print(f"load average {load_average()}; {args.rounds} rounds; medians, min-max for counts")
    print(
        f"burst of {BURST} calls of {WORK * 1000:g} ms on max_workers={MAX_WORKERS}, "
        f"max_pending={MAX_PENDING}: the bound admits {MAX_WORKERS + MAX_PENDING}"
    )
    header = (
        f"{'backend':<8} {'pool':<8} {'start':<5} {'admitted':>9} {'shed':>9} "
        f"{'peak pending':>13} {'peak busy':>10} {'longest wait ms':>16} {'shed in us':>11}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for (backend, kind, warm), rows in results.items():

        def med(values: list[float]) -> float:
            return statistics.median(values)

        admitted = [r.admitted for r in rows]
        shed = [r.shed for r in rows]
        pending = max(r.max_pending for r in rows)
        busy = max(r.max_busy for r in rows)
        ok = ok and pending <= MAX_PENDING and busy <= MAX_WORKERS
        print(
            f"{backend:<8} {kind:<8} {'warm' if warm else 'cold':<5} "
            f"{f'{min(admitted)}-{max(admitted)}':>9} {f'{min(shed)}-{max(shed)}':>9} "
            f"{pending:>13} {busy:>10} "
            f"{med([r.longest_wait for r in rows]) * 1000:>16.1f} "
            f"{med([r.shed_latency for r in rows]) * 1e6:>11.1f}"
        )

    print("(peak pending and peak busy: the largest over all rounds)")
    print("bound held in every round" if ok else "THE BOUND DID NOT HOLD in some round")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
