"""Capacity is honest: ``max_workers``, ``limit``, FIFO order and ``max_pending``."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

import offload
from _support import Gate, new_pool, until


def pending_is(pool: offload.ThreadPool, n: int) -> Callable[[], bool]:
    return lambda: pool.stats().pending == n


class TestMaxWorkers:
    async def test_never_more_than_max_workers_run(self) -> None:
        """With ``max_workers=3``, ten calls run at most three at a time; the rest wait."""
        pool = new_pool(max_workers=3)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(gate.call, pool, i)

            await gate.entered(3)
            await until(lambda: pool.stats().pending == 7, "seven calls pending")
            stats = pool.stats()
            assert (stats.busy, stats.pending, stats.workers) == (3, 7, 3)
            gate.open()

        assert gate.peak == 3
        assert gate.count == 10

    async def test_waiters_are_served_first_come_first_served(self) -> None:
        """Calls that wait for a worker start in the order they were made."""
        pool = new_pool(max_workers=1)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.call, pool, "first")
            await gate.entered(1)
            for i in range(8):
                tg.start_soon(gate.call, pool, i)
                await until(pending_is(pool, i + 1), f"call {i} pending")

            gate.open()

        assert gate.order == ["first", *range(8)]

    async def test_abandoned_threads_keep_their_slot(self) -> None:
        """A thread whose awaiter was cancelled still counts against ``max_workers``."""
        pool = new_pool(max_workers=2)
        gate = Gate()
        async with anyio.create_task_group() as tg:

            async def abandon() -> None:
                with anyio.CancelScope() as inner:
                    tg.start_soon(_cancel_when_entered, gate, inner, 1)
                    await pool.call(gate.pass_through, "abandoned")

            tg.start_soon(abandon)
            await gate.entered(1)
            await until(lambda: pool.stats().abandoned == 1, "one abandoned thread")
            tg.start_soon(gate.call, pool, "second")
            tg.start_soon(gate.call, pool, "third")
            await gate.entered(2)
            await until(lambda: pool.stats().pending == 1, "the third call waits")
            assert gate.inside == 2
            stats = pool.stats()
            assert (stats.busy, stats.abandoned, stats.pending) == (2, 1, 1)
            gate.open()

        assert gate.peak == 2
        assert gate.count == 3

    async def test_live_resize_applies_to_next_calls(self) -> None:
        """``configure(max_workers=...)`` on a running pool lets more calls run at once."""
        pool = new_pool(max_workers=1)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(gate.call, pool, i)

            await gate.entered(1)
            await until(lambda: pool.stats().pending == 3, "three calls pending")
            pool.configure(max_workers=4)
            assert pool.stats().max_workers == 4
            tg.start_soon(gate.call, pool, "new")
            await gate.entered(2)
            gate.open()

        assert gate.peak >= 2
        assert gate.peak <= 4

    async def test_shrinking_never_exceeds_the_new_size(self) -> None:
        """After ``configure`` lowers ``max_workers``, no more than the new size run."""
        pool = new_pool(max_workers=4)
        warm = Gate()
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(warm.call, pool, i)

            await warm.entered(4)
            warm.open()

        assert pool.stats().workers == 4
        pool.configure(max_workers=1)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(gate.call, pool, i)

            await gate.entered(1)
            await until(lambda: pool.stats().pending == 4, "four calls pending")
            assert gate.inside == 1
            gate.open()

        assert gate.peak == 1
        await until(lambda: pool.stats().workers == 1, "extra idle threads exit")


async def _cancel_when_entered(gate: Gate, scope: anyio.CancelScope, n: int) -> None:
    await gate.entered(n)
    scope.cancel()


class TestLimit:
    async def test_limit_caps_one_function(self) -> None:
        """``limit=2`` lets at most two runs of that function overlap in a larger pool."""
        pool = new_pool(max_workers=6)
        gate = Gate()

        @pool(limit=2)
        def limited(tag: object) -> object:
            return gate.pass_through(tag)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(limited, i)

            await gate.entered(2)
            await until(lambda: pool.stats().pending == 4, "four calls wait for the limit")
            assert gate.inside == 2
            gate.open()

        assert gate.peak == 2
        assert sorted(gate.order, key=repr) == list(range(6))

    async def test_limit_waiters_are_served_in_order(self) -> None:
        """Calls waiting for their function's ``limit`` start in the order they were made."""
        pool = new_pool(max_workers=4)
        gate = Gate()

        @pool(limit=1)
        def limited(tag: object) -> object:
            return gate.pass_through(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(limited, "first")
            await gate.entered(1)
            for i in range(5):
                tg.start_soon(limited, i)
                await until(pending_is(pool, i + 1), f"call {i} waits")

            gate.open()

        assert gate.order == ["first", *range(5)]

    async def test_limit_does_not_block_other_functions(self) -> None:
        """While a limited function is at its limit, other calls of the pool still run."""
        pool = new_pool(max_workers=3)
        gate = Gate()

        @pool(limit=1)
        def limited(tag: object) -> object:
            return gate.pass_through(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(limited, "a")
            tg.start_soon(limited, "b")
            await gate.entered(1)
            assert await pool.call(str.upper, "free") == "FREE"
            gate.open()

        assert gate.peak == 1


class TestMaxPending:
    async def test_overloaded_when_pending_queue_is_full(self) -> None:
        """Past ``max_pending`` waiting calls, a call fails at once with ``Overloaded``."""
        pool = new_pool(max_workers=1, max_pending=2)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(gate.call, pool, i)

            await gate.entered(1)
            await until(lambda: pool.stats().pending == 2, "two calls pending")
            with pytest.raises(offload.Overloaded) as info:
                await pool.call(gate.pass_through, "shed")

            assert info.value.pool == pool.name
            assert info.value.max_pending == 2
            assert "max_pending=2" in str(info.value)
            gate.open()

        assert "shed" not in gate.order
        stats = pool.stats()
        assert (stats.rejected, stats.submitted, stats.completed) == (1, 3, 3)

    async def test_max_pending_zero_never_queues(self) -> None:
        """With ``max_pending=0`` a call runs at once or is refused."""
        pool = new_pool(max_workers=1, max_pending=0)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.call, pool, "runs")
            await gate.entered(1)
            with pytest.raises(offload.Overloaded):
                await pool.call(gate.pass_through, "refused")

            gate.open()

        assert await pool.call(str, 1) == "1"

    async def test_calls_waiting_for_a_limit_count_as_pending(self) -> None:
        """Calls that wait for their function's ``limit`` count toward ``max_pending``."""
        pool = new_pool(max_workers=4, max_pending=1)
        gate = Gate()

        @pool(limit=1)
        def limited(tag: object) -> object:
            return gate.pass_through(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(limited, "running")
            await gate.entered(1)
            tg.start_soon(limited, "waiting")
            await until(lambda: pool.stats().pending == 1, "one call waits for the limit")
            with pytest.raises(offload.Overloaded):
                await limited("shed")

            gate.open()

        assert gate.order == ["running", "waiting"]


class TestPendingCount:
    async def test_limit_waiters_and_queue_share_max_pending(self) -> None:
        """Calls waiting for a limit and calls waiting for a worker share ``max_pending``."""
        pool = new_pool(max_workers=1, max_pending=1)
        gate = Gate()

        @pool(limit=1)
        def limited(tag: object) -> object:
            return gate.pass_through(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(limited, "running")
            await gate.entered(1)
            tg.start_soon(limited, "waits for the limit")
            await until(pending_is(pool, 1), "one call waits for the limit")
            with pytest.raises(offload.Overloaded):
                await pool.call(gate.pass_through, "would wait for a worker")

            gate.open()
