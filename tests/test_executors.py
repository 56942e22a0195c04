"""Executor pools: any ``concurrent.futures.Executor`` behind offload's calls, for real.

The executors: the stdlib's thread and process pools, loky's reusable executor, and a
dask.distributed cluster. The cluster is shared by the module (started once, its worker
threads warmed up before any test looks at the threads alive), with its workers in this
process, so that the tests' gates (``threading.Event``) reach the tasks; the test of a
factory starts a cluster of its own, with worker processes, and proves it leaves nothing.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import multiprocessing
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest
from typing_extensions import ParamSpec

import offload
from _support import BACKENDS, WAIT, StatsWatch, until
from offload._executors import ExecutorWorkers
from offload._job import Job

P = ParamSpec("P")
T = TypeVar("T")

# Imported where used: the worker processes of these tests import this module, and need
# neither (dask.distributed alone takes a second to import).
HAS_DASK = importlib.util.find_spec("distributed") is not None
NO_DASK = "dask.distributed is not installed (pip install offload[dask])"
needs_dask = pytest.mark.skipif(not HAS_DASK, reason=NO_DASK)


def import_distributed() -> Any:
    return importlib.import_module("distributed")


_names = iter(range(1, 1_000_000))


# -- what the executors run (module level: they go by reference) ------------------------------

_events: dict[str, threading.Event] = {}
_events_lock = threading.Lock()
_ran: set[str] = set()


def event(name: str) -> threading.Event:
    """Return the event of this name (made on first use), shared by tests and tasks."""
    with _events_lock:
        return _events.setdefault(name, threading.Event())


def gated(key: str) -> str:
    """Say that the call started, wait until the test opens the gate ``key``, record it ran."""
    event(f"{key}.started").set()
    event(key).wait(WAIT)
    _ran.add(key)
    return key


async def call_gated(pool: offload.ExecutorPool, key: str) -> None:
    await pool.call(gated, key)


async def call_add(pool: offload.ExecutorPool, x: int) -> None:
    await pool.call(add, x)


def started(key: str) -> Callable[[], bool]:
    return event(f"{key}.started").is_set


def add(x: int, y: int = 0) -> int:
    return x + y


def fail(message: str) -> None:
    raise LookupError(message, 7)


def return_lock() -> object:
    return threading.Lock()


def numbers() -> Iterator[int]:
    yield 1


class Delegate(Executor):
    """An executor that tells no size: it passes every call on to the test's executor."""

    def __init__(self) -> None:
        self.target: Executor | None = None

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        assert self.target is not None, "the test sets the executor to pass calls to"
        return self.target.submit(fn, *args, **kwargs)


class RecordingFuture(Future[Any]):
    """A future that records the threads that cancel it."""

    def __init__(self, cancelled_on: list[int]) -> None:
        super().__init__()
        self.cancelled_on = cancelled_on

    def cancel(self) -> bool:
        self.cancelled_on.append(threading.get_ident())
        return super().cancel()


class Holding(Executor):
    """An executor of one worker that never starts a call: it holds each future."""

    _max_workers = 1

    def __init__(self) -> None:
        self.futures: list[RecordingFuture] = []
        self.cancelled_on: list[int] = []

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        self.futures.append(RecordingFuture(self.cancelled_on))
        return self.futures[-1]


async def call_then_close(pool: offload.ExecutorPool) -> None:
    """Call ``add`` in the pool, then close it, however the call ends."""
    try:
        await pool.call(add, 1)
    finally:
        with anyio.CancelScope(shield=True):
            await pool.aclose()


DELEGATE = Delegate()
remote = offload.ExecutorPool("test-executors-remote", DELEGATE, max_workers=2)


@remote
def cube(x: int) -> int:
    """Cube a number where the executor runs its calls."""
    return x**3


@remote
def remote_where() -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


def active_tasks(dask_scheduler: Any) -> int:
    """On the scheduler: how many tasks wait or run (not the finished ones)."""
    states = ("released", "waiting", "queued", "no-worker", "processing")
    return sum(1 for task in dask_scheduler.tasks.values() if task.state in states)


# -- fixtures ---------------------------------------------------------------------------------

