"""Mechanism: calls handed to a ``concurrent.futures.Executor`` that offload does not run.

An executor pool keeps its waiting calls in a :class:`~offload._queue.JobQueue` on this side
and hands the executor at most ``max_workers`` of them at a time, so a pending call never
reaches the executor (where it could no longer be taken back) and the pool's capacity is
what the executor can really run. Each call goes out through ``executor.submit`` and comes
back through its future's done-callback, which runs in a thread of the executor (a worker
thread, a manager thread, dask's event loop thread): from there the job is handed to the
loop like a thread worker hands it, and the freed slot takes the next queued call at once.

Stopping a call is cancelling its future (:meth:`ExecutorWorkers.terminate`): a future the
executor has not started never runs; dask.distributed's futures cancel their task on the
cluster (its ``ClientExecutor`` turns ``future.cancel()`` into ``client.cancel``, a blocking
request to the scheduler). A call that already runs in a stdlib or loky pool runs to its
end, holding its slot.

Nothing that may block runs on the loop's thread: the pool's control thread (one per pool
and loop, started when first needed, joined at shutdown) calls a factory, cancels futures
and shuts down an executor offload made, one task after the other. Where the executor
comes from (the user's, or made by a factory and closed here) is :class:`ExecutorSource`'s
business.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import pickle
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, Future
from queue import SimpleQueue
from time import monotonic, perf_counter
from types import TracebackType
from typing import Any

import anyio

from ._child import PROTOCOL, FunctionRef, describe
from ._exceptions import SerializationError
from ._job import Job, qualname, refuse_awaitable
from ._processes import _dumps_call, reference  # pyright: ignore[reportPrivateUsage]
from ._queue import JobQueue
from ._settings import PoolSettings

__all__ = (
    "ExecutorSource",
    "ExecutorWorkers",
    "close_executor",
    "executor_size",
    "run_remote",
)

logger = logging.getLogger("offload")


def run_remote(
    fn: object, args: tuple[Any, ...], kwargs: dict[str, Any], pickled: bool = False
) -> Any:
    """Run one call where the executor runs it (a thread, a process, a cluster's worker).

    A decorated function arrives by reference and runs as the original function; a function
    that returns an awaitable is refused, as in every other pool. Where the result goes back
    pickled, one that cannot be is replaced by a ``SerializationError`` saying so.
    """
    target: Callable[..., Any] = fn.resolve() if isinstance(fn, FunctionRef) else fn  # type: ignore[assignment]
    value = target(*args, **kwargs)
    if hasattr(value, "__await__"):
        raise refuse_awaitable(target, value)

    if pickled:
        try:
            pickle.dumps(value, PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                "result",
                qualname(target),
                f"the result ({describe(value)}) cannot be pickled: {type(exc).__name__}: {exc}",
                "return plain data that pickles (numbers, strings, bytes, lists, dicts, "
                "dataclasses of those)",
            ) from None

    return value


def _dask_client(executor: object) -> Any:
    """Return the dask.distributed ``Client`` behind ``executor``, if it is dask's."""
    if type(executor).__module__.startswith("distributed."):
        return getattr(executor, "_client", None)

    return None


def executor_size(executor: object) -> int | None:
    """Return how many calls ``executor`` runs at once, where it tells it.

    ``_max_workers`` for the stdlib's pools and loky's; a dask.distributed cluster's total
    threads (asking its scheduler). None where the executor does not say.
    """
    client = _dask_client(executor)
    if client is not None:
        threads = sum(client.nthreads().values())
        return threads if threads >= 1 else None

    size = getattr(executor, "_max_workers", None)
    if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
        return size

    return None


def close_executor(executor: Executor) -> None:
    """Shut down an executor that offload made (from the user's factory), and what it holds.

    A dask executor's client is closed too, and the cluster that client reaches (a
    ``LocalCluster`` the factory started); a stdlib pool cancels what has not started.
    """
    client = _dask_client(executor)
    if client is not None:
        cluster = getattr(client, "cluster", None)
        executor.shutdown(wait=False)  # its tasks are cancelled on the cluster
        client.close()
        if cluster is not None:
            cluster.close()

        _join_dask_threads()
        return

    stdlib = (concurrent.futures.ThreadPoolExecutor, concurrent.futures.ProcessPoolExecutor)
    if isinstance(executor, stdlib):
        executor.shutdown(wait=True, cancel_futures=True)
    else:
        executor.shutdown(wait=True)


# How long the end of a factory's dask cluster waits for dask's own threads to end.
_DASK_THREADS_GRACE = 5.0


def _join_dask_threads() -> None:
    """Wait (bounded) for the threads of dask.distributed that end once their cluster is
    closed: a scheduler's or worker's profiler (``Profile``), the watch of each worker process.
    They end on their own a moment after ``cluster.close()``, and no thread may outlive the
    loop's run. dask's process-wide helper thread (a thread pool's worker) is not one of them.
    """
    deadline = monotonic() + _DASK_THREADS_GRACE
    me = threading.current_thread()
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)
        module = getattr(target, "__module__", None) or ""
        if thread is not me and module.startswith("distributed."):
            thread.join(max(0.0, deadline - monotonic()))


