"""``await pool.call(fn, *args, **kwargs)``: arguments, results, exceptions, context."""

from __future__ import annotations

import contextvars
import sys
import threading
import traceback

import anyio
import pytest

import offload
from _support import new_pool

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def describe(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    return args, kwargs


class TestArguments:
    async def test_positional_and_keyword_arguments_reach_fn(self) -> None:
        """Every positional and keyword argument reaches ``fn`` as given."""
        assert await offload.call(describe, 1, "two", three=3) == ((1, "two"), {"three": 3})

    async def test_option_names_are_not_reserved(self) -> None:
        """Keywords named like options (timeout, limit, cancel, fn) go to ``fn``, not ``call``."""
        result = await offload.call(describe, timeout=5, limit=1, cancel="no", fn="mine")
        assert result == ((), {"timeout": 5, "limit": 1, "cancel": "no", "fn": "mine"})

    async def test_named_pool_call(self) -> None:
        """A named pool's ``call`` runs ``fn`` in one of that pool's threads."""
        pool = new_pool(max_workers=2)
        name = await pool.call(lambda: threading.current_thread().name)
        assert name.startswith(f"offload-{pool.name}-")

    async def test_runs_off_the_loop_thread(self) -> None:
        """The function runs in a worker thread, not in the event loop's thread."""
        loop_thread = threading.get_ident()
        assert await offload.call(threading.get_ident) != loop_thread


class TestExceptions:
    async def test_exception_arrives_unchanged(self) -> None:
        """An exception raised by ``fn`` reaches the awaiter with its type and args."""

        def fail() -> None:
            raise KeyError("missing", 42)

        with pytest.raises(KeyError) as info:
            await offload.call(fail)

        assert info.value.args == ("missing", 42)

    async def test_traceback_shows_worker_frames(self) -> None:
        """The traceback includes the frames of ``fn`` as it ran in the worker."""

        def deep_failure() -> None:
            raise ValueError("in the worker")

        with pytest.raises(ValueError, match="in the worker") as info:
            await offload.call(deep_failure)

        names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
        assert "deep_failure" in names

    async def test_base_exceptions_are_delivered(self) -> None:
        """Even ``SystemExit`` and ``KeyboardInterrupt`` raised in a worker reach the awaiter."""

        def leave() -> None:
            raise SystemExit(3)

        with pytest.raises(SystemExit) as info:
            await offload.call(leave)

        assert info.value.code == 3

    async def test_stop_iteration_becomes_runtime_error(self) -> None:
        """``StopIteration`` from ``fn`` becomes ``RuntimeError``, as at any coroutine boundary."""
        with pytest.raises(RuntimeError):
            await offload.call(next, iter([]))

    async def test_pool_survives_exceptions(self) -> None:
        """A call that raised leaves the pool usable for the next one."""

        def fail() -> None:
            raise RuntimeError("once")

        pool = new_pool(max_workers=1)
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await pool.call(fail)

        assert await pool.call(lambda: "still fine") == "still fine"


class TestContext:
    async def test_contextvars_are_copied_into_the_thread(self) -> None:
        """The worker sees the caller's context variables."""
        request_id.set("abc-123")
        assert await offload.call(request_id.get) == "abc-123"

    async def test_worker_changes_do_not_leak_back(self) -> None:
        """A context variable set in the worker does not change the caller's context."""
        request_id.set("caller")
        await offload.call(request_id.set, "worker")
        assert request_id.get() == "caller"

    async def test_async_library_marker_is_cleared(self) -> None:
        """Code in a worker is not in async context: sniffio finds no async library there."""
        sniffio = pytest.importorskip("sniffio")

        def detect() -> str | None:
            try:
                return str(sniffio.current_async_library())
            except sniffio.AsyncLibraryNotFoundError:
                return None

        assert await offload.call(detect) is None

    async def test_calls_from_many_tasks(self) -> None:
        """Many concurrent tasks each get their own call's result back."""
        results: dict[int, int] = {}

        async def one(i: int) -> None:
            results[i] = await offload.call(pow, i, 2)

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)

        assert results == {i: i * i for i in range(200)}


class TestOutsideALoop:
    def test_call_without_a_loop_says_what_to_do(self) -> None:
        """Awaiting a call outside a running loop raises an error that says what is needed."""
        coro = offload.call(sum, [1, 2])
        with pytest.raises(RuntimeError, match="needs a running event loop"):
            coro.send(None)

        coro.close()

    def test_no_thread_starts_at_import_or_declaration(self) -> None:
        """Declaring a pool starts nothing: no thread exists until a call in a loop."""
        before = threading.active_count()
        pool = new_pool(max_workers=4)
        assert pool.stats().workers == 0
        assert threading.active_count() == before


def test_python_version_supported() -> None:
    """The test suite runs on a Python that offload supports."""
    assert sys.version_info >= (3, 10)
