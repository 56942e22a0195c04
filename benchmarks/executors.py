"""Executor pools: offload's overhead over each executor, and scaling out on a dask cluster.

``overhead`` (DESIGN.md section 9: under 10% for 1 ms calls): the same calls through
``loop.run_in_executor(executor, fn)`` (the executor called directly) and through an
``offload.ExecutorPool`` over the same executor, 100 calls in flight, for calls that sleep
1 ms and 10 ms (so the executor's size, not the two CPUs here, sets the pace). Executors:
the stdlib's thread pool (8 threads) and process pool (4 processes, forkserver), loky's
reusable executor (4 processes) and a dask ``LocalCluster`` (2 worker processes of 2
threads). Rounds interleave the two ways, alternating which goes first; tables show the
median of the rounds, the spread, and the overhead ``offload / direct - 1``.

``scale``: a pure-Python CPU function (``_work.crunch``, about 15 ms a call) through a
``ProcessPool`` of 2 processes on this machine, then through an ``ExecutorPool`` over a dask
``LocalCluster`` of 1, 2 and 4 worker processes (one thread each): calls per second, median
of the rounds; ``--plot FILE`` draws them (docs/_static/scale-out.png).

``map``: reserved for ``pool.map`` (issue 11's other half: 100,000 small items against
``asyncio.gather`` over ``run_in_executor``, time and peak memory); see ``SCENARIOS``.

Run::

    python benchmarks/executors.py overhead [--rounds 5] [--json FILE]
    python benchmarks/executors.py scale [--rounds 3] [--json FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from _common import run_asyncio
from _work import crunch, sleep_for

import offload

IN_FLIGHT = 100
_names = itertools.count(1)


# -- executors ----------------------------------------------------------------------------------


@contextmanager
def stdlib_threads() -> Iterator[Executor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


@contextmanager
def stdlib_processes() -> Iterator[Executor]:
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(4, mp_context=context) as executor:
        yield executor


@contextmanager
def loky_processes() -> Iterator[Executor]:
    import loky

    executor: Any = loky.get_reusable_executor(max_workers=4)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, kill_workers=True)


@contextmanager
def dask_cluster(workers: int = 2, threads: int = 2) -> Iterator[Executor]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client.get_executor(pure=False)


EXECUTORS: dict[str, Callable[[], Any]] = {
    "ThreadPoolExecutor(8)": stdlib_threads,
    "ProcessPoolExecutor(4)": stdlib_processes,
    "loky (4)": loky_processes,
    "dask LocalCluster 2x2": dask_cluster,
}


# -- the two ways to call -------------------------------------------------------------------------


async def in_flight(calls: int, one: Callable[[], Awaitable[object]]) -> float:
    """Make ``calls`` calls with ``IN_FLIGHT`` of them in flight; return the wall time."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - start


def direct(executor: Executor, seconds: float, calls: int) -> float:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(executor, sleep_for, 0) for _ in range(8)))
        return await in_flight(calls, lambda: loop.run_in_executor(executor, sleep_for, seconds))

    return run_asyncio(main)


def through_offload(executor: Executor, seconds: float, calls: int, feed: int = 1) -> float:
    async def main() -> float:
        pool = offload.ExecutorPool(f"bench-{next(_names)}", executor)
        if feed > 1:  # more calls in the executor than it runs: its queue stays fed
            pool.configure(max_workers=feed * pool.settings().max_workers)

        await asyncio.gather(*(pool.call(sleep_for, 0) for _ in range(8)))
        return await in_flight(calls, lambda: pool.call(sleep_for, seconds))

    return run_asyncio(main)


