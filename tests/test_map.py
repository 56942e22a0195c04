"""``pool.map``: one call per item, bounded in flight, ordered or not, and every way to stop."""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import offload
from _support import WAIT, Gate, new_pool, until

# -- what the workers run: module-level, so that a worker process can import it --------------


def double(item: int) -> int:
    return 2 * item


def announce(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader sees no file or all of it)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _wait_for(predicate: Callable[[], bool]) -> bool:
    """Wait in the worker until ``predicate()`` or the caller is gone; say which."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return True

        if offload.cancelled():
            return False

        time.sleep(0.001)

    raise TimeoutError("the test never let the worker go on")


def _locked_add(folder: Path, delta: int) -> None:
    """Count the calls inside (``inside``) and the most at once (``peak``), across processes."""
    lock = folder / "lock"
    while True:
        try:
            lock.mkdir()
            break
        except FileExistsError:
            time.sleep(0.0005)

    try:
        inside_file, peak_file = folder / "inside", folder / "peak"
        inside = int(inside_file.read_text()) if inside_file.exists() else 0
        peak = int(peak_file.read_text()) if peak_file.exists() else 0
        inside += delta
        inside_file.write_text(str(inside))
        peak_file.write_text(str(max(peak, inside)))
    finally:
        lock.rmdir()


def hold(folder: Path, item: int) -> int:
    """Say the call started (``started-<item>`` holds the pid), wait for ``open``, return the
    item; an item whose ``plan-<item>`` says ``pass`` returns at once, and one whose plan
    says ``fail:<items>`` raises once those items started."""
    _locked_add(folder, 1)
    try:
        announce(folder / f"started-{item}", str(os.getpid()))
        plan = folder / f"plan-{item}"
        if plan.exists() and plan.read_text() == "pass":
            return item

        if plan.exists():  # "fail:<items that must have started first>"
            others = [int(x) for x in plan.read_text().split(":")[1].split(",") if x]
            _wait_for(lambda: all((folder / f"started-{o}").exists() for o in others))
            raise ValueError(f"item {item} is bad")

        _wait_for((folder / "open").exists)
        return item
    finally:
        _locked_add(folder, -1)


def slow_first(folder: Path, item: int) -> int:
    """Item 0 finishes only once items 1 to 3 have finished; the others at once."""
    if item == 0:
        _wait_for(lambda: all((folder / f"done-{i}").exists() for i in (1, 2, 3)))
    else:
        announce(folder / f"done-{item}", "done")

    return item


_decorated_pool = offload.ThreadPool("test-map-decorated", max_workers=8)


@_decorated_pool(limit=1)
def one_at_a_time(gate_item: tuple[Gate, int]) -> int:
    gate, item = gate_item
    gate.pass_through(item)
    return item


@_decorated_pool(timeout=1.0)
def times_out(item: int) -> int:
    if item == 1:
        _wait_for(lambda: False)

    return item


request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


def current_request(item: int) -> str:
    return f"{request.get()} {item}"


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @_decorated_pool
    def scale(self, item: int) -> int:
        return self.factor * item


# -- helpers on the loop's side -----------------------------------------------------------------

Pool = offload.ThreadPool | offload.ProcessPool


class Counting:
    """A generator of ``n`` items that counts how many were read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i

    async def aiter(self) -> AsyncIterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i
            await anyio.lowlevel.checkpoint()


async def collect(
    results: AsyncIterator[int], into: list[int], pool: Pool | None = None, bound: int = 0
) -> None:
    """Append each result to ``into``; with a ``pool``, check at each that the calls that
    have no outcome yet are between 0 and ``bound``."""
    async for result in results:
        into.append(result)
        if pool is not None:
            assert 0 <= in_flight(pool) <= bound


def started(folder: Path) -> dict[int, int]:
    """Return the items whose call started, with the pid of the worker that runs each."""
    return {
        int(p.name.split("-")[1]): int(p.read_text())
        for p in folder.glob("started-*")
        if not p.name.endswith(".partial")
    }


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False

    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except OSError:
        return not status.parent.parent.exists()


