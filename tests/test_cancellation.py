"""Cancellation and timeouts: pending calls never run, running ones follow ``cancel``."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest

import offload
from _support import WAIT, Gate, Signal, cancel_when, new_pool, until


class TestPending:
    async def test_pending_call_never_runs(self) -> None:
        """A call still waiting for a worker when its awaiter is cancelled never runs."""
        pool = new_pool(max_workers=1)
        gate = Gate()
        ran: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.call, pool, "blocker")
            await gate.entered(1)
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_when, lambda: pool.stats().pending == 1, scope)
                await pool.call(ran.append, "pending")

            assert scope.cancelled_caught
            assert pool.stats().pending == 0
            gate.open()

        # one thread, first in first out: had the cancelled call been queued, it ran by now
        await pool.call(ran.append, "after")
        assert ran == ["after"]
        assert pool.stats().cancelled == 1

    async def test_pending_call_waiting_for_limit_never_runs(self) -> None:
        """A call waiting for its function's ``limit`` when cancelled never runs."""
        pool = new_pool(max_workers=4)
        gate = Gate()
        ran: list[object] = []

        @pool(limit=1)
        def limited(tag: object) -> None:
            ran.append(tag)
            gate.pass_through(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(limited, "first")
            await gate.entered(1)
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_when, lambda: pool.stats().pending == 1, scope)
                await limited("cancelled")

            gate.open()

        gate.open()
        await limited("after")
        assert ran == ["first", "after"]


class TestAbandon:
    async def test_awaiter_gets_control_back_at_once(self) -> None:
        """With ``cancel="abandon"`` the awaiter returns while the thread still runs."""
        pool = new_pool(max_workers=2)
        gate = Gate()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_when_entered, gate, scope)
                await pool.call(gate.pass_through, "abandoned")

        assert scope.cancelled_caught
        assert gate.inside == 1  # the thread is still in the call
        stats = pool.stats()
        assert (stats.busy, stats.abandoned, stats.cancelled) == (1, 1, 1)
        gate.open()
        await until(lambda: pool.stats().busy == 0)
        assert pool.stats().abandoned == 0

    async def test_cancelled_turns_true_in_the_worker(self) -> None:
        """Inside the worker, ``offload.cancelled()`` turns True once the caller is gone."""
        pool = new_pool(max_workers=1)
        started = Signal()
        saw_cancel = threading.Event()

        def long_loop() -> str:
            assert not offload.cancelled()
            started.set()
            for _ in range(int(WAIT / 0.001)):
                if offload.cancelled():
                    saw_cancel.set()
                    return "stopped early"

                threading.Event().wait(0.001)

            return "ran to the end"

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def cancel_after_start() -> None:
                    await started.wait()
                    scope.cancel()

                tg.start_soon(cancel_after_start)
                await pool.call(long_loop)

        await until(saw_cancel.is_set)
        await until(lambda: pool.stats().busy == 0)

    def test_cancelled_is_false_outside_a_worker(self) -> None:
        """Outside an offloaded call ``offload.cancelled()`` is False."""
        assert offload.cancelled() is False


async def _cancel_when_entered(gate: Gate, scope: anyio.CancelScope, n: int = 1) -> None:
    await gate.entered(n)
    scope.cancel()


class TestWait:
    async def test_cancellation_is_delivered_when_the_thread_returns(self) -> None:
        """With ``cancel="wait"`` the awaiter stays until the thread returns, then is
        cancelled and the result is dropped."""
        pool = new_pool(max_workers=2)
        gate = Gate()
        observed: list[bool] = []

        @pool(cancel="wait")
        def careful() -> str:
            gate.pass_through()
            observed.append(offload.cancelled())
            return "dropped"

        finished = anyio.Event()
        result: list[str] = []

        async def consumer(scope: anyio.CancelScope) -> None:
            with scope:
                result.append(await careful())

            finished.set()

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer, scope)
            await gate.entered(1)
            scope.cancel()
            for _ in range(50):  # let the loop run: the consumer must stay put
                await anyio.lowlevel.checkpoint()

            assert not finished.is_set()
            assert gate.inside == 1
            gate.open()
            with anyio.fail_after(WAIT):
                await finished.wait()

        assert scope.cancelled_caught
        assert result == []
        assert observed == [True]  # the worker could see that its caller asked to stop
        assert pool.stats().abandoned == 0

    async def test_wait_policy_pending_call_never_runs(self) -> None:
        """Even with ``cancel="wait"``, a call that never reached a worker does not run."""
        pool = new_pool(max_workers=1)
        gate = Gate()
        ran: list[str] = []

        @pool(cancel="wait")
        def record(tag: str) -> None:
            ran.append(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.call, pool, "blocker")
            await gate.entered(1)
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_when, lambda: pool.stats().pending == 1, scope)
                await record("pending")

            gate.open()

        await record("after")
        assert ran == ["after"]


