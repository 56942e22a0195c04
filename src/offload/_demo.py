"""``python -m offload demo``: blocking, its cure, and the monitor, in a few seconds.

This module stands in for user code: the monitor blames its lines as it would yours.
"""

from __future__ import annotations

import time
from typing import Final

import anyio

import offload

__all__ = ("demo",)

# The monitor blames this module's lines as it would a user's (see ``_monitor._places``).
__offload_user_code__: Final = True

_TICK = 0.01


class _Heartbeat:
    """A task that ticks every 10 ms and keeps the worst lateness of its ticks."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await anyio.sleep(_TICK)
            self.worst = max(self.worst, time.perf_counter() - before - _TICK)
            self.ticks += 1


def fetch_report() -> None:
    """Stand in for a blocking call: ``requests.get``, a database driver, a file read."""
    time.sleep(1)


async def _blocking_pair() -> None:
    fetch_report()
    fetch_report()


async def _offloaded_sleep() -> None:
    await offload.call(fetch_report)


async def _offloaded_pair() -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_offloaded_sleep)
        tasks.start_soon(_offloaded_sleep)


async def _measure(step: object, heartbeat: _Heartbeat) -> float:
    heartbeat.worst = 0.0
    await anyio.sleep(5 * _TICK)
    start = time.perf_counter()
    await step()  # type: ignore[operator]
    took = time.perf_counter() - start
    await anyio.sleep(5 * _TICK)
    return took


async def _main() -> None:
    heartbeat = _Heartbeat()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(heartbeat.run)
        print("offload demo: two calls to a blocking function that takes 1 s (as requests.get")
        print("or a database driver does) inside async code, and a heartbeat")
        print(f"task that should tick every {_TICK * 1000:.0f} ms.\n")

        print("1. Called directly, one after the other:")
        print("       fetch_report()")
        print("       fetch_report()")
        with offload.monitor(threshold=0.1, log=False) as watcher:
            took = await _measure(_blocking_pair, heartbeat)

        print(f"   took {took:.2f} s, and the heartbeat was {heartbeat.worst:.2f} s late: the")
        print("   event loop was frozen; no other task ran.\n")

        print("2. Offloaded, in two tasks at the same time:")
        print("       await offload.call(fetch_report)")
        took = await _measure(_offloaded_pair, heartbeat)
        print(
            f"   took {took:.2f} s, and the heartbeat was at most {heartbeat.worst * 1000:.0f} ms"
        )
        print("   late: the calls overlapped in threads and the loop kept turning.\n")

        print("3. What offload.monitor() saw during step 1:\n")
        print(watcher.report())
        tasks.cancel_scope.cancel()


def demo() -> None:
    """Run the demo on asyncio."""
    anyio.run(_main)