def _crosses_processes(executor: object) -> bool:
    """Whether calls sent to ``executor`` are pickled (all but the stdlib's thread pool)."""
    return not isinstance(executor, concurrent.futures.ThreadPoolExecutor)


class _Ready:
    """Hand a factory's executor (or why there is none) to the workers on the loop's thread
    (a :class:`~offload._runtime.Delivery`)."""

    __slots__ = ("error", "executor", "size", "workers")

    def __init__(
        self,
        workers: ExecutorWorkers,
        executor: Executor | None,
        size: int | None,
        error: BaseException | None,
    ) -> None:
        self.workers = workers
        self.executor = executor
        self.size = size
        self.error = error

    def deliver(self) -> None:
        self.workers._ready(self.executor, self.size, self.error)  # pyright: ignore[reportPrivateUsage]


class _Closed:
    """Tell the loop that an owned executor is shut down (a Delivery)."""

    __slots__ = ("event",)

    def __init__(self, event: anyio.Event) -> None:
        self.event = event

    def deliver(self) -> None:
        self.event.set()


class ExecutorWorkers:
    """An executor behind one pool in one event loop, and the calls waiting for it.

    ``submit`` queues a job; while fewer than ``max_workers`` calls are in the executor, the
    oldest queued job goes to ``executor.submit``, and its future's done-callback hands it to
    ``deliver``.

    Without an executor yet (a factory's, being made by :meth:`make`), the capacity is 0:
    calls wait as pending, and count against ``max_pending`` as :meth:`JobQueue.refuses`
    says, until the executor arrives and they go to it; or, if there is none (the factory
    raised, or its executor tells no size and ``max_workers`` is not given), they fail with
    that error, as every later call of this loop does until the pool is closed.
    """

    def __init__(
        self,
        pool: str,
        deliver: Callable[[Any], None],
        executor: Executor | None,
        max_workers: int,
        owned: bool,
        sizer: Callable[[Executor, int | None], int] | None = None,
    ) -> None:
        self._pool = pool
        self._deliver = deliver
        # For a factory's executor: given it and its size (None: unknown), set and return the
        # max_workers in force (the explicit one, or that size), or raise ValueError.
        self._sizer = sizer
        self.executor = executor
        self.owned = owned
        self._pickles = executor is not None and _crosses_processes(executor)
        self._max_workers = max_workers  # the capacity once there is an executor
        self.queue = queue = JobQueue(max_workers if executor is not None else 0)
        self._lock = queue.lock
        self._jobs = queue.jobs
        self.withdraw = queue.withdraw
        self.withdraw_all = queue.withdraw_all
        # The calls handed to the executor, and their futures (None while being handed).
        self._futures: dict[Job, Future[Any] | None] = {}
        self._to_cancel: set[Job] = set()  # stopped while being handed
        self._closing = False
        self._error: BaseException | None = None  # why there is no executor
        self._error_tb: TracebackType | None = None
        self._made: Executor | None = None  # the factory's executor, to shut down
        self._is_settled = False  # the executor is known (or known not to be)
        self._settled: anyio.Event | None = None  # what settled() waits for
        self._tasks: SimpleQueue[Callable[[], object] | None] = SimpleQueue()
        self._control: threading.Thread | None = None

    # -- the control thread: what may block, off the loop's thread -----------------------------

    def _run_later(self, task: Callable[[], object]) -> None:
        """Run ``task`` in the control thread, after the tasks before it."""
        with self._lock:
            if self._control is None:
                self._control = threading.Thread(
                    target=self._run_tasks, name=f"offload-{self._pool}-control", daemon=True
                )
                self._control.start()

            self._tasks.put(task)

    def _run_tasks(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except Exception:
                logger.exception("pool %r: its executor's control thread failed", self._pool)

    def make(
        self, factory: Callable[[], Executor], size: Callable[[Executor], int | None]
    ) -> None:
        """Make the executor with ``factory`` in the control thread, learn its ``size``, and
        hand both to the loop's thread (:meth:`_ready`)."""

        def start() -> None:
            try:
                self._made = factory()  # shut down at the end, whatever happens meanwhile
                found = size(self._made)
            except BaseException as exc:  # the calls waiting for it fail with it
                self._deliver(_Ready(self, None, None, exc))
                return

            self._deliver(_Ready(self, self._made, found, None))

        self._run_later(start)

    def _ready(
        self, executor: Executor | None, size: int | None, error: BaseException | None
    ) -> None:
        """The factory is done (on the loop's thread): hand the queued calls to its
        executor, or fail them with ``error``."""
        if self._closing:
            return  # shutdown() shuts the executor down

        if error is None:
            assert executor is not None
            assert self._sizer is not None, "a factory's workers are made with a sizer"
            try:
                max_workers = self._sizer(executor, size)
            except ValueError as exc:  # no size: the executor is of no use
                error = exc
                self._made = None
                self._run_later(functools.partial(close_executor, executor))
            else:
                with self._lock:
                    self.executor = executor
                    self._pickles = _crosses_processes(executor)
                    self._max_workers = self.queue.capacity = max_workers
                    ready = self._take()

                self._start(ready)

        if error is not None:
            self._error, self._error_tb = error, error.__traceback__
            for job in self.withdraw_all():
                self._fail(job)

        self._set_settled()

    def _fail(self, job: Job) -> None:
        """End ``job`` with the error that left the pool without an executor."""
        assert self._error is not None
        job.error = self._error.with_traceback(self._error_tb)
        self._deliver(job)

    async def settled(self) -> None:
        """Return once the executor is there, or known not to be (or the pool closes)."""
        if self.executor is not None or self._is_settled:
            return

        if self._settled is None:
            self._settled = anyio.Event()

        await self._settled.wait()

    def _set_settled(self) -> None:
        self._is_settled = True
        if self._settled is not None:
            self._settled.set()

    def gauges(self) -> tuple[int, int, int, int]:
        """Return, read together: calls in the executor (its workers as offload sees them),
        the same count as busy, calls waiting (as :attr:`JobQueue.pending`), and calls in
        the executor whose caller is gone."""
        with self._lock:
            busy = self.queue.busy
            abandoned = sum(1 for job in self._futures if job.abandoned)
            return busy, busy, self.queue.pending, abandoned

    def submit(self, job: Job, max_pending: int | None, elsewhere: int = 0) -> bool:
        """Queue ``job``, and hand the executor what it has room for.

        Returns:
            False if the pending bound refuses it (see :meth:`JobQueue.refuses`).
        """
        if self._error is not None:  # no executor in this loop: the call fails with why
            self._fail(job)
            return True

        with self._lock:
            if max_pending is not None and self.queue.refuses(max_pending, elsewhere, True):
                return False

            self._jobs.append(job)
            ready = self._take()

        if ready:
            self._start(ready)

        return True

    def _take(self) -> deque[Job]:
        """Take the queued jobs the executor has room for (under the lock)."""
        ready: deque[Job] = deque()
        queue = self.queue
        jobs = self._jobs
        while jobs and queue.busy < queue.capacity and not self._closing:
            job = jobs.popleft()
            queue.busy += 1
            self._futures[job] = None
            ready.append(job)

        return ready

    def _start(self, ready: deque[Job]) -> None:
        while ready:
            ready.extend(self._hand(ready.popleft()))

    def _hand(self, job: Job) -> deque[Job]:
        """Submit ``job`` to the executor; return the jobs its slot frees if it ended here."""
        if job.caller_gone:  # stopped as it was taken: it never reaches the executor
            return self._release(job)

        executor = self.executor
        assert executor is not None, "the capacity is 0 until there is an executor"
        job.started = perf_counter()
        try:
            if self._pickles:
                _dumps_call(job)  # SerializationError names what cannot be pickled

            future = executor.submit(
                run_remote, reference(job.fn), job.args, job.kwargs, self._pickles
            )
        except BaseException as exc:  # unpicklable, or the executor is shut down or broken
            job.error = exc
            job.ended = perf_counter()
            return self._release(job)

        with self._lock:
            self._futures[job] = future
            cancel = job in self._to_cancel

        if cancel:  # stopped while being handed
            self._run_later(future.cancel)

        future.add_done_callback(functools.partial(self._finished, job))
        return deque()

    def _finished(self, job: Job, future: Future[Any]) -> None:
        """The future's done-callback, in a thread of the executor."""
        job.ended = perf_counter()
        if future.cancelled():
            if not job.caller_gone:
                job.error = concurrent.futures.CancelledError(
                    f"{job.name}() was cancelled by its executor, not by its caller (in pool "
                    f"{self._pool!r}); was the executor shut down?"
                )
        else:
            error = future.exception()
            if error is None:
                job.value = future.result()
                job.ok = True
            else:
                job.error = error

        ready = self._release(job)
        if ready:
            self._start(ready)

    def _release(self, job: Job) -> deque[Job]:
        """Free ``job``'s slot, hand it to the loop, and take what the slot can run next."""
        with self._lock:
            self._futures.pop(job, None)
            self._to_cancel.discard(job)
            self.queue.busy -= 1
            ready = self._take()

        self._deliver(job)
        return ready

    # -- Stopper: what stopping a running call means here -----------------------------------

    def notify(self, job: Job) -> None:
        """Nothing: ``offload.cancelled()`` stays False in an executor's workers."""

    def terminate(self, job: Job) -> None:
        """Cancel the call's future (on dask, its task is cancelled on the cluster)."""
        with self._lock:
            if job not in self._futures:
                return  # done already

            future = self._futures[job]
            if future is None:
                self._to_cancel.add(job)  # being handed: cancelled once it is
                return

        self._run_later(future.cancel)  # dask's asks its scheduler: not on the loop's thread

    def kill(self, job: Job) -> None:
        """Nothing more than :meth:`terminate`: an executor's worker cannot be killed here."""

    # -- settings and lifecycle ---------------------------------------------------------------

    def reconfigure(self, settings: PoolSettings) -> None:
        """Apply new settings: a larger ``max_workers`` hands queued calls on at once."""
        with self._lock:
            self._max_workers = settings.max_workers
            if self.executor is not None:
                self.queue.capacity = settings.max_workers
            ready = self._take()

        if ready:
            self._start(ready)

    def shutdown(self) -> Coroutine[Any, Any, None] | None:
        """Cancel what is still in the executor; shut down an executor offload made.

        Returns:
            Once the control thread has work (cancelling futures, a factory being called, an
            executor to shut down: a dask cluster takes a while to close), a coroutine that
            waits until it is done and the thread has ended.
        """
        with self._lock:
            self._closing = True
            futures = [future for future in self._futures.values() if future is not None]
            self._to_cancel.update(job for job, future in self._futures.items() if future is None)
            started = self._control is not None

        self._set_settled()
        for future in futures:
            self._run_later(future.cancel)

        if not (started or futures):
            return None

        return self._close()

    async def _close(self) -> None:
        closed = anyio.Event()
        self._run_later(self._close_then_tell(closed))
        self._tasks.put(None)  # the thread ends there
        with anyio.CancelScope(shield=True):
            await closed.wait()

        assert self._control is not None
        self._control.join()

    def _close_then_tell(self, closed: anyio.Event) -> Callable[[], None]:
        def close() -> None:  # in the control thread, after the factory if it still ran
            try:
                made, self._made = self._made, None
                if made is not None:
                    close_executor(made)
            except Exception:
                logger.exception("pool %r: shutting down its executor failed", self._pool)
            finally:
                self._deliver(_Closed(closed))

        return close


class ExecutorSource:
    """Where an executor pool's executor comes from, and how big it is.

    An :class:`~concurrent.futures.Executor` object is the user's: every event loop uses it
    and offload never shuts it down. A zero-argument factory is offload's: it is called in
    the pool's control thread as the pool starts in a loop (never on the loop's thread), and
    the executor it made is shut down when that loop's run ends (or on ``aclose()``).
    """

    def __init__(
        self,
        pool: str,
        executor: Executor | Callable[[], Executor],
        resize: Callable[[object, int | None], int],
    ) -> None:
        self.pool = pool
        self.owned = not isinstance(executor, Executor)
        self._given = executor
        # (loop key, a factory executor's size or None) -> the max_workers now in force there
        self._resize = resize
        self._size: int | None = None if self.owned else executor_size(executor)

    def check_size(self, explicit: int | None) -> None:
        """Refuse an executor whose size is unknown when ``max_workers`` is not given."""
        if explicit is None and not self.owned and self._size is None:
            raise ValueError(self._unknown_size(self._given))

    def _unknown_size(self, executor: object) -> str:
        return (
            f"pool {self.pool!r} cannot tell how many calls {type(executor).__name__} runs at "
            f"once; pass max_workers= (for a dask cluster, its total threads: "
            f"sum(client.nthreads().values()))"
        )

    def defaults(self) -> dict[str, object]:
        """Return the defaults of the pool's settings: ``max_workers`` is the executor's size.

        A factory's pool reports the size of the last executor it made (0 before the first,
        and while the first is being made).
        """
        return {"max_workers": self._size if self._size is not None else 0}

    def _make(self) -> Executor:
        factory: Callable[[], Executor] = self._given  # type: ignore[assignment]
        executor = factory()
        if not isinstance(executor, Executor):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"the factory of pool {self.pool!r} returned {executor!r}, not a "
                f"concurrent.futures.Executor; pass an executor, or a function that makes one"
            )

        return executor

    def _sized(self, key: object, executor: Executor, size: int | None) -> int:
        """A factory's executor tells its ``size`` (on the loop's thread): set and return the
        loop's ``max_workers``.

        Raises:
            ValueError: the size is unknown and ``max_workers`` is not given.
        """
        if size is not None:
            self._size = size

        max_workers = self._resize(key, size)
        if max_workers < 1:
            raise ValueError(self._unknown_size(executor))

        return max_workers

    def start_workers(
        self, pool: str, deliver: Callable[[Any], None], settings: PoolSettings, loop: Any
    ) -> ExecutorWorkers:
        """Return the workers of the pool in the loop starting now; a factory's executor
        follows from the control thread."""
        if not self.owned:
            executor: Executor = self._given  # type: ignore[assignment]
            if settings.max_workers < 1:  # no size from the executor, none given
                raise ValueError(self._unknown_size(executor))

            return ExecutorWorkers(pool, deliver, executor, settings.max_workers, owned=False)

        sizer = functools.partial(self._sized, loop.key)
        workers = ExecutorWorkers(pool, deliver, None, settings.max_workers, True, sizer)
        workers.make(self._make, executor_size)
        return workers
