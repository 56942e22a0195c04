"""Offloaded generators: one worker thread for the generator's whole life."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Generator
from contextlib import aclosing

import anyio
import pytest

import offload
from _support import Gate, new_pool, until

colour: contextvars.ContextVar[str] = contextvars.ContextVar("colour", default="none")


class TestItems:
    async def test_items_come_from_one_thread(self) -> None:
        """Every item is produced on the same worker thread."""
        pool = new_pool(max_workers=4)

        @pool
        def idents(n: int) -> Generator[int, None, None]:
            for _ in range(n):
                yield threading.get_ident()

        seen = [ident async for ident in idents(20)]
        assert len(seen) == 20
        assert len(set(seen)) == 1
        assert seen[0] != threading.get_ident()

    async def test_generator_holds_one_slot(self) -> None:
        """A live generator holds one worker slot, not one per item."""
        pool = new_pool(max_workers=1)

        @pool
        def numbers() -> Generator[int, None, None]:
            yield from range(3)

        async with aclosing(numbers()) as agen:
            assert await agen.__anext__() == 0
            assert pool.stats().busy == 1
            pool.configure(max_pending=0)
            with pytest.raises(offload.Overloaded):
                await pool.call(int)

            pool.configure(max_pending=None)
            assert [x async for x in agen] == [1, 2]

        assert await pool.call(int, "5") == 5

    async def test_send_and_throw_reach_the_sync_generator(self) -> None:
        """``asend`` and ``athrow`` are passed on to the sync generator."""
        received: list[object] = []

        @offload.thread
        def echo() -> Generator[str, str, None]:
            reply = yield "ready"
            while True:
                try:
                    reply = yield f"got {reply}"
                except KeyError as exc:
                    received.append(exc)
                    reply = yield "handled"

        agen = echo()
        assert await agen.asend(None) == "ready"
        assert await agen.asend("a") == "got a"  # type: ignore[arg-type]
        assert await agen.athrow(KeyError("k")) == "handled"
        assert await agen.asend("b") == "got b"  # type: ignore[arg-type]
        await agen.aclose()
        assert [type(e) for e in received] == [KeyError]

    async def test_exception_in_generator_reaches_the_consumer(self) -> None:
        """An exception raised by the generator ends the iteration with that exception."""

        @offload.thread
        def broken() -> Generator[int, None, None]:
            yield 1
            raise LookupError("second item")

        agen = broken()
        assert await agen.__anext__() == 1
        with pytest.raises(LookupError, match="second item"):
            await agen.__anext__()

    async def test_context_is_copied(self) -> None:
        """The generator sees the consumer's context variables."""
        colour.set("blue")

        @offload.thread
        def read() -> Generator[str, None, None]:
            yield colour.get()

        assert [c async for c in read()] == ["blue"]


class TestClosing:
    async def test_aclose_closes_on_the_same_thread(self) -> None:
        """``aclose()`` runs the generator's cleanup on the thread that ran it."""
        threads: list[int] = []

        @offload.thread
        def tracked() -> Generator[int, None, None]:
            try:
                while True:
                    threads.append(threading.get_ident())
                    yield len(threads)
            finally:
                threads.append(threading.get_ident())

        async with aclosing(tracked()) as agen:
            async for item in agen:
                if item == 3:
                    break

        assert len(threads) == 4
        assert len(set(threads)) == 1

    async def test_cancelled_consumer_closes_the_generator(self) -> None:
        """A cancelled consumer gets control back; the generator is closed on its thread."""
        pool = new_pool(max_workers=2)
        gate = Gate()
        closed_on: list[int] = []
        produced_on: list[int] = []

        @pool
        def slow_items() -> Generator[int, None, None]:
            try:
                produced_on.append(threading.get_ident())
                yield 1
                gate.pass_through()
                yield 2
            finally:
                closed_on.append(threading.get_ident())

        async def consume(scope: anyio.CancelScope) -> None:
            with scope:
                async with aclosing(slow_items()) as agen:
                    async for _ in agen:
                        pass

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, scope)
            await gate.entered(1)
            scope.cancel()

        assert scope.cancelled_caught
        assert closed_on == []  # still inside the step the consumer left
        gate.open()
        await until(lambda: not pool.stats().busy)

        assert closed_on == produced_on
        assert pool.stats().cancelled == 1

    async def test_item_timeout(self) -> None:
        """With ``timeout``, waiting longer than that for one item raises ``TimeoutError``."""
        pool = new_pool()
        gate = Gate()

        @pool(timeout=0.05)
        def stalls() -> Generator[int, None, None]:
            yield 1
            gate.pass_through()
            yield 2

        agen = stalls()
        assert await agen.__anext__() == 1
        with pytest.raises(TimeoutError, match="stalls"):
            await agen.__anext__()
        gate.open()
        await until(lambda: not pool.stats().busy)

        assert pool.stats().timed_out == 1