def in_flight(pool: offload.ThreadPool | offload.ProcessPool) -> int:
    """``submitted`` minus the outcomes: the calls that have not ended for their caller."""
    s = pool.stats()
    return s.submitted - (s.completed + s.failed + s.cancelled + s.timed_out + s.crashed)


async def stopped_in_flight(
    pool: offload.ThreadPool | offload.ProcessPool, kind: str, pids: list[int]
) -> None:
    """Wait until the calls that were cancelled are gone: threads returned (they see
    ``offload.cancelled()``), worker processes killed."""
    if kind == "process":
        await until(lambda: not any(pid_alive(pid) for pid in pids), "killed workers exit")

    await until(lambda: pool.stats().busy == 0, "no call still runs")


# The pool kinds every test runs on; a new kind of pool is one more line.
POOL_KINDS = [pytest.param("thread", id="thread"), pytest.param("process", id="process")]


@pytest.fixture(params=POOL_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make_pool(kind: str) -> Callable[..., offload.ThreadPool | offload.ProcessPool]:
    """Return a factory of fresh pools of the kind under test."""
    return functools.partial(new_pool, kind)


MakePool = Callable[..., "Pool"]


# -- tests ---------------------------------------------------------------------------------------


class TestResults:
    """Every item gives one result, in input order or as calls finish."""

    async def test_ordered_results_follow_the_input(
        self, make_pool: MakePool, tmp_path: Path
    ) -> None:
        """Ordered, a slow first item still comes out first."""
        pool = make_pool(max_workers=4)
        fn = functools.partial(slow_first, tmp_path)
        assert [r async for r in pool.map(fn, range(6))] == list(range(6))

    async def test_unordered_results_come_as_calls_finish(
        self, make_pool: MakePool, tmp_path: Path
    ) -> None:
        """Unordered, the three quick items come out while the first one still runs."""
        for item in (1, 2, 3):
            (tmp_path / f"plan-{item}").write_text("pass")

        pool = make_pool(max_workers=4)
        got: list[int] = []
        async for result in pool.map(functools.partial(hold, tmp_path), range(4), ordered=False):
            got.append(result)
            if len(got) == 3:  # item 0 waits for "open": it cannot have finished yet
                announce(tmp_path / "open", "open")

        assert sorted(got[:3]) == [1, 2, 3]
        assert got[3] == 0

    async def test_async_input(self, make_pool: MakePool) -> None:
        """An async iterable of items works as a sync one does."""
        pool = make_pool(max_workers=2)
        assert [r async for r in pool.map(double, Counting(7).aiter())] == [
            2 * i for i in range(7)
        ]

    async def test_empty_input(self, make_pool: MakePool) -> None:
        """An empty input gives no result and submits no call."""
        pool = make_pool()
        assert [r async for r in pool.map(double, [])] == []
        assert pool.stats().submitted == 0

    async def test_every_item_counts_as_a_call(self, make_pool: MakePool) -> None:
        """Each item is one submitted, completed call in ``stats()``."""
        pool = make_pool(max_workers=2)
        assert len([r async for r in pool.map(double, range(25), ordered=False)]) == 25
        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.failed, stats.cancelled) == (25, 25, 0, 0)