class TestTimeout:
    async def test_timeout_raises_builtin_timeout_error(self) -> None:
        """A call past its ``timeout`` raises the built-in ``TimeoutError`` naming the function."""
        pool = new_pool(max_workers=1)
        gate = Gate()

        @pool(timeout=0.05)
        def stuck() -> None:
            gate.pass_through()

        with pytest.raises(TimeoutError, match=r"stuck\(\) did not finish within .* 0.05 s"):
            await stuck()

        assert gate.inside == 1  # abandoned: the thread is still there
        gate.open()
        await until(lambda: pool.stats().busy == 0)
        stats = pool.stats()
        assert (stats.timed_out, stats.cancelled, stats.failed) == (0 + 1, 0, 0)

    async def test_timeout_counts_waiting_time(self) -> None:
        """The timeout covers the wait for a worker too: a call that never started times out."""
        pool = new_pool(max_workers=1)
        gate = Gate()
        ran: list[str] = []

        @pool(timeout=0.05)
        def quick(tag: str) -> None:
            ran.append(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.call, pool, "blocker")
            await gate.entered(1)
            with pytest.raises(TimeoutError):
                await quick("never")

            gate.open()

        await pool.call(ran.append, "after")
        assert ran == ["after"]

    async def test_timeout_with_wait_policy(self) -> None:
        """With ``cancel="wait"`` the ``TimeoutError`` comes once the thread returned."""
        pool = new_pool(max_workers=1)
        returned = threading.Event()

        @pool(timeout=0.05, cancel="wait")
        def slow() -> str:
            # runs until told its caller is gone (the timeout), then returns late
            for _ in range(int(WAIT / 0.001)):
                if offload.cancelled():
                    break

                threading.Event().wait(0.001)

            returned.set()
            return "late"

        with pytest.raises(TimeoutError):
            await slow()

        assert returned.is_set()  # the thread was done when the error came
        assert pool.stats().timed_out == 1

    async def test_fast_call_within_timeout_returns(self) -> None:
        """A call that finishes within its timeout returns its result."""

        @offload.thread(timeout=WAIT)
        def fast() -> int:
            return 7

        assert await fast() == 7

    async def test_exception_within_timeout_is_failed_not_timed_out(self) -> None:
        """A ``TimeoutError`` raised by ``fn`` itself is the function's failure, not a timeout."""
        pool = new_pool()

        @pool(timeout=WAIT)
        def raises_timeout() -> None:
            raise TimeoutError("from the function")

        with pytest.raises(TimeoutError, match="from the function"):
            await raises_timeout()

        stats = pool.stats()
        assert (stats.failed, stats.timed_out) == (1, 0)


class TestNativeAsyncio:
    def test_task_cancel_abandons_the_call(self) -> None:
        """``asyncio.Task.cancel()`` on a waiting task gives control back at once."""
        pool = new_pool(max_workers=1)
        release = threading.Event()
        entered = threading.Event()

        def blocking() -> None:
            entered.set()
            release.wait(WAIT)

        async def main() -> None:
            task = asyncio.create_task(pool.call(blocking))
            while not entered.is_set():
                await asyncio.sleep(0.001)

            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            assert pool.stats().abandoned == 1
            release.set()
            while pool.stats().busy:
                await asyncio.sleep(0.001)

        asyncio.run(main())

    def test_wait_for_timeout(self) -> None:
        """``asyncio.wait_for`` around a call times out like any other awaitable."""
        pool = new_pool(max_workers=1)
        release = threading.Event()

        async def main() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(pool.call(release.wait, WAIT), 0.05)

            release.set()
            while pool.stats().busy:
                await asyncio.sleep(0.001)

        asyncio.run(main())