KINDS = ["thread", "process", "loky", "dask"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A dask cluster for the module: two workers of one thread each, in this process."""
    if not HAS_DASK:
        yield None
        return

    distributed = import_distributed()
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address=":0",  # any free port: None still binds 8787
        ) as local,
        distributed.Client(local) as client,
    ):
        # Start each worker's task thread now: it lives as long as the cluster.
        futures = client.map(add, range(8), pure=False)
        assert client.gather(futures) == list(range(8))
        del futures
        yield client

    # Collect the clusters and clients of this module now, not in a later test's loop (a
    # monitor test would see the collector's pause as a stall).
    gc.collect()


def make_executor(kind: str, cluster: Any) -> Executor:
    """Return a real executor of ``kind`` that runs two calls at once."""
    if kind == "thread":
        return ThreadPoolExecutor(2)

    if kind == "process":
        return ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver"))

    if kind == "loky":
        loky: Any = pytest.importorskip("loky", reason="loky is not installed")
        return loky.get_reusable_executor(max_workers=2)  # type: ignore[no-any-return]

    if cluster is None:
        pytest.skip(NO_DASK)

    return cluster.get_executor(pure=False)  # type: ignore[no-any-return]


def shut_down(kind: str, executor: Executor) -> None:
    if kind == "loky":
        executor.shutdown(wait=True, kill_workers=True)  # type: ignore[call-arg]
        for thread in threading.enumerate():  # loky's feeder thread ends a moment later
            if thread.name == "QueueFeederThread":
                thread.join(WAIT)
    elif kind != "dask":  # the module's cluster stays
        executor.shutdown(wait=True)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def executor(kind: str, cluster: Any) -> Iterator[Executor]:
    """A real executor of each kind, two calls at a time; the user's (offload keeps it)."""
    made = make_executor(kind, cluster)
    DELEGATE.target = made
    try:
        yield made
    finally:
        DELEGATE.target = None
        shut_down(kind, made)


@pytest.fixture(params=["thread", "dask"])
def gated_executor(request: pytest.FixtureRequest, cluster: Any) -> Iterator[Executor]:
    """An executor whose calls the tests' gates reach: threads, and the in-process cluster."""
    kind: str = request.param
    made = make_executor(kind, cluster)
    try:
        yield made
    finally:
        shut_down(kind, made)


def new_pool(executor: Executor | Callable[[], Executor], **settings: Any) -> offload.ExecutorPool:
    return offload.ExecutorPool(f"test-executor-{next(_names)}", executor, **settings)


def is_dask(executor: Executor) -> bool:
    return type(executor).__module__.startswith("distributed.")


def cluster_active(executor: Executor) -> int:
    """How many tasks wait or run on the executor's dask cluster, as its scheduler says."""
    return int(executor._client.run_on_scheduler(active_tasks))  # type: ignore[attr-defined]


def key() -> str:
    return uuid.uuid4().hex


# -- tests ------------------------------------------------------------------------------------


class TestCalls:
    """Calls reach each executor and come back as they would from the function."""

    async def test_call_returns_the_result(self, executor: Executor) -> None:
        """``pool.call`` runs the function in the executor with its arguments and keywords."""
        pool = new_pool(executor)
        assert await pool.call(add, 2, y=3) == 5

    async def test_exception_arrives_unchanged(self, executor: Executor) -> None:
        """An exception raised by the function reaches the awaiter with its type and args."""
        pool = new_pool(executor)
        with pytest.raises(LookupError) as caught:
            await pool.call(fail, "no such row")

        assert caught.value.args == ("no such row", 7)
        assert pool.stats().failed == 1

    async def test_decorated_module_function_runs_the_original(
        self, kind: str, executor: Executor
    ) -> None:
        """A module-level decorated function goes by reference and runs as the original."""
        assert await cube(3) == 27
        pid, thread = await remote_where()
        if kind in ("process", "loky"):
            assert pid != os.getpid()
        else:
            assert thread != threading.current_thread().name

    async def test_decorator_with_options(self, gated_executor: Executor) -> None:
        """``@pool(limit=..., timeout=...)`` returns a decorator whose calls run too."""
        pool = new_pool(gated_executor)
        plus = pool(limit=1, timeout=WAIT)(add)
        assert await plus(1, 2) == 3
        assert plus.__name__ == "add"

    def test_generator_function_is_refused(self) -> None:
        """A generator function cannot go to an executor: ``TypeError`` says so."""
        pool = new_pool(ThreadPoolExecutor(1))
        with pytest.raises(TypeError, match="generator"):
            pool(numbers)

    def test_cancel_policy_of_another_kind_is_refused(self) -> None:
        """``cancel="kill"`` is a process pool's policy: an executor pool names its own."""
        pool = new_pool(ThreadPoolExecutor(1))
        with pytest.raises(ValueError, match="'cancel', 'wait'"):
            pool(cancel="kill")(add)  # type: ignore[call-overload]


class TestPickling:
    """What cannot be pickled is refused before any executor sees it."""

    def test_lambda_is_refused_at_decoration(self) -> None:
        """Decorating a lambda raises ``SerializationError`` at once."""
        pool = new_pool(ThreadPoolExecutor(1))
        with pytest.raises(offload.SerializationError, match="lambda"):
            pool(lambda: 1)

    @pytest.mark.parametrize("kind", ["process", "loky", "dask"])
    async def test_lambda_call_is_refused(self, executor: Executor) -> None:
        """A lambda sent with ``call`` to a pickling executor raises ``SerializationError``."""
        pool = new_pool(executor)
        with pytest.raises(offload.SerializationError, match="function"):
            await pool.call(lambda: 1)

        assert await pool.call(add, 1) == 1  # the pool is still usable

    @pytest.mark.parametrize("kind", ["process", "loky", "dask"])
    async def test_unpicklable_argument_is_named(self, executor: Executor) -> None:
        """An argument that cannot be pickled is named in the ``SerializationError``."""
        pool = new_pool(executor)
        with pytest.raises(offload.SerializationError, match="argument 0"):
            await pool.call(add, threading.Lock())  # type: ignore[arg-type]

    @pytest.mark.parametrize("kind", ["process", "loky", "dask"])
    async def test_unpicklable_result_is_named(self, executor: Executor) -> None:
        """A result that cannot be pickled back raises ``SerializationError`` naming it."""
        pool = new_pool(executor)
        with pytest.raises(offload.SerializationError, match="result"):
            await pool.call(return_lock)

        assert await pool.call(add, 1) == 1

    async def test_stdlib_thread_pool_pickles_nothing(self) -> None:
        """A stdlib thread pool runs in this process: a lambda and a lock go as they are."""
        with ThreadPoolExecutor(1) as threads:
            pool = new_pool(threads)
            lock = threading.Lock()

            def is_lock(held: object) -> bool:
                return held is lock

            assert await pool.call(is_lock, lock)


class TestCapacity:
    """``max_workers`` is what the executor can run; the rest waits on offload's side."""

    async def test_max_workers_is_the_executors_size(self, kind: str, executor: Executor) -> None:
        """Left out, ``max_workers`` is the executor's size (a cluster's total threads)."""
        pool = new_pool(executor)
        assert pool.stats().max_workers == 2
        await pool.call(add, 1)
        assert pool.stats().max_workers == pool.settings().max_workers == 2

    def test_unknown_size_needs_max_workers(self) -> None:
        """An executor that tells no size, without ``max_workers``, is a ``ValueError``."""
        with pytest.raises(ValueError, match=r"pass max_workers="):
            new_pool(Delegate())

    async def test_factory_of_unknown_size_fails_its_first_call(self) -> None:
        """A factory whose executor tells no size fails the first call with ``ValueError``."""
        pool = new_pool(Delegate)
        with pytest.raises(ValueError, match=r"cannot tell how many calls Delegate runs"):
            await pool.call(add, 1)

    def test_idle_timeout_is_refused(self) -> None:
        """``idle_timeout`` is not a setting of an executor pool, since its executor's is."""
        with pytest.raises(ValueError, match="idle_timeout"):
            new_pool(ThreadPoolExecutor(1), idle_timeout=1.0)

    async def test_pending_calls_never_reach_the_executor(self, gated_executor: Executor) -> None:
        """Four calls on a pool of two: two are in the executor, two wait on offload's side."""
        pool = new_pool(gated_executor)
        keys = [key() for _ in range(4)]
        async with anyio.create_task_group() as tg:
            for k in keys:
                tg.start_soon(call_gated, pool, k)

            await until(lambda: pool.stats().pending == 2, "two calls pending")
            await until(lambda: sum(started(k)() for k in keys) == 2, "two calls started")
            stats = pool.stats()
            assert (stats.busy, stats.pending) == (2, 2)
            if is_dask(gated_executor):
                assert cluster_active(gated_executor) == 2
            else:
                assert gated_executor._work_queue.qsize() == 0  # type: ignore[attr-defined]

            for k in keys:
                event(k).set()

        assert set(keys) <= _ran

    async def test_limit_holds_calls_back(self, gated_executor: Executor) -> None:
        """With ``limit=1``, a second call of the function waits although a slot is free."""
        pool = new_pool(gated_executor)
        limited = pool(limit=1)(gated)
        first, second = key(), key()
        async with anyio.create_task_group() as tg:
            tg.start_soon(limited, first)
            await until(started(first))
            tg.start_soon(limited, second)
            await until(lambda: pool.stats().pending == 1, "the second call waits")
            assert not started(second)()
            assert pool.stats().busy == 1
            event(first).set()
            event(second).set()

        assert {first, second} <= _ran

    async def test_max_pending_turns_calls_away(self, gated_executor: Executor) -> None:
        """Past ``max_pending`` waiting calls, a call fails at once with ``Overloaded``."""
        pool = new_pool(gated_executor, max_pending=1)
        keys = [key() for _ in range(3)]
        async with anyio.create_task_group() as tg:
            for k in keys:
                tg.start_soon(call_gated, pool, k)

            await until(lambda: pool.stats().pending == 1, "one call pending")
            with pytest.raises(offload.Overloaded):
                await pool.call(gated, key())

            for k in keys:
                event(k).set()

        assert pool.stats().rejected == 1


class TestCancellation:
    """Cancelling a call cancels its future; a pending call never reaches the executor."""

    async def test_pending_call_never_runs(self, gated_executor: Executor) -> None:
        """A call still waiting on offload's side when cancelled never runs."""
        pool = new_pool(gated_executor)
        running, waiting = [key(), key()], key()
        async with anyio.create_task_group() as tg:
            for k in running:
                tg.start_soon(call_gated, pool, k)

            await until(lambda: pool.stats().busy == 2, "both slots taken")
            with anyio.CancelScope() as scope:
                tg.start_soon(_cancel_when_pending, pool, scope)
                await pool.call(gated, waiting)

            event(waiting).set()
            for k in running:
                event(k).set()

        assert set(running) <= _ran
        assert waiting not in _ran
        stats = pool.stats()
        assert (stats.cancelled, stats.completed, stats.busy) == (1, 2, 0)

    async def test_running_call_returns_at_once(self, gated_executor: Executor) -> None:
        """A running call's awaiter gets control back at once when cancelled."""
        pool = new_pool(gated_executor)
        k = key()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_when_started, k, scope)
                await pool.call(gated, k)

        assert scope.cancelled_caught
        if is_dask(gated_executor):
            # The task is cancelled on the cluster, and its slot freed at once.
            await until(lambda: cluster_active(gated_executor) == 0, "the task is cancelled")
            assert pool.stats().busy == 0
        else:
            # A running thread cannot be stopped: it holds its slot until it returns.
            assert pool.stats().busy == 1
            assert pool.stats().abandoned == 1

        event(k).set()
        await until(lambda: pool.stats().busy == 0, "the slot is free")
        assert pool.stats().cancelled == 1

    @needs_dask
    async def test_task_queued_on_the_cluster_is_cancelled_there(self, cluster: Any) -> None:
        """A call the cluster holds but has not started is cancelled there, and never runs."""
        executor = cluster.get_executor(pure=False)
        pool = new_pool(executor, max_workers=3)  # one more than the cluster's threads
        running, queued = [key(), key()], key()
        async with anyio.create_task_group() as tg:
            for k in running:
                tg.start_soon(call_gated, pool, k)

            await until(lambda: all(started(k)() for k in running), "both threads busy")
            with anyio.CancelScope() as scope:
                tg.start_soon(_cancel_when, lambda: cluster_active(executor) == 3, scope)
                await pool.call(gated, queued)

            await until(lambda: cluster_active(executor) == 2, "the queued task is gone")
            for k in running:
                event(k).set()

        await until(lambda: cluster_active(executor) == 0, "the cluster is idle")
        assert set(running) <= _ran
        assert queued not in _ran
        assert not started(queued)()

    async def test_timeout_cancels_the_future(self, gated_executor: Executor) -> None:
        """A call past its ``timeout`` raises ``TimeoutError``; on dask its task is cancelled."""
        pool = new_pool(gated_executor)
        k = key()
        slow = pool(timeout=0.2)(gated)
        with pytest.raises(TimeoutError, match="timeout"):
            await slow(k)

        assert started(k)()
        if is_dask(gated_executor):
            await until(lambda: cluster_active(gated_executor) == 0, "the task is cancelled")

        event(k).set()
        await until(lambda: pool.stats().busy == 0, "the slot is free")
        assert pool.stats().timed_out == 1

    async def test_wait_policy_waits_for_the_call(self, gated_executor: Executor) -> None:
        """With ``cancel="wait"``, the cancellation arrives once the call has returned."""
        pool = new_pool(gated_executor)
        waits = pool(cancel="wait")(gated)
        k = key()
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                tg.start_soon(_cancel_then_open, k, scope)
                await waits(k)

            assert k in _ran  # it returned before the awaiter got its cancellation
        assert pool.stats().busy == 0

    async def test_future_is_cancelled_off_the_loop_thread(self) -> None:
        """Cancelling a call cancels its future on a thread of the pool, not the loop's (a
        dask future's cancel is a blocking request to the scheduler)."""
        holding = Holding()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_when, lambda: bool(holding.futures), scope)
                await call_then_close(new_pool(holding))

        await until(lambda: bool(holding.cancelled_on), "the future is cancelled")
        assert threading.get_ident() not in holding.cancelled_on
        assert holding.futures[0].cancelled()

    async def test_cancelled_is_false_in_an_executor(self) -> None:
        """``offload.cancelled()`` is False in an executor's workers: offload does not run
        them."""
        with ThreadPoolExecutor(1) as threads:
            pool = new_pool(threads)
            assert await pool.call(offload.cancelled) is False