class TestBackpressure:
    """The input is read only as fast as results are taken."""

    async def test_million_item_generator_is_not_read_ahead(self, make_pool: MakePool) -> None:
        """After each result, at most ``max_in_flight`` items were read beyond those taken."""
        pool = make_pool(max_workers=2)
        items = Counting(1_000_000)
        taken = 0
        async with pool.map(double, items, max_in_flight=3) as results:
            async for result in results:
                assert result == 2 * taken
                taken += 1
                assert items.read <= taken + 3
                if taken == 20:
                    break

        assert items.read <= 23
        assert in_flight(pool) == 0

    async def test_async_generator_is_not_read_ahead(self, make_pool: MakePool) -> None:
        """An async input is read no faster than a sync one."""
        pool = make_pool(max_workers=2)
        items = Counting(1_000_000)
        taken = 0
        async with pool.map(double, items.aiter(), max_in_flight=2, ordered=False) as results:
            async for _ in results:
                taken += 1
                assert items.read <= taken + 2
                if taken == 15:
                    break

        assert items.read <= 17

    async def test_default_window_is_max_workers(
        self, make_pool: MakePool, tmp_path: Path
    ) -> None:
        """With no ``max_in_flight``, as many items as the pool has workers are read."""
        pool = make_pool(max_workers=2)
        items = Counting(1_000)
        async with pool.map(functools.partial(hold, tmp_path), items) as results:
            async with anyio.create_task_group() as tg:
                tg.start_soon(results.__anext__)
                await until(lambda: len(started(tmp_path)) == 2, "two calls started")
                assert items.read == 2
                announce(tmp_path / "open", "open")

            assert await results.__anext__() == 1
            assert items.read <= 4


class TestInFlight:
    """At most ``max_in_flight`` calls run at once, whatever the pool's size."""

    async def test_never_more_than_max_in_flight(
        self, make_pool: MakePool, tmp_path: Path
    ) -> None:
        """With eight workers and ``max_in_flight=3``, no more than three calls ever run."""
        pool = make_pool(max_workers=8)
        items = Counting(12)
        async with pool.map(functools.partial(hold, tmp_path), items, max_in_flight=3) as results:
            async with anyio.create_task_group() as tg:
                tg.start_soon(results.__anext__)
                await until(lambda: len(started(tmp_path)) == 3, "three calls started")
                assert items.read == 3
                announce(tmp_path / "open", "open")

            assert [r async for r in results] == list(range(1, 12))

        assert int((tmp_path / "peak").read_text()) == 3

    @pytest.mark.parametrize("value", [0, -1])
    def test_below_one_is_refused(self, value: int) -> None:
        """``max_in_flight`` below 1 is a ``ValueError`` that says what it must be."""
        with pytest.raises(ValueError, match=r"max_in_flight=.* whole number >= 1"):
            new_pool().map(double, [1], max_in_flight=value)

    @pytest.mark.parametrize("value", [2.0, "3", True])
    def test_not_a_whole_number_is_refused(self, value: object) -> None:
        """``max_in_flight`` that is not an int is a ``TypeError``."""
        with pytest.raises(TypeError, match="max_in_flight must be a whole number"):
            new_pool().map(double, [1], max_in_flight=value)  # type: ignore[call-overload]


