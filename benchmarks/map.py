"""``pool.map`` on many small items, against ``asyncio.gather`` over the executor peers.

100,000 calls of a function that returns at once, so what is measured is what it costs to
get each item to a thread and its result back, and what is held in memory meanwhile:

* ``offload map``: ``async for r in offload.thread.map(fn, range(N))``, each result used as
  it comes (counted), with the default window (the pool's ``max_workers``), and again with
  ``max_in_flight=256``;
* ``gather(run_in_executor)``: ``await asyncio.gather(*(loop.run_in_executor(None, fn, i)
  for i in range(N)))``, every item's future created at once, as people write it (so it
  holds every future, and returns every result in one list);
* ``gather(to_thread)``: the same over ``asyncio.to_thread(fn, i)``.

The default executor and offload's default pool have the same size, ``min(32, cpus + 4)``.
Time and memory are measured in separate runs: the time rounds interleave the contenders
(the order rotates each round) and report the median, min and max; the memory rounds run
each contender under ``tracemalloc`` and report the median of its peak of traced memory
(what Python allocated beyond what it held at the start), in MB. trio has no ``gather`` peer:
``--backend trio`` measures offload alone.

    python benchmarks/map.py [--items N] [--rounds N] [--backend asyncio|uvloop|trio|all]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from _common import load_average, offload_source, run_asyncio, versions

import offload


def small(item: int) -> int:
    """The work per item: nothing, so the cost measured is the offloading."""
    return item + 1


async def offload_map(n: int) -> int:
    count = 0
    async for _ in offload.thread.map(small, range(n)):
        count += 1  # each result is used as it comes, not kept

    return count


async def offload_map_256(n: int) -> int:
    count = 0
    async for _ in offload.thread.map(small, range(n), max_in_flight=256):
        count += 1

    return count


async def gather_run_in_executor(n: int) -> int:
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(*(loop.run_in_executor(None, small, i) for i in range(n)))
    return len(results)


async def gather_to_thread(n: int) -> int:
    results = await asyncio.gather(*(asyncio.to_thread(small, i) for i in range(n)))
    return len(results)


Contender = Callable[[int], Awaitable[int]]

ASYNCIO: dict[str, Contender] = {
    "offload map": offload_map,
    "offload map (max_in_flight=256)": offload_map_256,
    "gather(run_in_executor)": gather_run_in_executor,
    "gather(to_thread)": gather_to_thread,
}
TRIO: dict[str, Contender] = {
    "offload map": offload_map,
    "offload map (max_in_flight=256)": offload_map_256,
}


def run_once(backend: str, contender: Contender, n: int, memory: bool) -> float:
    """Run one contender on ``n`` items in a fresh loop; return seconds, or peak MB."""

    async def main() -> float:
        await contender(min(n, 100))  # warm: threads started, imports done
        gc.collect()
        if memory:
            tracemalloc.start()
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        count = await contender(n)
        elapsed = time.perf_counter() - start
        assert count == n
        if memory:
            peak = tracemalloc.get_traced_memory()[1] - before
            tracemalloc.stop()
            return peak / 1e6

        return elapsed

    if backend == "trio":
        import trio

        return trio.run(main)

    factory = None
    if backend == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop

    return run_asyncio(main, factory)


def measure(backend: str, n: int, rounds: int, memory_rounds: int) -> dict[str, Any]:
    contenders = TRIO if backend == "trio" else ASYNCIO
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(run_once(backend, contenders[name], n, memory=False))

    for r in range(memory_rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            peaks[name].append(run_once(backend, contenders[name], n, memory=True))

    return {"times": times, "peaks": peaks}


def report(backend: str, n: int, data: dict[str, Any]) -> None:
    times: dict[str, list[float]] = data["times"]
    peaks: dict[str, list[float]] = data["peaks"]
    baseline_name = "gather(run_in_executor)" if backend != "trio" else "offload map"
    baseline = statistics.median(times[baseline_name])
    print(f"\n{backend}: {n:,} items, {len(next(iter(times.values())))} rounds")
    header = (
        f"{'contender':34} {'median s':>9} {'min s':>7} {'max s':>7} {'items/s':>9} "
        f"{'time vs ' + baseline_name:>32} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, values in times.items():
        median = statistics.median(values)
        peak = statistics.median(peaks[name]) if peaks[name] else float("nan")
        print(
            f"{name:34} {median:9.3f} {min(values):7.3f} {max(values):7.3f} "
            f"{n / median:9,.0f} {median / baseline:31.2f}x {peak:8.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-rounds", type=int, default=3)
    parser.add_argument("--backend", default="all", choices=["asyncio", "uvloop", "trio", "all"])
    args = parser.parse_args(argv)
    backends = ["asyncio", "uvloop", "trio"] if args.backend == "all" else [args.backend]
    print(f"offload: {offload_source()}")
    print(f"Python {sys.version.split()[0]}; {versions(['anyio', 'trio', 'uvloop'])}")
    print(f"load average before: {load_average()}")
    for backend in backends:
        try:
            data = measure(backend, args.items, args.rounds, args.memory_rounds)
        except ImportError as exc:
            print(f"\n{backend}: skipped ({exc})")
            continue

        report(backend, args.items, data)

    print(f"\nload average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