async def _cancel_when_pending(pool: offload.ExecutorPool, scope: anyio.CancelScope) -> None:
    await until(lambda: pool.stats().pending == 1, "the call is pending")
    scope.cancel()


async def _cancel_when_started(k: str, scope: anyio.CancelScope) -> None:
    await until(started(k))
    scope.cancel()


async def _cancel_when(predicate: Callable[[], bool], scope: anyio.CancelScope) -> None:
    await until(predicate)
    scope.cancel()


async def _cancel_then_open(k: str, scope: anyio.CancelScope) -> None:
    await until(started(k))
    scope.cancel()
    for _ in range(10):  # the awaiter, cancelled, keeps waiting for the call
        await anyio.lowlevel.checkpoint()
        assert not scope.cancelled_caught

    assert k not in _ran
    event(k).set()


class TestStats:
    """``stats()`` keeps its invariants over an executor."""

    async def test_outcomes_add_up(self, gated_executor: Executor) -> None:
        """Completed, failed and cancelled calls are each counted once, busy never tops
        ``max_workers``."""
        pool = new_pool(gated_executor)
        watch = StatsWatch(pool)
        keys = [key() for _ in range(4)]

        async def one(k: str) -> None:
            watch.begin()
            try:
                await pool.call(gated, k)
            finally:
                watch.end()

        async def failing() -> None:
            watch.begin()
            try:
                with pytest.raises(LookupError):
                    await pool.call(fail, "x")
            finally:
                watch.end()

        async with anyio.create_task_group() as tg:
            for k in keys:
                tg.start_soon(one, k)

            await until(lambda: pool.stats().pending == 2, "two calls pending")
            watch.check()
            with anyio.CancelScope() as scope:  # a caller cancelled already
                scope.cancel()
                await one(key())

            for k in keys:
                event(k).set()

            tg.start_soon(failing)

        watch.settled()
        assert watch.problems == []
        stats = pool.stats()
        assert (stats.completed, stats.failed, stats.cancelled) == (4, 1, 1)
        assert stats.run_time.count == 5