class TestErrors:
    """An item's exception comes out at its place; the calls still in flight are cancelled."""

    async def test_error_at_its_place_cancels_the_rest(
        self, make_pool: MakePool, kind: str, tmp_path: Path
    ) -> None:
        """Ordered: the results before the bad item, then its error; the calls still running
        are cancelled (their worker processes killed)."""
        for item in (0, 1):
            (tmp_path / f"plan-{item}").write_text("pass")

        (tmp_path / "plan-2").write_text("fail:3,4")
        pool = make_pool(max_workers=5)
        got: list[int] = []
        with pytest.raises(ValueError, match="item 2 is bad"):
            await collect(pool.map(functools.partial(hold, tmp_path), range(9)), got)

        assert got == [0, 1]
        assert in_flight(pool) == 0
        # taking 0 and 1 let items 5 and 6 in: four calls were in flight at the error
        pids = [pid for item, pid in started(tmp_path).items() if item > 2]
        await stopped_in_flight(pool, kind, pids)
        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.failed, stats.cancelled) == (7, 2, 1, 4)

    async def test_results_before_the_error_come_first(
        self, make_pool: MakePool, tmp_path: Path
    ) -> None:
        """Ordered: items that finished before the bad one are yielded before its error."""
        (tmp_path / "plan-2").write_text("fail:")
        announce(tmp_path / "open", "open")
        pool = make_pool(max_workers=2)
        got: list[int] = []
        with pytest.raises(ValueError, match="item 2 is bad"):
            await collect(pool.map(functools.partial(hold, tmp_path), range(6)), got)

        assert got == [0, 1]
        assert in_flight(pool) == 0

    async def test_unordered_error_comes_as_it_happens(
        self, make_pool: MakePool, kind: str, tmp_path: Path
    ) -> None:
        """Unordered: the error of item 2 comes while items 0 and 1 still run, and they are
        cancelled."""
        (tmp_path / "plan-2").write_text("fail:0,1")
        pool = make_pool(max_workers=3)
        got: list[int] = []
        with pytest.raises(ValueError, match="item 2 is bad"):
            await collect(
                pool.map(functools.partial(hold, tmp_path), range(3), ordered=False), got
            )

        assert got == []  # no item finished before the bad one

        pids = [pid for item, pid in started(tmp_path).items() if item != 2]
        await stopped_in_flight(pool, kind, pids)
        stats = pool.stats()
        assert (stats.submitted, stats.failed, stats.cancelled) == (3, 1, 2)

    async def test_overloaded_item_raises_at_its_place(
        self, make_pool: MakePool, kind: str, tmp_path: Path
    ) -> None:
        """Past ``max_pending``, an item's call raises ``Overloaded``, and the others are
        cancelled."""
        pool = make_pool(max_workers=1, max_pending=1)
        with pytest.raises(offload.Overloaded):
            await collect(
                pool.map(
                    functools.partial(hold, tmp_path), range(9), ordered=False, max_in_flight=3
                ),
                [],
            )

        await stopped_in_flight(pool, kind, list(started(tmp_path).values()))
        stats = pool.stats()
        assert (stats.rejected, stats.submitted, stats.cancelled) == (1, 2, 2)

    async def test_input_error_cancels_in_flight(
        self, make_pool: MakePool, kind: str, tmp_path: Path
    ) -> None:
        """An exception from the input reaches the consumer, and the calls in flight are
        cancelled."""

        def items() -> Iterator[int]:
            yield 0
            yield 1
            raise LookupError("the input broke")

        pool = make_pool(max_workers=3)
        with pytest.raises(LookupError, match="the input broke"):
            async for _ in pool.map(functools.partial(hold, tmp_path), items()):
                pass

        await stopped_in_flight(pool, kind, list(started(tmp_path).values()))
        stats = pool.stats()
        assert stats.submitted == stats.cancelled
        assert in_flight(pool) == 0


