"""``pool.stats()``: a frozen snapshot of workers, queue, outcomes and timings."""

from __future__ import annotations

import dataclasses
import threading

import anyio
import anyio.lowlevel
import pytest

import offload
from _support import Gate, cancel_when, new_pool, until


def fail() -> None:
    raise ValueError("no")


class TestSnapshot:
    def test_fresh_pool(self) -> None:
        """A pool that never ran reports zeros and its configured size."""
        stats = new_pool(max_workers=3).stats()
        assert stats.max_workers == 3
        assert (stats.workers, stats.busy, stats.pending, stats.submitted) == (0, 0, 0, 0)
        assert stats.wait_time == offload.TimingSummary()

    def test_snapshot_is_frozen(self) -> None:
        """A snapshot cannot be changed."""
        stats = new_pool().stats()
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.busy = 3  # type: ignore[misc]

    async def test_outcomes_are_disjoint(self) -> None:
        """Each finished call is counted once: completed, failed, cancelled or timed out."""
        pool = new_pool(max_workers=2, max_pending=0)
        gate = Gate()

        @pool(timeout=0.05)
        def stuck() -> None:
            gate.pass_through("timeout")

        for _ in range(3):
            await pool.call(int)

        for _ in range(2):
            with pytest.raises(ValueError, match="no"):
                await pool.call(fail)

        with pytest.raises(TimeoutError):
            await stuck()

        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                tg.start_soon(_cancel_when_entered, gate, scope, 2)
                await pool.call(gate.pass_through, "cancelled")

            # both threads are now busy, so with max_pending=0 the next call is refused
            with pytest.raises(offload.Overloaded):
                await pool.call(int)

            gate.open()

        await until(lambda: not pool.stats().busy)

        stats = pool.stats()
        assert stats.completed == 3
        assert stats.failed == 2
        assert stats.timed_out == 1
        assert stats.cancelled == 1
        assert stats.rejected == 1
        assert stats.submitted == 7
        assert stats.crashed == 0
        assert stats.abandoned == 0

    async def test_timings(self) -> None:
        """``run_time`` and ``wait_time`` summarise every call in seconds."""
        pool = new_pool(max_workers=1)
        for _ in range(5):
            await pool.call(threading.Event().wait, 0.01)

        stats = pool.stats()
        assert stats.run_time.count == 5
        assert stats.run_time.p50 >= 0.01
        assert stats.run_time.max >= stats.run_time.p99 >= stats.run_time.p50
        assert stats.run_time.mean >= 0.01
        assert stats.wait_time.count == 5
        assert stats.wait_time.max >= 0.0

    async def test_gauges_while_running(self) -> None:
        """``workers``, ``busy`` and ``pending`` describe the pool at this instant."""
        pool = new_pool(max_workers=2)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(gate.call, pool, i)

            await gate.entered(2)
            await until(lambda: pool.stats().pending == 3)

            stats = pool.stats()
            assert (stats.workers, stats.busy, stats.pending) == (2, 2, 3)
            gate.open()

        stats = pool.stats()
        assert (stats.busy, stats.pending, stats.completed) == (0, 0, 5)

    def test_counters_survive_the_loop(self) -> None:
        """Counters cover every loop the pool ran in, also after the run ended."""
        pool = new_pool()

        async def main() -> None:
            await pool.call(int)

        anyio.run(main)
        anyio.run(main)
        stats = pool.stats()
        assert (stats.completed, stats.submitted, stats.workers) == (2, 2, 0)


class TestOutcomesAddUp:
    async def test_call_cancelled_waiting_for_its_limit_was_submitted(self) -> None:
        """A call cancelled while it waits for its function's ``limit`` counts as submitted
        and cancelled, so ``submitted`` is always the outcomes plus the calls in flight."""
        pool = new_pool(max_workers=2)
        gate = Gate()

        @pool(limit=1)
        def limited(tag: object) -> object:
            return gate.pass_through(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(limited, "runs")
            await gate.entered(1)
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_when, lambda: pool.stats().pending == 1, scope)
                await limited("waits")

            stats = pool.stats()
            assert (stats.submitted, stats.cancelled, stats.pending) == (2, 1, 0)
            gate.open()

        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.cancelled) == (2, 1, 1)
        assert gate.order == ["runs"]

    async def test_busy_counts_threads_running_a_call(self) -> None:
        """``busy`` never counts more than ``max_workers``, also while finished calls wait
        for the loop to collect them and more wait for a thread."""
        pool = new_pool(max_workers=2)
        peak = 0

        async def many() -> None:
            for _ in range(40):
                await pool.call(threading.Event().wait, 0.0002)

        async def watch(done: anyio.Event) -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, pool.stats().busy)
                await anyio.lowlevel.checkpoint()

        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, done)
            async with anyio.create_task_group() as callers:
                for _ in range(10):
                    callers.start_soon(many)

            done.set()

        assert peak <= 2
        assert pool.stats().completed == 400

    async def test_timeout_then_outer_cancel_counts_what_the_caller_saw(self) -> None:
        """A call whose timeout fired and whose outer scope was then cancelled is counted
        ``timed_out`` only if its caller got ``TimeoutError``, else ``cancelled``."""
        pool = new_pool(max_workers=1)
        timed_out_inside = threading.Event()
        release = threading.Event()

        @pool(timeout=0.01, cancel="wait")
        def stuck() -> None:
            while not offload.cancelled():  # until the timeout tells the worker
                release.wait(0.001)

            timed_out_inside.set()
            release.wait(10)

        seen: list[str] = []
        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as tg:

                async def cancel_outer() -> None:
                    await until(timed_out_inside.is_set, "the timeout fired")
                    outer.cancel()  # cancels this task too: release the worker first
                    release.set()

                tg.start_soon(cancel_outer)
                try:
                    await stuck()
                except TimeoutError:
                    seen.append("timed_out")
                    raise

        if outer.cancelled_caught and not seen:
            seen.append("cancelled")

        stats = pool.stats()
        assert len(seen) == 1
        assert (stats.timed_out, stats.cancelled) == ((1, 0) if seen == ["timed_out"] else (0, 1))


async def _cancel_when_entered(gate: Gate, scope: anyio.CancelScope, n: int) -> None:
    await gate.entered(n)
    scope.cancel()