class TestOwnership:
    """An executor object stays the user's; a factory's executor is offload's."""

    async def test_users_executor_is_not_shut_down(self) -> None:
        """After ``aclose()``, the user's executor still takes work."""
        with ThreadPoolExecutor(1) as threads:
            pool = new_pool(threads)
            assert await pool.call(add, 1) == 1
            await pool.aclose()
            assert threads.submit(add, 2).result(WAIT) == 2
            with pytest.raises(offload.PoolClosed):
                await pool.call(add, 1)

    async def test_close_warns_about_calls_still_running(
        self, gated_executor: Executor, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Past ``shutdown_timeout``, closing names the calls still running and cancels
        their futures."""
        pool = new_pool(gated_executor, shutdown_timeout=0.05)
        k = key()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(call_gated, pool, k)
                await until(started(k))
                await pool.aclose()
                scope.cancel()

        assert "still running" in caplog.text
        assert "gated" in caplog.text
        assert "futures are cancelled" in caplog.text
        event(k).set()
        if is_dask(gated_executor):
            await until(lambda: cluster_active(gated_executor) == 0, "the task is cancelled")

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_factory_runs_per_loop_and_is_shut_down(
        self, backend: tuple[str, dict[str, Any]]
    ) -> None:
        """A factory is called when the pool starts in a loop, its executor shut down at the
        end of that loop's run, and the next run makes a new one."""
        made: list[ThreadPoolExecutor] = []

        def factory() -> ThreadPoolExecutor:
            made.append(ThreadPoolExecutor(3))
            return made[-1]

        pool = new_pool(factory)
        assert pool.stats().max_workers == 0  # no executor yet, so no size yet

        async def main() -> int:
            before = len(made)
            await anyio.lowlevel.checkpoint()
            assert len(made) == before  # nothing made before the first call
            await pool.call(add, 1)
            await pool.call(add, 2)
            assert len(made) == before + 1
            return pool.stats().max_workers

        for run in (1, 2):
            assert anyio.run(main, backend=backend[0], backend_options=backend[1]) == 3
            assert len(made) == run
            assert made[-1]._shutdown

    async def test_factory_executor_is_shut_down_on_aclose(self) -> None:
        """``aclose()`` shuts down the factory's executor; later calls raise ``PoolClosed``."""
        made: list[ProcessPoolExecutor] = []

        def factory() -> ProcessPoolExecutor:
            forkserver = multiprocessing.get_context("forkserver")
            made.append(ProcessPoolExecutor(1, mp_context=forkserver))
            return made[-1]

        async with new_pool(factory) as pool:
            assert await pool.call(add, 5) == 5

        assert made[0]._shutdown_thread
        assert multiprocessing.active_children() == []
        with pytest.raises(offload.PoolClosed):
            await pool.call(add, 1)

    @needs_dask
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_dask_cluster_factory_leaves_nothing_behind(
        self, backend: tuple[str, dict[str, Any]]
    ) -> None:
        """A factory that starts a ``LocalCluster`` and its ``Client``: the calls run in
        worker processes, and no process or thread is left once the loop's run returns."""
        clients: list[Any] = []
        distributed = import_distributed()

        def factory() -> Executor:
            local = distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",  # any free port: None still binds 8787
            )
            clients.append(distributed.Client(local))
            return clients[-1].get_executor(pure=False)  # type: ignore[no-any-return]

        pool = new_pool(factory)

        async def main() -> tuple[int, int]:
            pid = await pool.call(os.getpid)
            return pid, pool.stats().max_workers

        pid, max_workers = anyio.run(main, backend=backend[0], backend_options=backend[1])
        assert pid != os.getpid()
        assert max_workers == 2  # the cluster's threads
        assert clients[0].status == "closed"
        assert multiprocessing.active_children() == []