class TestStopping:
    """``break``, ``aclose()``, ``async with`` and a cancelled consumer cancel the calls."""

    async def test_aclose_cancels_in_flight(
        self, make_pool: MakePool, kind: str, tmp_path: Path
    ) -> None:
        """``aclose()`` cancels the running calls and returns once each has its outcome;
        the iterator then stays closed."""
        pool = make_pool(max_workers=3)
        results = pool.map(functools.partial(slow_or_hold, tmp_path), range(100))
        assert await results.__anext__() == 0
        await until(lambda: len(started(tmp_path)) == 2, "two calls started")
        await results.aclose()
        assert in_flight(pool) == 0
        await results.aclose()
        with pytest.raises(StopAsyncIteration):
            await results.__anext__()

        await stopped_in_flight(pool, kind, list(started(tmp_path).values()))
        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.cancelled) == (3, 1, 2)

    async def test_aclose_while_running(
        self, make_pool: MakePool, kind: str, tmp_path: Path
    ) -> None:
        """``aclose()`` from another task while the consumer waits cancels every call."""
        pool = make_pool(max_workers=2)
        results = pool.map(functools.partial(hold, tmp_path), range(100))
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                assert [r async for r in results] == []

            tg.start_soon(consume)
            await until(lambda: len(started(tmp_path)) == 2, "two calls started")
            await results.aclose()

        await stopped_in_flight(pool, kind, list(started(tmp_path).values()))
        stats = pool.stats()
        assert (stats.submitted, stats.cancelled) == (2, 2)

    async def test_async_with_exit_cancels(
        self, make_pool: MakePool, kind: str, tmp_path: Path
    ) -> None:
        """Leaving ``async with pool.map(...)`` early cancels the calls in flight."""
        pool = make_pool(max_workers=3)
        async with pool.map(functools.partial(slow_or_hold, tmp_path), range(10)) as results:
            assert await results.__anext__() == 0
            await until(lambda: len(started(tmp_path)) == 2, "two calls started")

        assert in_flight(pool) == 0
        await stopped_in_flight(pool, kind, list(started(tmp_path).values()))
        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.cancelled) == (3, 1, 2)

    async def test_break_cancels_in_flight(
        self, make_pool: MakePool, kind: str, tmp_path: Path
    ) -> None:
        """``break`` out of ``async for`` (no ``aclose()``) cancels the calls in flight."""
        pool = make_pool(max_workers=3)
        async for result in pool.map(functools.partial(slow_or_hold, tmp_path), range(10)):
            assert result == 0
            await until(lambda: len(started(tmp_path)) == 2, "two calls started")
            break

        await until(lambda: in_flight(pool) == 0, "the calls in flight are cancelled")
        await stopped_in_flight(pool, kind, list(started(tmp_path).values()))
        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.cancelled) == (3, 1, 2)

    async def test_cancelled_consumer_cancels_in_flight(
        self, make_pool: MakePool, kind: str, tmp_path: Path
    ) -> None:
        """A consumer cancelled while it waits for a result cancels the calls in flight."""
        pool = make_pool(max_workers=2)
        items = Counting(1_000)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def cancel_when_running() -> None:
                    await until(lambda: len(started(tmp_path)) == 2, "two calls started")
                    scope.cancel()

                tg.start_soon(cancel_when_running)
                async for _ in pool.map(functools.partial(hold, tmp_path), items):
                    pytest.fail("no call was let through")

        assert scope.cancelled_caught
        assert in_flight(pool) == 0  # each call had its outcome before the consumer left
        await stopped_in_flight(pool, kind, list(started(tmp_path).values()))
        stats = pool.stats()
        assert (stats.submitted, stats.cancelled, items.read) == (2, 2, 2)

    async def test_consumer_cancelled_already_reads_nothing(self, make_pool: MakePool) -> None:
        """A consumer whose scope is cancelled already reads no item and starts no call."""
        pool = make_pool()
        items = Counting(10)
        with anyio.CancelScope() as scope:
            scope.cancel()
            async for _ in pool.map(double, items):
                pytest.fail("a cancelled consumer got a result")

        assert scope.cancelled_caught
        assert (items.read, pool.stats().submitted) == (0, 0)

    async def test_two_consumers_are_refused(self, make_pool: MakePool, tmp_path: Path) -> None:
        """A second task asking for a result while one waits gets a ``RuntimeError``."""
        pool = make_pool(max_workers=1)
        async with pool.map(functools.partial(hold, tmp_path), range(5)) as results:
            async with anyio.create_task_group() as tg:
                tg.start_soon(results.__anext__)
                await until(lambda: len(started(tmp_path)) == 1, "one call started")
                with pytest.raises(RuntimeError, match="another task is already waiting"):
                    await results.__anext__()

                announce(tmp_path / "open", "open")

            assert await results.__anext__() == 1

    async def test_stats_hold_while_stopping(self, make_pool: MakePool, tmp_path: Path) -> None:
        """At every point ``submitted`` is the outcomes plus the calls in flight."""
        pool = make_pool(max_workers=2)
        announce(tmp_path / "open", "open")
        (tmp_path / "plan-7").write_text("fail:")
        seen: list[int] = []
        with pytest.raises(ValueError, match="item 7 is bad"):
            await collect(pool.map(functools.partial(hold, tmp_path), range(50)), seen, pool, 2)

        assert seen == list(range(7))

        await until(lambda: pool.stats().busy == 0)
        stats = pool.stats()
        assert stats.failed == 1
        assert stats.completed in (7, 8)  # item 8 may finish before it is cancelled
        assert stats.submitted == stats.completed + stats.failed + stats.cancelled