def overhead(rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, make in EXECUTORS.items():
        try:
            context = make()
            executor = context.__enter__()
        except ImportError as missing:
            print(f"{name}: skipped ({missing.name} is not installed)")
            continue

        try:
            for seconds in (0.001, 0.010):
                calls = 2000 if seconds < 0.005 else 400
                ways: list[tuple[str, Callable[[Executor, float, int], float]]] = [
                    ("direct", direct),
                    ("offload", through_offload),
                    ("offload, 2x max_workers", functools.partial(through_offload, feed=2)),
                ]
                times: dict[str, list[float]] = {way: [] for way, _ in ways}
                for r in range(rounds):
                    for way, measure in ways[r % len(ways) :] + ways[: r % len(ways)]:
                        times[way].append(measure(executor, seconds, calls))

                d = statistics.median(times["direct"])
                row: dict[str, Any] = {"calls": calls, "seconds": times}
                line = f"{name:24} {seconds * 1000:4g} ms x{calls}: direct {d:.3f} s"
                for way, _ in ways[1:]:
                    o = statistics.median(times[way])
                    row[f"overhead ({way})"] = o / d - 1
                    line += f"; {way} {o:.3f} s ({100 * (o / d - 1):+.1f}%)"

                results[f"{name} {seconds * 1000:g} ms"] = row
                spread = max(max(t) / min(t) for t in times.values()) - 1
                print(f"{line}; widest spread {100 * spread:.0f}%", flush=True)
        finally:
            context.__exit__(None, None, None)

    return results


# -- scaling out ----------------------------------------------------------------------------------

N = 400_000  # about 15 ms of pure Python a call here
CALLS = 64


def throughput(pool: offload.ExecutorPool | offload.ProcessPool) -> float:
    async def main() -> float:
        await asyncio.gather(*(pool.call(crunch, 10) for _ in range(8)))  # warm up
        start = time.perf_counter()
        await asyncio.gather(*(pool.call(crunch, N) for _ in range(CALLS)))
        return CALLS / (time.perf_counter() - start)

    return run_asyncio(main)


def scale(rounds: int) -> dict[str, list[float]]:
    start = time.perf_counter()
    crunch(N)
    print(f"one call of crunch({N}) here, in this process: {time.perf_counter() - start:.3f} s")
    results: dict[str, list[float]] = {}
    laptop = offload.ProcessPool("bench-laptop", max_workers=2)
    results["ProcessPool (2 processes)"] = [throughput(laptop) for _ in range(rounds)]
    for workers in (1, 2, 4):
        with dask_cluster(workers=workers, threads=1) as executor:
            pool = offload.ExecutorPool(f"bench-dask-{workers}", executor)
            label = f"dask LocalCluster, {workers} worker process{'es' if workers > 1 else ''}"
            results[label] = [throughput(pool) for _ in range(rounds)]

    for label, rates in results.items():
        print(
            f"{label:40} {statistics.median(rates):6.1f} calls/s "
            f"({min(rates):.1f}-{max(rates):.1f}, {rounds} rounds)",
            flush=True,
        )

    return results


def plot(results: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    medians = [statistics.median(rates) for rates in results.values()]
    low = [m - min(r) for m, r in zip(medians, results.values(), strict=True)]
    high = [max(r) - m for m, r in zip(medians, results.values(), strict=True)]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    colors = ["#888888"] + ["#3b75af"] * (len(labels) - 1)
    ax.barh(labels[::-1], medians[::-1], xerr=[low[::-1], high[::-1]], color=colors[::-1])
    ax.set_xlabel("calls per second (median of rounds; bars: min-max)")
    ax.set_title(f"One CPU function, {CALLS} calls at once, {os.cpu_count()} cores here")
    for y, (value, rates) in enumerate(
        zip(medians[::-1], list(results.values())[::-1], strict=True)
    ):
        ax.text(max(rates), y, f"  {value:.0f}", va="center")

    ax.set_xlim(0, max(max(rates) for rates in results.values()) * 1.15)

    fig.tight_layout()
    fig.savefig(path)


# -- scenarios ------------------------------------------------------------------------------------

# ``map`` belongs to pool.map's half of issue 11: it adds its scenario here (100,000 small
# items through ``pool.map`` against ``asyncio.gather`` over ``run_in_executor``, time and
# peak memory).
SCENARIOS: dict[str, Callable[[int], Any]] = {"overhead": overhead, "scale": scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the raw numbers to this file")
    parser.add_argument("--plot", help="scale: draw the throughputs into this PNG")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
    results = SCENARIOS[args.scenario](args.rounds)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)

    if args.plot and args.scenario == "scale":
        plot(results, args.plot)


if __name__ == "__main__":
    main()