class GatedFactory:
    """A factory that records its thread, then waits for its gate before making a stdlib
    thread pool of ``size`` (or raising ``error``)."""

    def __init__(self, size: int = 2, error: Exception | None = None) -> None:
        self.size = size
        self.error = error
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.threads: list[int] = []
        self.made: list[ThreadPoolExecutor] = []

    def __call__(self) -> ThreadPoolExecutor:
        self.threads.append(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(WAIT), "the test opens the gate"
        if self.error is not None:
            raise self.error

        self.made.append(ThreadPoolExecutor(self.size))
        return self.made[-1]


class TestFactoryStart:
    """A factory makes its executor off the loop's thread while calls wait for it."""

    async def test_factory_runs_off_the_loop_thread(self) -> None:
        """The factory runs on a thread that is not the event loop's."""
        factory = GatedFactory()
        factory.gate.set()
        async with new_pool(factory) as pool:
            assert await pool.call(add, 1) == 1

        assert factory.threads
        assert threading.get_ident() not in factory.threads

    async def test_calls_wait_for_the_factory_then_run(self) -> None:
        """Calls made while the factory runs wait as pending, then run in its executor,
        whose size becomes ``max_workers``."""
        factory = GatedFactory(size=3)
        results: list[int] = []

        async def call(x: int) -> None:
            results.append(await pool.call(add, x))

        async with new_pool(factory) as pool, anyio.create_task_group() as tg:
            for x in range(4):
                tg.start_soon(call, x)

            await until(lambda: pool.stats().pending == 4, "four calls wait for the factory")
            await until(factory.entered.is_set, "the factory runs")
            assert (pool.stats().busy, pool.stats().max_workers) == (0, 0)
            factory.gate.set()

        assert sorted(results) == [0, 1, 2, 3]
        assert pool.stats().max_workers == pool.settings().max_workers == 3
        assert factory.made[0]._shutdown

    async def test_calls_waiting_for_the_factory_count_against_max_pending(self) -> None:
        """While the factory runs no worker is free, so ``max_pending`` bounds the calls."""
        factory = GatedFactory()
        async with new_pool(factory, max_pending=1) as pool, anyio.create_task_group() as tg:
            tg.start_soon(call_add, pool, 1)
            await until(lambda: pool.stats().pending == 1, "one call waits")
            with pytest.raises(offload.Overloaded):
                await pool.call(add, 2)

            factory.gate.set()

        assert (pool.stats().completed, pool.stats().rejected) == (1, 1)

    async def test_configure_while_the_factory_runs(self) -> None:
        """Settings changed while the factory runs apply once its executor is there: an
        explicit ``max_workers`` wins over the executor's size."""
        factory = GatedFactory(size=3)
        async with new_pool(factory) as pool, anyio.create_task_group() as tg:
            tg.start_soon(call_add, pool, 1)
            await until(lambda: pool.stats().pending == 1, "one call waits")
            pool.configure(max_pending=5)
            pool.configure(max_workers=1)
            assert pool.settings().max_workers == 1
            factory.gate.set()

        assert pool.settings().max_workers == 1
        assert pool.stats().completed == 1

    async def test_factory_error_fails_the_waiting_and_later_calls(self) -> None:
        """A factory that raises fails the calls waiting for it with its exception, and
        every later call of the loop too."""
        factory = GatedFactory(error=LookupError("no cluster today"))
        errors: list[BaseException] = []

        async def call() -> None:
            with pytest.raises(LookupError, match="no cluster today") as info:
                await pool.call(add, 1)
            errors.append(info.value)

        async with new_pool(factory) as pool:
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                tg.start_soon(call)
                await until(lambda: pool.stats().pending == 2, "two calls wait")
                factory.gate.set()

            await call()

        assert len(errors) == 3
        assert pool.stats().failed == 3

    async def test_unknown_size_fails_the_waiting_calls(self) -> None:
        """A factory's executor that tells no size, without ``max_workers``, fails the calls
        waiting for it with ``ValueError``."""
        gate = threading.Event()

        def factory() -> Delegate:
            assert gate.wait(WAIT), "the test opens the gate"
            return Delegate()

        async def call() -> None:
            with pytest.raises(ValueError, match=r"pass max_workers="):
                await pool.call(add, 1)

        async with new_pool(factory) as pool, anyio.create_task_group() as tg:
            tg.start_soon(call)
            tg.start_soon(call)
            await until(lambda: pool.stats().pending == 2, "two calls wait")
            gate.set()

        assert pool.stats().failed == 2

    async def test_aclose_during_the_factory_shuts_down_what_it_made(self) -> None:
        """``aclose()`` while the factory runs turns the waiting call away, waits for the
        factory and shuts down its executor."""
        factory = GatedFactory()
        pool = new_pool(factory)
        turned_away = threading.Event()

        async def call() -> None:
            with pytest.raises(offload.PoolClosed):
                await pool.call(add, 1)
            turned_away.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await until(factory.entered.is_set)
            tg.start_soon(pool.aclose)
            await until(turned_away.is_set)  # aclose() is under way
            factory.gate.set()

        assert len(factory.made) == 1
        assert factory.made[0]._shutdown
        assert not [t for t in threading.enumerate() if t.name.endswith("-control")]

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_loop_ending_during_the_factory_leaves_nothing(
        self, backend: tuple[str, dict[str, Any]]
    ) -> None:
        """A loop's run that ends while the factory runs waits for it and shuts down the
        executor it made."""
        factory = GatedFactory()
        pool = new_pool(factory)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(call_add, pool, 1)
                await until(factory.entered.is_set)
                tg.cancel_scope.cancel()

            factory.gate.set()  # the run ends now, with the factory running or just done

        anyio.run(main, backend=backend[0], backend_options=backend[1])
        assert len(factory.made) == 1
        assert factory.made[0]._shutdown

    async def test_map_window_is_the_factory_executors_size(self) -> None:
        """``map``'s default ``max_in_flight`` is the size of the factory's executor."""
        factory = GatedFactory(size=3)
        keys = [key() for _ in range(6)]
        read: list[str] = []

        def items() -> Iterator[str]:
            for k in keys:
                read.append(k)
                yield k

        results: list[str] = []
        async with new_pool(factory) as pool:

            async def consume() -> None:
                results.extend([value async for value in pool.map(gated, items())])

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await until(factory.entered.is_set)
                factory.gate.set()
                await until(lambda: sum(started(k)() for k in keys) == 3, "three calls run")
                assert len(read) == 3
                assert pool.stats().pending == 0
                for k in keys:
                    event(k).set()

        assert results == keys


def job_of(fn: Callable[..., Any], *args: Any) -> Job:
    """A job as the runtime makes it, without a loop (nobody awaits its waiter)."""
    return Job(fn, args, {}, None, None, None, 0.0)  # type: ignore[arg-type]


class TestWorkerLayer:
    """The executor's workers, without an event loop: a queue is the delivery callback."""

    def test_jobs_past_capacity_wait_on_this_side(self) -> None:
        """With room for one, a second job waits here until the first is delivered."""
        done: queue.Queue[Job] = queue.Queue()
        with ThreadPoolExecutor(2) as threads:
            workers = ExecutorWorkers("layer", done.put, threads, 1, owned=False)
            first, second = key(), key()
            assert workers.submit(job_of(gated, first), None)
            assert workers.submit(job_of(gated, second), None)
            assert event(f"{first}.started").wait(WAIT)
            assert workers.gauges() == (1, 1, 1, 0)
            assert not started(second)()
            event(first).set()
            event(second).set()
            delivered = [done.get(timeout=WAIT), done.get(timeout=WAIT)]
            assert [job.value for job in delivered] == [first, second]
            assert workers.gauges() == (0, 0, 0, 0)

    def test_terminate_cancels_a_future_not_started(self) -> None:
        """Terminating a job the executor holds but has not started cancels it: it never
        runs, and its slot is free."""
        done: queue.Queue[Job] = queue.Queue()
        with ThreadPoolExecutor(1) as threads:
            workers = ExecutorWorkers("layer", done.put, threads, 2, owned=False)
            running, held = key(), key()
            workers.submit(job_of(gated, running), None)
            assert event(f"{running}.started").wait(WAIT)
            job = job_of(gated, held)
            workers.submit(job, None)
            job.caller_gone = True
            workers.terminate(job)
            assert done.get(timeout=WAIT) is job
            assert (job.ok, job.error) == (False, None)
            assert workers.gauges()[1] == 1
            event(running).set()
            assert done.get(timeout=WAIT).value == running
            workers._tasks.put(None)  # end the control thread that cancelled the future
            assert workers._control is not None
            workers._control.join(WAIT)

        assert held not in _ran