class TestFunctions:
    """What ``fn`` may be: a plain function, one decorated for this pool, nothing async."""

    async def test_decorated_function_keeps_its_limit(self) -> None:
        """A function decorated with ``limit=1`` runs one item at a time, whatever
        ``max_in_flight`` is."""
        gate = Gate()
        gate.open()
        items = [(gate, i) for i in range(8)]
        results = [r async for r in _decorated_pool.map(one_at_a_time, items, max_in_flight=4)]
        assert results == list(range(8))
        assert gate.peak == 1

    async def test_decorated_function_keeps_its_timeout(self) -> None:
        """A function decorated with ``timeout`` raises ``TimeoutError`` at the late item."""
        got: list[int] = []
        with pytest.raises(TimeoutError, match="times_out"):
            await collect(_decorated_pool.map(times_out, range(3), max_in_flight=1), got)

        assert got == [0]
        await until(lambda: _decorated_pool.stats().busy == 0)

    async def test_decorated_method(self) -> None:
        """A decorated method, bound to its instance, runs with that instance."""
        results = [r async for r in _decorated_pool.map(Scaler(3).scale, [1, 2])]
        assert results == [3, 6]

    async def test_threads_see_the_consumers_context(self) -> None:
        """In a thread pool, each item's call sees a copy of the consumer's contextvars."""
        request.set("r-1")
        results = [r async for r in new_pool().map(current_request, range(3))]
        assert results == ["r-1 0", "r-1 1", "r-1 2"]

    def test_function_of_another_pool_is_refused(self) -> None:
        """A function decorated for another pool is a ``TypeError`` naming that pool."""
        with pytest.raises(TypeError, match="decorated for <ThreadPool 'test-map-decorated'>"):
            new_pool().map(times_out, [1])

    def test_async_function_is_refused(self) -> None:
        """A coroutine function is a ``TypeError``: map runs blocking functions."""

        async def fetch(item: int) -> int:
            return item

        with pytest.raises(TypeError, match=r"is async; .*map\(\) runs a blocking"):
            new_pool().map(fetch, [1])

    @pytest.mark.parametrize(
        ("fn", "items", "message"),
        [
            (42, [1], "needs a function"),
            (double, 42, "needs an iterable or an async iterable"),
        ],
    )
    def test_bad_arguments_are_refused(self, fn: Any, items: Any, message: str) -> None:
        """A function that is not callable, or items that are not iterable, is a
        ``TypeError``."""
        with pytest.raises(TypeError, match=message):
            new_pool().map(fn, items)

    def test_ordered_must_be_a_bool(self) -> None:
        """``ordered`` that is not a bool is a ``TypeError``."""
        with pytest.raises(TypeError, match="ordered must be True or False"):
            new_pool().map(double, [1], ordered="yes")  # type: ignore[call-overload]


def slow_or_hold(folder: Path, item: int) -> int:
    """Item 0 returns at once; the others announce themselves and wait for ``open``."""
    if item == 0:
        return 0

    return hold(folder, item)


class TestExecutorPools:
    """map works on an executor pool too, through the same call path."""

    async def test_results_and_counts_on_an_executor_pool(self) -> None:
        """Each item runs in the user's executor, comes out in order and counts as a call."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as executor:
            pool = offload.ExecutorPool(f"test-map-executor-{next(_executor_names)}", executor)
            try:
                read = Counting(50)
                results = pool.map(double, read, max_in_flight=2)
                taken = 0
                async for value in results:
                    assert value == 2 * taken
                    taken += 1
                    assert read.read <= taken + 2  # read only as fast as results are taken

                stats = pool.stats()
                assert (stats.submitted, stats.completed) == (50, 50)
            finally:
                await pool.aclose()


_executor_names = itertools.count()
