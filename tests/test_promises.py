"""Promises of every call, on thread and process pools: async callables are refused, an
already-cancelled caller uses no worker, nothing outlives its call, and a closed pool frees
its name."""

from __future__ import annotations

import contextvars
import gc
import multiprocessing
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import offload
from _support import Gate, new_pool, until

Pool = offload.ThreadPool | offload.ProcessPool
_names = iter(range(1, 10_000))  # for pools that a test names itself


@pytest.fixture(params=["thread", "process"])
def kind(request: pytest.FixtureRequest) -> str:
    """Run the test on a thread pool and on a process pool."""
    return request.param  # type: ignore[no-any-return]


# -- functions the workers run (module level: worker processes import them by name) ----------


async def answer() -> int:
    return 42


def returns_coroutine() -> Coroutine[Any, Any, int]:
    return answer()


def touch(path: str) -> None:
    Path(path).write_text("ran")


def wait_for(path: str) -> str:
    """Block in a worker until ``path`` exists."""
    for _ in range(10_000):
        if Path(path).exists():
            return path

        threading.Event().wait(0.001)

    raise TimeoutError(f"{path} never appeared")


class Payload:
    """A picklable object that can be watched with a weak reference."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __call__(self, *args: object, **kwargs: object) -> Payload:
        return Payload(f"result of {self.tag}")


def echo(value: Payload, *, extra: Payload) -> Payload:
    return Payload(value.tag + extra.tag)


class Failure(Exception):
    """An exception that can be watched with a weak reference (``ValueError`` cannot)."""


def fail_with(value: Payload) -> None:
    raise Failure(value)


async def call_touch(pool: Pool, path: str) -> None:
    await pool.call(touch, path)


async def call_hold(
    pool: offload.ThreadPool, hold: Callable[[Payload], None], value: Payload
) -> None:
    await pool.call(hold, value)


request_cvar: contextvars.ContextVar[Payload | None] = contextvars.ContextVar(
    "request_cvar", default=None
)


class TestAsyncCallablesAreRefused:
    async def test_coroutine_function(self, kind: str) -> None:
        """``call(async_fn)`` raises ``TypeError`` saying to await it directly."""
        pool = new_pool(kind)
        with pytest.raises(TypeError, match=r"answer is a coroutine function.*[Aa]wait it"):
            _ = await pool.call(answer)

    async def test_callable_returning_a_coroutine(self, kind: str) -> None:
        """A sync callable returning a coroutine gets ``TypeError``; the coroutine is closed
        (``filterwarnings = error`` turns a "never awaited" warning into a failure)."""
        pool = new_pool(kind)
        with pytest.raises(TypeError, match=r"returns_coroutine\(\) returned an awaitable"):
            _ = await pool.call(returns_coroutine)

        gc.collect()

    async def test_default_pool(self) -> None:
        """``offload.call`` refuses a coroutine function too."""
        with pytest.raises(TypeError, match="Await it directly"):
            _ = await offload.call(answer)

    async def test_coroutine_function_uses_no_process(self) -> None:
        """A process pool refuses a coroutine function before any worker process starts."""
        pool = new_pool("process")
        with pytest.raises(TypeError):
            _ = await pool.call(answer)

        assert multiprocessing.active_children() == []
        await pool.aclose()


class TestAlreadyCancelled:
    async def test_cancelled_scope(self, kind: str, tmp_path: Path) -> None:
        """A call made in an already-cancelled scope raises the cancellation and never runs."""
        pool = new_pool(kind)
        marker = tmp_path / "ran"
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pool.call(touch, str(marker))

        assert scope.cancelled_caught
        stats = pool.stats()
        assert (stats.workers, stats.busy) == (0, 0)
        assert (stats.submitted, stats.cancelled) == (1, 1)  # as its caller saw it
        assert multiprocessing.active_children() == []
        await pool.aclose()
        assert not marker.exists()

    async def test_task_group_cancelled_after_start_soon(self, kind: str, tmp_path: Path) -> None:
        """A task group cancelled right after ``start_soon`` runs none of its calls."""
        pool = new_pool(kind)
        marker = tmp_path / "ran"
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_touch, pool, str(marker))
            tg.cancel_scope.cancel()

        stats = pool.stats()
        assert (stats.workers, stats.submitted, stats.cancelled) == (0, 1, 1)
        assert multiprocessing.active_children() == []
        await pool.aclose()
        assert not marker.exists()

    async def test_decorated_function_with_timeout(self) -> None:
        """A decorated function with a ``timeout`` in a cancelled scope never runs either."""
        pool = new_pool()
        ran = threading.Event()

        @pool(timeout=10.0, limit=1)
        def work() -> None:
            ran.set()

        with anyio.CancelScope() as scope:
            scope.cancel()
            await work()

        assert scope.cancelled_caught
        stats = pool.stats()
        assert (stats.submitted, stats.cancelled, stats.timed_out) == (1, 1, 0)
        await pool.aclose()
        assert not ran.is_set()

    async def test_generator_in_a_cancelled_scope(self) -> None:
        """An offloaded generator started in a cancelled scope never starts its thread."""
        pool = new_pool()
        ran = threading.Event()

        @pool
        def numbers() -> Generator[int, None, None]:
            ran.set()
            yield 1

        with anyio.CancelScope() as scope:
            scope.cancel()
            async for _ in numbers():
                pass

        assert scope.cancelled_caught
        assert pool.stats().workers == 0
        await pool.aclose()
        assert not ran.is_set()

    async def test_shielded_scope_inside_runs(self) -> None:
        """A call in a shielded scope inside a cancelled one runs (it is not cancelled)."""
        pool = new_pool("thread")
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                assert await pool.call(str.upper, "ran") == "RAN"


async def _settle() -> None:
    """Let the caller's task step end: a backend keeps the waiter it resumed the task with
    until then (that reference is the event loop's, not offload's)."""
    for _ in range(3):
        await anyio.lowlevel.checkpoint()

    gc.collect()


class TestNothingOutlivesTheCall:
    async def test_function_arguments_and_result(self, kind: str) -> None:
        """After a call returns, offload holds none of its function, arguments or result."""
        pool = new_pool(kind)
        fn, arg, extra = Payload("fn"), Payload("arg"), Payload("extra")
        refs = [weakref.ref(x) for x in (fn, arg, extra)]
        result = await pool.call(fn if kind == "thread" else echo, arg, extra=extra)
        refs.append(weakref.ref(result))
        del fn, arg, extra, result
        await _settle()
        assert [ref() for ref in refs] == [None] * 4
        await pool.aclose()

    async def test_raised_exception_and_arguments(self, kind: str) -> None:
        """After a call raises, offload holds neither the exception nor the arguments."""
        pool = new_pool(kind)
        arg = Payload("arg")
        ref = weakref.ref(arg)
        with pytest.raises(Failure) as info:
            await pool.call(fail_with, arg)

        error_ref = weakref.ref(info.value)
        del arg, info
        await _settle()
        assert (ref(), error_ref()) == (None, None)
        await pool.aclose()

    async def test_copied_context(self, kind: str) -> None:
        """A request object in a contextvar does not outlive its request, also when the call
        starts the pool (and its lifecycle task) in this loop."""
        pool = new_pool(kind)
        request = Payload("request")
        ref = weakref.ref(request)
        token = request_cvar.set(request)
        await pool.call(str, 1)
        request_cvar.reset(token)
        del request
        await _settle()
        assert ref() is None
        await pool.aclose()

    async def test_abandoned_call_drops_its_arguments_when_done(self) -> None:
        """A call whose caller was cancelled while it ran drops its arguments once done."""
        pool = new_pool()
        gate = Gate()
        arg = Payload("arg")
        ref = weakref.ref(arg)

        def hold(value: Payload) -> None:
            gate.pass_through(value.tag)

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(call_hold, pool, hold, arg)
                await gate.entered(1)
                scope.cancel()

        del arg
        gate.open()
        await until(lambda: pool.stats().busy == 0, "the abandoned thread returned")
        await _settle()
        assert ref() is None
        await pool.aclose()


class TestClosedPoolIsCollected:
    async def test_name_is_free_again(self, kind: str) -> None:
        """A closed pool nobody references is collected, and its name can be used again."""
        name = f"reuse-{kind}-{next(_names)}"
        pool = new_pool(kind, name)
        async with pool:
            assert await pool.call(abs, -3) == 3

        ref = weakref.ref(pool)
        del pool
        gc.collect()
        assert ref() is None
        again = new_pool(kind, name)
        async with again:
            assert await again.call(abs, -4) == 4

    async def test_open_pool_keeps_its_name(self) -> None:
        """A pool still referenced keeps its name: making another one raises ``ValueError``."""
        name = f"kept-{next(_names)}"
        pool = new_pool("thread", name)
        async with pool:
            await pool.call(abs, -1)

        with pytest.raises(ValueError, match="already exists"):
            new_pool("thread", name)


class TestMissingMainFile:
    async def test_process_starts(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Worker processes start when ``__main__.__file__`` names a file that does not exist
        (some launchers set it so; anyio issue #696)."""
        main = sys.modules["__main__"]
        monkeypatch.setattr(main, "__spec__", None)
        monkeypatch.setattr(main, "__file__", str(tmp_path / "gone.py"), raising=False)
        pool = new_pool("process")
        async with pool:
            assert await pool.call(abs, -5) == 5

        assert main.__file__ == str(tmp_path / "gone.py")

    async def test_workers_start_together(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Several workers starting at once all start, and ``__main__.__file__`` is back after."""
        main = sys.modules["__main__"]
        missing = str(tmp_path / "gone.py")
        monkeypatch.setattr(main, "__spec__", None)
        monkeypatch.setattr(main, "__file__", missing, raising=False)
        pool = new_pool("process", max_workers=3)
        release = tmp_path / "release"
        results: list[str] = []

        async def one() -> None:
            results.append(await pool.call(wait_for, str(release)))

        async with pool:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(one)

                await until(lambda: pool.stats().busy == 3, "three workers busy")
                release.write_text("go")

        assert results == [str(release)] * 3
        assert main.__file__ == missing
