"""What every benchmark script needs around its measurements: loops, versions, the machine."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import offload

T = TypeVar("T")


async def yielding_rate(seconds: float, tasks: int = 50) -> float:
    """Steps per second of ``tasks`` tasks that each yield to the loop, over ``seconds``.

    The busy loop on which benchmarks measure what something beside it costs; it runs on any
    backend anyio supports (also under a plain ``asyncio.run``).
    """
    # Imported here: threads.py (d) measures cold starts in processes that import this module,
    # so it must not warm up anyio for them.
    import anyio
    import anyio.lowlevel

    count = 0
    until = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < until:
            await anyio.lowlevel.checkpoint()
            count += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(tasks):
            group.start_soon(worker)

    return count / (time.perf_counter() - start)


def run_asyncio(
    main: Callable[[], Coroutine[Any, Any, T]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """``asyncio.run(main())`` in a fresh loop, with a loop factory, on Python 3.10 too.

    The loop policy is never touched.
    """
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())

    # Python 3.10: what asyncio.run does, with our loop.
    loop = asyncio.new_event_loop() if loop_factory is None else loop_factory()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main())
    finally:
        try:
            tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in tasks:
                task.cancel()

            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def versions(dists: Sequence[str]) -> dict[str, str]:
    """The installed version of each distribution in ``dists``, or "not installed"."""
    found: dict[str, str] = {}
    for dist in dists:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"

    return found


def offload_source() -> str:
    """Where the offload under test comes from, and its git commit when it is a checkout."""
    where = os.path.dirname(os.path.abspath(offload.__file__))
    try:
        # Read-only: --no-optional-locks keeps git status from rewriting the index.
        git = ["git", "--no-optional-locks", "-C", where]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return where

    if head.returncode != 0:
        return where

    changes = ", with uncommitted changes" if dirty.stdout.strip() else ""
    return f"{where} (git {head.stdout.strip()}{changes})"


def load_average() -> str:
    """The machine's load averages, as text (the machine is shared: say how busy it was)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):  # not on Windows
        return "unknown"
