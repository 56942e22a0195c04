"""Synchronisation helpers for tests: worker threads and the event loop meet on events."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, Literal, overload

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

import offload

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop does not build on Windows
    uvloop = None  # type: ignore[assignment]

try:
    import trio
except ImportError:  # pragma: no cover - trio is in the test dependency group
    trio = None  # type: ignore[assignment]

needs_uvloop = pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
needs_trio = pytest.mark.skipif(trio is None, reason="trio is not installed")

# The event loops every test runs on: the ``anyio_backend`` fixture's parameters, and what
# tests that start their own runs pass to ``anyio.run(main, backend=..., backend_options=...)``.
BACKENDS = [
    pytest.param(("asyncio", dict[str, Any]()), id="asyncio"),
    pytest.param(
        ("asyncio", {"loop_factory": None if uvloop is None else uvloop.new_event_loop}),
        id="asyncio+uvloop",
        marks=needs_uvloop,
    ),
    pytest.param(("trio", dict[str, Any]()), id="trio", marks=needs_trio),
]

Pool = offload.ThreadPool | offload.ProcessPool

# Generous: these bound how long a broken test hangs, they are not timing claims.
WAIT = 10.0

_names = itertools.count(1)


@overload
def new_pool(
    kind: Literal["thread"] = "thread", name: str | None = None, /, **settings: Any
) -> offload.ThreadPool: ...
@overload
def new_pool(
    kind: Literal["process"], name: str | None = None, /, **settings: Any
) -> offload.ProcessPool: ...
@overload
def new_pool(kind: str, name: str | None = None, /, **settings: Any) -> Pool: ...
def new_pool(kind: str = "thread", name: str | None = None, /, **settings: Any) -> Pool:
    """Return a pool of ``kind`` ("thread" or "process") with a name of its own."""
    name = name or f"test-{kind}-{next(_names)}"
    if kind == "thread":
        return offload.ThreadPool(name, **settings)

    return offload.ProcessPool(name, **settings)


class Signal:
    """A flag that a worker thread raises and the event loop awaits."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._token = anyio.lowlevel.current_token()
        self.raised = threading.Event()

    def set(self) -> None:
        """Raise the flag (from a worker thread)."""
        self.raised.set()
        anyio.from_thread.run_sync(self._event.set, token=self._token)

    async def wait(self) -> None:
        """Wait in the event loop until a worker raised the flag."""
        with anyio.fail_after(WAIT):
            await self._event.wait()


class Gate:
    """Blocks worker threads until the test opens it, and counts who is inside.

    ``peak`` is the most threads that were inside at once; ``entered(n)`` waits in the event
    loop until ``n`` threads have come in.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        self.peak = 0
        self.count = 0
        self.order: list[object] = []
        self._token = anyio.lowlevel.current_token()
        self._waiters: list[tuple[int, anyio.Event]] = []

    def _notify(self) -> None:
        for n, event in self._waiters:
            if self.count >= n:
                event.set()

    def pass_through(self, tag: object = None) -> object:
        """Enter, wait for the gate to open, leave (in a worker thread)."""
        with self._lock:
            self.inside += 1
            self.count += 1
            self.peak = max(self.peak, self.inside)
            self.order.append(tag)

        try:
            anyio.from_thread.run_sync(self._notify, token=self._token)
            if not self._open.wait(WAIT):
                raise TimeoutError("the test never opened the gate")
        finally:
            with self._lock:
                self.inside -= 1

        return tag

    async def call(self, pool: offload.ThreadPool, tag: object = None) -> object:
        """Send one call through the gate in ``pool``'s threads."""
        return await pool.call(self.pass_through, tag)

    async def entered(self, n: int) -> None:
        """Wait until ``n`` threads have entered."""
        event = anyio.Event()
        self._waiters.append((n, event))
        self._notify()
        with anyio.fail_after(WAIT):
            await event.wait()

    def open(self) -> None:
        self._open.set()


async def until(predicate: Callable[[], bool], what: str = "a condition") -> None:
    """Yield to the loop until ``predicate()`` holds (a condition, not a duration)."""
    with anyio.fail_after(WAIT):
        while not predicate():
            await anyio.sleep(0.001)

    assert predicate(), what


async def cancel_when(predicate: Callable[[], bool], scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once ``predicate()`` holds."""
    await until(predicate)
    scope.cancel()


def spin_until(predicate: Callable[[], bool], what: str) -> None:
    """Wait in a thread (not the loop) until ``predicate()``; fail after ``WAIT`` seconds."""
    deadline = threading.Event()
    for _ in range(int(WAIT / 0.001)):
        if predicate():
            return

        deadline.wait(0.001)

    raise AssertionError(f"timed out waiting for {what}")


class StatsWatch:
    """Checks a pool's ``stats()`` invariants whenever a test asks, and keeps what broke.

    The test says when each call begins and when it ends for its caller; in between, any
    snapshot must show ``busy <= max_workers``, ``pending <= max_pending``, ``abandoned <=
    busy``, and outcomes that add up: ``submitted`` is the outcomes plus some of the calls
    still in flight, and ``submitted + rejected`` never counts a call the test did not make.
    """

    def __init__(
        self, pool: offload.ThreadPool | offload.ProcessPool | offload.ExecutorPool
    ) -> None:
        self.pool = pool
        self.begun = 0
        self.ended = 0
        self.problems: list[str] = []

    def begin(self) -> None:
        self.begun += 1
        self.check()

    def end(self) -> None:
        self.ended += 1
        self.check()

    def check(self) -> None:
        stats = self.pool.stats()
        settings = self.pool.settings()
        outcomes = (
            stats.completed + stats.failed + stats.cancelled + stats.timed_out + stats.crashed
        )
        in_flight = self.begun - self.ended
        broken = [
            (stats.busy > stats.max_workers, "busy > max_workers"),
            (
                settings.max_pending is not None and stats.pending > settings.max_pending,
                "pending > max_pending",
            ),
            (stats.abandoned > stats.busy, "abandoned > busy"),
            (stats.submitted < outcomes, "more outcomes than submitted calls"),
            (stats.submitted - outcomes > in_flight, "submitted calls without an outcome"),
            (stats.submitted + stats.rejected > self.begun, "calls counted that were not made"),
        ]
        for failed, what in broken:
            if failed:
                self.problems.append(f"{what}: {stats} ({in_flight} in flight)")

    def settled(self) -> None:
        """Check that every call made was counted once: submitted ones with one outcome."""
        self.check()
        stats = self.pool.stats()
        outcomes = (
            stats.completed + stats.failed + stats.cancelled + stats.timed_out + stats.crashed
        )
        if stats.submitted != outcomes or stats.submitted + stats.rejected != self.begun:
            self.problems.append(f"calls not counted once: {stats} ({self.begun} made)")
