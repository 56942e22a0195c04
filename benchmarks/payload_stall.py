"""How long a big process payload holds the event loop: the loop's longest gap.

A heartbeat task sleeps 1 ms in a loop and records the longest gap between two beats while
``await pool.call(echo, payload)`` makes a 100 MB round trip (``bytes``, and a NumPy float64
array when NumPy is installed) on a warm pool of one worker process. Each round measures
every payload once, one after the other (the result is freed after the heartbeat
stops: that is the caller's cost, not offload's); the table gives the median over the rounds of the
longest gap, and of the round trip's wall time.

    python benchmarks/payload_stall.py [--rounds 9] [--mb 100] [--backend asyncio|uvloop|trio]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from collections.abc import Callable
from time import perf_counter
from typing import Any

import anyio

import offload

BEAT = 0.001


def echo(value: object) -> object:
    return value


def payloads(mb: int) -> dict[str, Callable[[], object]]:
    size = mb * 1_000_000
    found: dict[str, Callable[[], object]] = {"bytes": lambda: b"\0" * size}
    try:
        np: Any = importlib.import_module("numpy")
    except ImportError:
        print("numpy is not installed: bytes only", file=sys.stderr)
    else:
        found["numpy"] = lambda: np.zeros(size // 8)

    return found


async def one(pool: offload.ProcessPool, value: object) -> tuple[float, float]:
    """Return the loop's longest gap between beats, and the wall time, of one round trip."""
    gap = 0.0
    done = False

    async def heartbeat() -> None:
        nonlocal gap
        last = perf_counter()
        while not done:
            await anyio.sleep(BEAT)
            now = perf_counter()
            gap = max(gap, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        await anyio.sleep(0.02)  # the heartbeat ticks
        gap = 0.0
        start = perf_counter()
        result = await pool.call(echo, value)
        wall = perf_counter() - start
        await anyio.sleep(0.005)  # the beat after the answer
        done = True

    del result  # freeing 100 MB takes the loop milliseconds too: not counted here

    return gap, wall


async def main(rounds: int, mb: int) -> dict[str, list[tuple[float, float]]]:
    made = payloads(mb)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in made}
    pool = offload.ProcessPool("stall", max_workers=1)
    async with pool:
        await pool.call(echo, b"warm")
        for _ in range(rounds):
            for name, make in made.items():
                value = make()
                results[name].append(await one(pool, value))
                del value

    return results


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    args = parser.parse_args()
    backend = "trio" if args.backend == "trio" else "asyncio"
    options: dict[str, object] = {}
    if args.backend == "uvloop":
        options["loop_factory"] = importlib.import_module("uvloop").new_event_loop

    results = anyio.run(main, args.rounds, args.mb, backend=backend, backend_options=options)
    print(f"{args.mb} MB round trip, echo(payload), {args.rounds} rounds, {args.backend}:")
    print(f"{'payload':<8} {'longest gap (median)':>22} {'(min-max)':>16} {'wall (median)':>14}")
    for name, rows in results.items():
        gaps = [gap * 1e3 for gap, _ in rows]
        walls = [wall * 1e3 for _, wall in rows]
        print(
            f"{name:<8} {statistics.median(gaps):>19.1f} ms {min(gaps):>7.1f}-{max(gaps):<6.1f}"
            f"   {statistics.median(walls):>10.1f} ms"
        )


if __name__ == "__main__":
    cli()
