"""Lifecycle: lazy start per loop, reuse, close, and nothing left when the loop's run ends."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import offload
from _support import BACKENDS, WAIT, Gate, cancel_when, new_pool, spin_until, until


def offload_threads(pool: offload.ThreadPool) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"offload-{pool.name}-")]


async def nap(pool: offload.ThreadPool) -> None:
    await pool.call(threading.Event().wait, 0.01)


async def abandon_once_running(
    pool: offload.ThreadPool, fn: Callable[[], None], entered: threading.Event
) -> None:
    """Call ``fn`` in ``pool`` and cancel the call once it runs (the thread is abandoned)."""
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when, entered.is_set, scope)
            await pool.call(fn)


class TestStart:
    async def test_workers_start_lazily_and_are_reused(self) -> None:
        """No thread exists before the first call; later calls reuse the same thread."""
        pool = new_pool(max_workers=4)
        assert pool.stats().workers == 0
        first = await pool.call(threading.get_ident)
        assert pool.stats().workers == 1
        for _ in range(20):
            assert await pool.call(threading.get_ident) == first

        assert pool.stats().workers == 1

    async def test_idle_threads_exit_after_idle_timeout(self) -> None:
        """A thread idle for ``idle_timeout`` exits by itself."""
        pool = new_pool(max_workers=2, idle_timeout=0.05)
        await pool.call(int)
        assert pool.stats().workers == 1
        await until(lambda: not pool.stats().workers)

        assert await pool.call(int, "5") == 5  # a new thread starts on demand


class TestEndOfRun:
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_no_thread_left_after_run(self, backend: tuple[str, dict[str, Any]]) -> None:
        """When ``run`` returns, every worker thread of the pool is gone."""
        pool = new_pool(max_workers=8)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(nap, pool)

            assert pool.stats().workers > 0

        anyio.run(main, backend=backend[0], backend_options=backend[1])
        assert offload_threads(pool) == []
        assert pool.stats().workers == 0

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_pool_starts_afresh_in_the_next_run(self, backend: tuple[str, dict[str, Any]]) -> None:
        """A pool used in one run works again in the next, with new threads."""
        pool = new_pool()

        async def main() -> int:
            return await pool.call(threading.get_ident)

        first = anyio.run(main, backend=backend[0], backend_options=backend[1])
        second = anyio.run(main, backend=backend[0], backend_options=backend[1])
        assert isinstance(first, int)
        assert isinstance(second, int)
        assert pool.stats().completed == 2

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_running_call_is_waited_for(self, backend: tuple[str, dict[str, Any]]) -> None:
        """At the end of the run a call still running is given ``shutdown_timeout`` to end."""
        pool = new_pool(shutdown_timeout=WAIT)
        release = threading.Event()
        finished = threading.Event()
        timer = threading.Timer(0.05, release.set)

        entered = threading.Event()

        def slow() -> None:
            entered.set()
            release.wait(WAIT)
            finished.set()

        async def main() -> None:
            # abandoned once it runs; the thread runs on past the end of main()
            await abandon_once_running(pool, slow, entered)

            timer.start()

        anyio.run(main, backend=backend[0], backend_options=backend[1])
        timer.join()
        assert finished.is_set()
        assert offload_threads(pool) == []

    def test_asyncio_task_left_running_is_cancelled_and_cleaned(self) -> None:
        """A task still awaiting a call when ``asyncio.run`` ends leaves no thread behind."""
        pool = new_pool(max_workers=1, shutdown_timeout=WAIT)
        entered = threading.Event()
        release = threading.Event()
        outcomes: list[str] = []
        timer = threading.Timer(0.05, release.set)

        def blocking() -> None:
            entered.set()
            release.wait(WAIT)

        async def waiter(name: str) -> None:
            try:
                await pool.call(blocking)
            except asyncio.CancelledError:
                outcomes.append(f"{name} cancelled")
                raise
            except offload.PoolClosed:
                outcomes.append(f"{name} closed")

        async def main() -> None:
            asyncio.create_task(waiter("running"))  # left behind on purpose
            while not entered.is_set():
                await asyncio.sleep(0.001)

            asyncio.create_task(waiter("pending"))
            await asyncio.sleep(0)
            timer.start()

        asyncio.run(main())
        timer.join()
        assert sorted(outcomes) == ["pending cancelled", "running cancelled"]
        assert offload_threads(pool) == []

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_stuck_thread_is_named_and_does_not_hold_up_run(
        self, backend: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Past ``shutdown_timeout`` a warning names the function, and ``run`` returns."""
        pool = new_pool(shutdown_timeout=0.05)
        release = threading.Event()
        entered = threading.Event()

        def wedged_function() -> None:
            entered.set()
            release.wait(WAIT)

        async def main() -> None:
            await abandon_once_running(pool, wedged_function, entered)

        with caplog.at_level(logging.WARNING, logger="offload"):
            anyio.run(main, backend=backend[0], backend_options=backend[1])

        try:
            [record] = [r for r in caplog.records if r.name == "offload"]
            assert "wedged_function" in record.getMessage()
            assert pool.name in record.getMessage()
            assert all(t.daemon for t in offload_threads(pool))
        finally:
            release.set()
            spin_until(lambda: not offload_threads(pool), "the stuck thread to end")

    def test_stuck_thread_does_not_hold_up_interpreter_exit(self) -> None:
        """A program whose offloaded call never returns still exits when ``main`` ends."""
        script = textwrap.dedent(
            """
            import asyncio, threading, offload

            pool = offload.ThreadPool("stuck", shutdown_timeout=0.1)

            entered = threading.Event()

            def stuck():
                entered.set()
                threading.Event().wait()  # waits forever

            async def main():
                task = asyncio.create_task(pool.call(stuck))
                while not entered.is_set():
                    await asyncio.sleep(0.001)

                task.cancel()  # abandoned: the thread runs on

            asyncio.run(main())
            print("run returned")
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "run returned" in done.stdout
        assert "still running" in done.stderr
        assert "stuck" in done.stderr


class TestAclose:
    async def test_aclose_turns_pending_calls_away_and_waits_for_running(self) -> None:
        """``aclose()`` ends pending calls with ``PoolClosed`` and lets running ones finish."""
        pool = new_pool(max_workers=1, shutdown_timeout=WAIT)
        gate = Gate()
        results: dict[str, object] = {}

        async def call(tag: str) -> None:
            try:
                results[tag] = await pool.call(gate.pass_through, tag)
            except offload.PoolClosed as exc:
                results[tag] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "running")
            await gate.entered(1)
            tg.start_soon(call, "pending")
            await until(lambda: pool.stats().pending == 1)

            closed = anyio.Event()

            async def close() -> None:
                await pool.aclose()
                closed.set()

            tg.start_soon(close)
            await until(lambda: "pending" in results)

            assert isinstance(results["pending"], offload.PoolClosed)
            assert not closed.is_set()  # still waiting for the running call
            gate.open()

        assert results["running"] == "running"
        assert gate.order == ["running"]
        assert offload_threads(pool) == []

    async def test_call_after_aclose_raises_pool_closed(self) -> None:
        """After ``aclose()`` a call in the same loop raises ``PoolClosed`` saying why."""
        pool = new_pool()
        await pool.call(int)
        await pool.aclose()
        with pytest.raises(offload.PoolClosed, match=f"pool '{pool.name}' is closed"):
            await pool.call(int)

        await pool.aclose()  # closing twice is fine

    async def test_aclose_before_any_call(self) -> None:
        """A pool closed before its first call refuses calls in that loop."""
        pool = new_pool()
        await pool.aclose()
        with pytest.raises(offload.PoolClosed):
            await pool.call(int)

    async def test_async_with_closes_the_pool(self) -> None:
        """``async with pool:`` closes the pool at the end of the block."""
        pool = new_pool()
        async with pool as entered:
            assert entered is pool
            assert await pool.call(int, "3") == 3

        assert offload_threads(pool) == []
        with pytest.raises(offload.PoolClosed):
            await pool.call(int)

    async def test_other_pools_are_not_closed(self) -> None:
        """Closing one pool leaves the others working."""
        one, two = new_pool(), new_pool()
        await one.call(int)
        await one.aclose()
        assert await two.call(int, "9") == 9


class TestManyLoops:
    def test_loops_in_two_threads_share_a_pool(self) -> None:
        """Two event loops in two threads use one pool, each with its own workers."""
        pool = new_pool(max_workers=2)
        results: list[int] = []

        def run_loop() -> None:
            async def main() -> None:
                results.extend([await pool.call(abs, -i) for i in range(50)])

            asyncio.run(main())

        threads = [threading.Thread(target=run_loop) for _ in range(2)]
        for thread in threads:
            thread.start()

        for thread in threads:
            thread.join(WAIT)

        assert sorted(results) == sorted(list(range(50)) * 2)
        assert pool.stats().completed == 100
        assert offload_threads(pool) == []
