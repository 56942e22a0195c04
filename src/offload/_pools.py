"""Policy: pools (capacity, pending bound, settings, stats, lifecycle) over worker mechanisms.

A pool object is declared at import time and holds only its name and settings. The first
call inside a running event loop starts a :class:`_Runtime` for that loop: the worker
mechanism (which holds the pool's capacity and its first-in, first-out queue), the limiters of
functions with a ``limit``, counters, and a system task that closes it all when the loop's run
ends.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import logging
import sys
import threading
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Mapping
from contextvars import ContextVar, copy_context
from queue import SimpleQueue
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, cast, overload

import anyio
from typing_extensions import ParamSpec, Self, Unpack

from ._backends import CANCELLED, Loop, Waiter, current_key, current_loop
from ._exceptions import Overloaded, PoolClosed, WorkerCrashed
from ._job import Job, qualname
from ._limiter import Limiter
from ._processes import KILL_GRACE, FunctionRef, ProcessWorkers, check_picklable_function
from ._settings import (
    PoolSettings,
    ProcessOptions,
    ProcessSettings,
    ThreadOptions,
    ThreadSettings,
    default_start_method,
    resolve,
    usable_cpus,
    validate,
)
from ._stats import Counters, PoolStats
from ._threads import ThreadWorkers

if TYPE_CHECKING:
    from typing import TypeAlias

__all__ = ("CancelPolicy", "ProcessCancelPolicy", "ProcessPool", "ThreadPool", "configure")

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
T = TypeVar("T")
SettingsT = TypeVar("SettingsT", bound=PoolSettings)

CancelPolicy: TypeAlias = Literal["abandon", "wait"]
ProcessCancelPolicy: TypeAlias = Literal["kill", "wait"]

logger = logging.getLogger("offload")

_registry: weakref.WeakValueDictionary[str, _Pool[Any]] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


class _State(enum.Enum):
    """Where a pool's runtime in one event loop stands."""

    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _Options:
    """The options of one decorated function (or of ad hoc calls, all defaults)."""

    __slots__ = ("__weakref__", "cancel", "grace", "limit", "retries", "timeout")

    def __init__(
        self,
        limit: int | None,
        timeout: float | None,
        cancel: str,
        retries: int = 0,
        grace: float = KILL_GRACE,
    ) -> None:
        self.limit = limit
        self.timeout = timeout
        self.cancel = cancel
        self.retries = retries
        self.grace = grace


def _check_options(
    pool: str,
    limit: object,
    timeout: object,
    cancel: object,
    policies: tuple[str, ...],
    retries: object = 0,
    grace: object = KILL_GRACE,
) -> _Options:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r} is not valid: it must be a whole number of at least 1")

    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ValueError(f"timeout={timeout!r} is not valid: it must be a number of seconds > 0")

    if cancel not in policies:
        raise ValueError(
            f"cancel={cancel!r} is not a cancellation policy of pool {pool!r}: use one of "
            f"{', '.join(map(repr, policies))}"
        )

    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries={retries!r} is not valid: it must be a whole number, 0 or more")

    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
        raise ValueError(
            f"grace={grace!r} is not valid: it must be a number of seconds, 0 or more"
        )

    return _Options(
        limit,
        None if timeout is None else float(cast(float, timeout)),
        str(cancel),
        retries,
        float(grace),
    )


# The async library's marker (sniffio's context variable, when sniffio is loaded) is cleared
# in the context a worker sees: code in a worker thread is not in async context.
_sniffio_cvar: ContextVar[str | None] | None = None


def _worker_context() -> Any:
    global _sniffio_cvar
    context = copy_context()
    cvar = _sniffio_cvar
    if cvar is None:
        sniffio = sys.modules.get("sniffio")
        if sniffio is None:
            return context

        cvar = _sniffio_cvar = sniffio.current_async_library_cvar

    if context.get(cvar) is not None:
        context.run(cvar.set, None)

    return context


class _Step:
    """One item of an offloaded generator, on its way back to the loop."""

    __slots__ = ("kind", "value", "waiter")

    def __init__(self, waiter: Waiter) -> None:
        self.waiter = waiter
        self.kind = ""
        self.value: Any = None

    def deliver(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(self)


def _drive_generator(
    gen_fn: Callable[..., Generator[Any, Any, Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    requests: SimpleQueue[tuple[str, Any, _Step | None]],
    post: Callable[[_Step], None],
) -> None:
    """Run a sync generator on this worker thread, one request from the loop at a time."""
    gen: Generator[Any, Any, Any] | None = None
    try:
        while True:
            op, value, step = requests.get()
            if step is None:  # close
                return

            try:
                if gen is None:
                    gen = gen_fn(*args, **kwargs)

                if op == "send":
                    step.value = gen.send(value)
                else:
                    step.value = gen.throw(value)

                step.kind = "item"
            except StopIteration:
                step.kind = "stop"
            except BaseException as exc:
                step.kind = "error"
                step.value = exc

            post(step)
            if step.kind != "item":
                return

            del step, value
    finally:
        if gen is not None:
            gen.close()


class Workers(Protocol):
    """What a worker mechanism gives the policy: capacity, a FIFO queue, and its end."""

    @property
    def workers(self) -> int: ...
    def gauges(self) -> tuple[int, int, int, int]: ...
    @property
    def pending(self) -> int: ...
    def submit(self, job: Job, max_pending: int | None, /) -> bool: ...
    def withdraw(self, job: Job, /) -> bool: ...
    def withdraw_all(self) -> list[Job]: ...
    def interrupt(self, job: Job, kill: bool, /) -> None: ...
    def escalate(self, job: Job, /) -> None: ...
    def reconfigure(self, settings: Any, /) -> None: ...
    def shutdown(self) -> object: ...


class _Runtime(Generic[SettingsT]):
    """A pool's state in one event loop. Only that loop's thread touches it, except
    :meth:`post`, which worker threads call."""

    def __init__(self, pool: _Pool[SettingsT], loop: Loop, base: SettingsT) -> None:
        self.pool = pool
        self.name = pool.name
        self.loop = loop
        self.key = loop.key
        self.base = base  # defaults and environment, without the explicit settings
        self.settings: SettingsT = dataclasses.replace(base, **pool._explicit)
        self.state = _State.RUNNING
        self.fn_limiters: weakref.WeakKeyDictionary[_Options, Limiter] = (
            weakref.WeakKeyDictionary()
        )
        self.counters = Counters()
        self.pending = 0  # calls waiting for their function's limit
        self.running: set[Job] = set()
        self._done: deque[Job | _Step] = deque()
        self._wake_scheduled = False
        self._call_soon_threadsafe = loop.call_soon_threadsafe
        self._drained: Waiter | None = None
        self._closed: list[Waiter] = []
        self.workers = pool._start_workers(self)
        self._workers_submit = self.workers.submit
        self._new_waiter = loop.new_waiter
        self._copies_context = pool._copies_context
        self.checkpoint_if_cancelled = loop.checkpoint_if_cancelled
        self.effective_deadline = loop.effective_deadline
        # The guard holds the runtime weakly: a closed pool that nobody references is
        # collected (and frees its name) while the loop runs on.
        loop.spawn_system_task(functools.partial(_guard, weakref.ref(self)))

    # -- completions: worker threads -> loop ----------------------------------------------

    def post(self, item: Job | _Step) -> None:
        """Hand a finished job (or generator step) back to the loop; called by workers.

        Wake-ups coalesce: however many jobs finish before the loop runs, it is woken once.
        """
        self._done.append(item)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            try:
                self._call_soon_threadsafe(self._drain)
            except Exception:  # the loop is gone; nobody waits for the result
                pass

    def _drain(self) -> None:
        self._wake_scheduled = False
        done = self._done
        finish = self._finish
        while done:
            item = done.popleft()
            if isinstance(item, Job):
                finish(item)
            else:
                item.deliver()

    def _finish(self, job: Job) -> None:
        self.running.discard(job)
        if job.fn_limiter is not None:
            job.fn_limiter.release()

        started = job.started
        if started:  # the call's wait and run times (inline: once per call, on the loop)
            timing = self.counters.wait_time
            seconds = started - job.queued
            timing.count += 1
            timing.total += seconds
            timing.recent.append(seconds)
            if seconds > timing.max:
                timing.max = seconds

            timing = self.counters.run_time
            seconds = job.ended - started
            timing.count += 1
            timing.total += seconds
            timing.recent.append(seconds)
            if seconds > timing.max:
                timing.max = seconds

        if not job.abandoned and not job.waiter.done():
            job.delivered = True
            error = job.error
            if error is None:
                job.waiter.set_result(job.value)
            else:
                if isinstance(error, StopIteration):
                    # What Python does at any coroutine boundary (and futures refuse it).
                    runtime_error = RuntimeError(f"{job.name}() raised StopIteration")
                    runtime_error.__cause__ = error
                    error = job.error = runtime_error

                job.waiter.set_exception(error)

        # Nothing of the call outlives it: the worker thread may still hold the job a moment.
        job.value = job.args = job.kwargs = job.context = None  # type: ignore[assignment]
        job.fn = job.waiter = None  # type: ignore[assignment]
        if not job.delivered:
            job.error = None
        if self._drained is not None and not self.running and not self._drained.done():
            self._drained.set_result(None)

    # -- calls ------------------------------------------------------------------------------

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(self.name)

    def _closing(self) -> bool:
        return self.state is not _State.RUNNING

    def _fn_limiter(self, options: _Options) -> Limiter:
        limiter = self.fn_limiters.get(options)
        if limiter is None:
            assert options.limit is not None
            limiter = self.fn_limiters[options] = Limiter(options.limit, self.loop.new_waiter)

        return limiter

    async def _admit(self, options: _Options, tally: _Tally | None) -> Limiter:
        """Take a slot of the function's ``limit``, waiting in line for it.

        A call that waits is submitted from then on (and ends with one outcome), so that
        ``submitted`` is always the outcomes plus the calls in flight.
        """
        if self.state is not _State.RUNNING:
            raise PoolClosed(self.name)

        fn_limiter = self._fn_limiter(options)
        if fn_limiter.free():
            fn_limiter.take()
            return fn_limiter

        max_pending = self.settings.max_pending
        if max_pending is not None and self.pending + self.workers.pending >= max_pending:
            self.counters.rejected += 1
            raise Overloaded(self.name, max_pending)

        self.pending += 1
        self.counters.submitted += 1
        try:
            await fn_limiter.acquire(self._closed_error)
        except BaseException:
            self._count_cancelled(tally)
            raise
        finally:
            self.pending -= 1

        if self._closing():  # closed as the slot was handed over
            fn_limiter.release()
            self._count_cancelled(tally)
            raise PoolClosed(self.name)

        self.counters.submitted -= 1  # _submit counts it again as it hands the call on
        return fn_limiter

    def _refused(self, tally: _Tally | None) -> None:
        """Count a call whose caller was cancelled before it reached a worker: submitted and
        cancelled, as its caller sees it."""
        self.counters.submitted += 1
        self._count_cancelled(tally)

    def _count_cancelled(self, tally: _Tally | None) -> None:
        """Count a submitted call whose caller stopped waiting (cancelled, timed out, or
        turned away by a closing pool)."""
        if tally is None:
            self.counters.cancelled += 1
        else:
            tally.counters = self.counters

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fn_limiter: Limiter | None,
        queued: float,
        label: str | None = None,
    ) -> Job:
        if self.state is not _State.RUNNING:
            if fn_limiter is not None:
                fn_limiter.release()

            raise PoolClosed(self.name)

        context = _worker_context() if self._copies_context else None
        job = Job(fn, args, kwargs, context, self._new_waiter(), fn_limiter, queued)
        if label is not None:
            job.label = label

        max_pending = self.settings.max_pending
        if max_pending is not None:  # calls waiting for a function's limit count too
            max_pending -= self.pending

        if not self._workers_submit(job, max_pending):
            if fn_limiter is not None:
                fn_limiter.release()

            self.counters.rejected += 1
            raise Overloaded(self.name, cast(int, self.settings.max_pending))

        self.running.add(job)
        self.counters.submitted += 1
        return job

    async def _cancelled(self, job: Job, options: _Options, tally: _Tally | None) -> None:
        """The awaiter of a submitted call was cancelled: apply the function's policy."""
        job.cancelled = True
        self._count_cancelled(tally)
        if job not in self.running:
            return  # the worker is done with it already

        if self.workers.withdraw(job):  # still waiting for a thread: it never runs
            self._forget(job)
            return

        if options.cancel == "wait":
            self.workers.interrupt(job, False)  # a process learns it through cancelled()
            await self._wait_for_worker(job)
        else:
            job.abandoned = True
            if options.cancel == "kill":
                self._kill(job, options.grace)

    def _kill(self, job: Job, grace: float) -> None:
        """SIGTERM the process running ``job`` now, SIGKILL it after ``grace``."""
        self.workers.interrupt(job, True)
        self.loop.call_later(grace, functools.partial(self.workers.escalate, job))

    def _forget(self, job: Job) -> None:
        """Drop a job that never reached a worker."""
        self.running.discard(job)
        if job.fn_limiter is not None:
            job.fn_limiter.release()

        job.args = job.kwargs = job.context = None  # type: ignore[assignment]
        if self._drained is not None and not self.running and not self._drained.done():
            self._drained.set_result(None)

    async def _wait_for_worker(self, job: Job) -> None:
        with anyio.CancelScope(shield=True):
            while job in self.running:
                job.waiter = self.loop.new_waiter()
                try:
                    await job.waiter
                except BaseException:
                    continue

    # -- generators -------------------------------------------------------------------------

    async def stream(
        self,
        options: _Options,
        gen_fn: Callable[..., Generator[Y, Any, Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> AsyncGenerator[Y, Any]:
        """Drive a sync generator that lives on one worker thread, item by item."""
        queued = perf_counter()
        try:  # never start a generator for a caller that is gone already
            deadline = self.effective_deadline
            if deadline is None or deadline() == CANCELLED:
                await self.checkpoint_if_cancelled()
        except BaseException:
            self._refused(None)
            raise

        fn_limiter = None if options.limit is None else await self._admit(options, None)
        requests: SimpleQueue[tuple[str, Any, _Step | None]] = SimpleQueue()
        job = self._submit(
            _drive_generator,
            (gen_fn, args, kwargs, requests, self.post),
            {},
            fn_limiter,
            queued,
            label=_qualname(gen_fn),
        )
        op, value = "send", None
        ended = False
        try:
            while True:
                step = _Step(self.loop.new_waiter())
                requests.put((op, value, step))
                if options.timeout is None:
                    await step.waiter
                else:
                    with anyio.CancelScope(deadline=anyio.current_time() + options.timeout) as sc:
                        await step.waiter

                    if sc.cancelled_caught:
                        raise _timeout_error(self.name, job.name, options.timeout)

                if step.kind == "stop":
                    ended = True
                    self.counters.completed += 1
                    return

                if step.kind == "error":
                    ended = True
                    self.counters.failed += 1
                    raise step.value

                try:
                    value = yield step.value
                    op = "send"
                except GeneratorExit:
                    raise
                except BaseException as exc:  # athrow(): raise it inside the sync generator
                    op, value = "throw", exc
        except GeneratorExit:
            ended = True
            self.counters.completed += 1
            requests.put(("close", None, None))
            await self._wait_for_worker(job)
            raise
        except BaseException as exc:
            if not ended:
                ended = True
                requests.put(("close", None, None))
                tally = _Tally()
                await self._cancelled(job, options, tally)
                tally.count(timed_out=isinstance(exc, TimeoutError))

            raise
        finally:
            if not ended:  # the consumer stopped without aclose() (e.g. garbage collected)
                requests.put(("close", None, None))
                job.cancelled = True

    # -- lifecycle --------------------------------------------------------------------------

    def apply(self, explicit: Mapping[str, object]) -> None:
        """Apply changed explicit settings; runs on this loop's thread."""
        self.settings = dataclasses.replace(self.base, **explicit)  # type: ignore[arg-type]
        self.workers.reconfigure(self.settings)

    async def aclose(self, loop_ending: bool = False) -> None:
        """Close: turn pending calls away, give running ones ``shutdown_timeout``, stop
        the workers."""
        if self.state is _State.CLOSED:
            return

        if self.state is _State.CLOSING:
            waiter = self.loop.new_waiter()
            self._closed.append(waiter)
            with anyio.CancelScope(shield=True):
                await waiter

            return

        self.state = _State.CLOSING
        for limiter in list(self.fn_limiters.values()):
            limiter.close_waiters()

        for job in self.workers.withdraw_all():
            self._forget(job)
            if not job.waiter.done():
                job.waiter.set_exception(PoolClosed(self.name))

        if self.running:
            self._drained = self.loop.new_waiter()
            with anyio.move_on_after(self.settings.shutdown_timeout, shield=True):
                await self._drained

        if self.running:
            for job in self.running:
                job.cancelled = True

            names = sorted({job.name for job in self.running})
            if self.pool._kills_on_close:
                # Processes can be stopped: kill what still runs, and wait for the kill.
                for job in list(self.running):
                    self._kill(job, KILL_GRACE)

                self._drained = self.loop.new_waiter()
                with anyio.move_on_after(2 * KILL_GRACE + 1.0, shield=True):
                    await self._drained

            if self.pool._kills_on_close:
                logger.warning(
                    "pool %r: killed %d worker process(es) still running %s %.3g s after %s",
                    self.name,
                    len(names),
                    ", ".join(names),
                    self.settings.shutdown_timeout,
                    "the end of the event loop's run" if loop_ending else "aclose()",
                )
            else:
                logger.warning(
                    "pool %r: %d call(s) still running %.3g s after %s: %s. A thread cannot "
                    "be stopped from outside; it no longer holds up interpreter exit, and "
                    "offload.cancelled() is now True inside it",
                    self.name,
                    len(self.running),
                    self.settings.shutdown_timeout,
                    "the end of the event loop's run" if loop_ending else "aclose()",
                    ", ".join(names),
                )

        self.workers.shutdown()
        self.state = _State.CLOSED
        for waiter in self._closed:
            if not waiter.done():
                waiter.set_result(None)

    def gauges(self) -> tuple[int, int, int, int]:
        """Return (workers, busy, pending, abandoned)."""
        workers, busy, pending, abandoned = self.workers.gauges()
        return workers, busy, self.pending + pending, abandoned


async def _guard(ref: weakref.ReferenceType[_Runtime[Any]]) -> None:
    """Close a runtime when its loop's run ends (a system task of that loop)."""
    try:
        await anyio.sleep_forever()
    finally:
        runtime = ref()
        if runtime is not None:
            with anyio.CancelScope(shield=True):
                await runtime.aclose(loop_ending=True)

            runtime.pool._retire(runtime)


class _Tally:
    """Counts the cancellation of a call that has a ``timeout`` once its caller's view is
    known: ``timed_out`` if the caller gets ``TimeoutError``, else ``cancelled`` (an outer
    scope may cancel the call after its deadline passed, and win)."""

    __slots__ = ("counters",)

    def __init__(self) -> None:
        self.counters: Counters | None = None  # set while a cancellation awaits its count

    def count(self, timed_out: bool) -> None:
        counters = self.counters
        if counters is not None:
            self.counters = None
            if timed_out:
                counters.timed_out += 1
            else:
                counters.cancelled += 1


def _timeout_error(pool: str, function: str, timeout: float) -> TimeoutError:
    return TimeoutError(
        f"{function}() did not finish within its timeout of {timeout:g} s (waiting and running, "
        f"in pool {pool!r})"
    )


class _Pool(Generic[SettingsT]):
    """What every pool shares: name, settings, per-loop runtimes, calls, stats, close."""

    _settings_kind: type[SettingsT]
    _policies: tuple[str, ...]
    _copies_context = True  # workers see a copy of the caller's contextvars
    _kills_on_close = False  # running work can be killed past shutdown_timeout

    def __init__(self, name: str, explicit: Mapping[str, object]) -> None:
        if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"a pool's name must be a non-empty string, not {name!r}")

        fields = tuple(f.name for f in dataclasses.fields(self._settings_kind))
        self._fields = fields
        self._explicit: dict[str, Any] = validate(name, fields, explicit)
        self._name = name
        self._lock = threading.RLock()
        self._runtimes: weakref.WeakKeyDictionary[object, _Runtime[SettingsT]] = (
            weakref.WeakKeyDictionary()
        )
        self._closed_loops: weakref.WeakSet[object] = weakref.WeakSet()
        self._last: _Runtime[SettingsT] | None = None
        self._retired = Counters()
        self._ad_hoc = _Options(None, None, self._policies[0])
        with _registry_lock:
            if name in _registry:
                raise ValueError(
                    f"a pool named {name!r} already exists; give each pool its own name"
                )

            _registry[name] = self

    @property
    def name(self) -> str:
        """The pool's name, as used in ``OFFLOAD_<NAME>_<SETTING>`` and ``offload.configure``."""
        return self._name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r}>"

    # -- what a mechanism provides ------------------------------------------------------------

    def _defaults(self) -> dict[str, object]:
        raise NotImplementedError

    def _start_workers(self, runtime: _Runtime[SettingsT]) -> Workers:
        raise NotImplementedError

    # -- runtimes ---------------------------------------------------------------------------

    def _runtime(self) -> _Runtime[SettingsT]:
        key = current_key()
        runtime = self._last
        if runtime is not None and runtime.key is key:
            return runtime

        with self._lock:
            runtime = self._runtimes.get(key)
            if runtime is None:
                if key in self._closed_loops:
                    raise PoolClosed(self._name)

                base = resolve(self._name, self._settings_kind, self._defaults(), {})
                runtime = _Runtime(self, current_loop(key), cast(SettingsT, base))
                self._runtimes[key] = runtime

            self._last = runtime
            return runtime

    def _retire(self, runtime: _Runtime[SettingsT]) -> None:
        """The runtime's loop is ending: keep its counts, forget the loop."""
        with self._lock:
            self._retired.merge(runtime.counters)
            runtime.counters = Counters()
            self._closed_loops.add(runtime.key)
            self._runtimes.pop(runtime.key, None)
            if self._last is runtime:
                self._last = None

    async def _call(
        self,
        options: _Options,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        timeout = options.timeout
        if timeout is None:
            return await self._run(options, fn, args, kwargs)

        tally = _Tally()
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + timeout):
                return await self._run(options, fn, args, kwargs, tally)
        except BaseException:
            tally.count(timed_out=False)  # the caller sees a cancellation (or PoolClosed)
            raise

        tally.count(timed_out=True)
        raise _timeout_error(self._name, _qualname(fn), timeout)

    def call(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]:
        """Run ``fn(*args, **kwargs)`` in this pool and return its result.

        ``await pool.call(fn, x)`` does what ``fn(x)`` does, without stopping the event loop.
        Every argument reaches ``fn``: ``call`` reserves no keyword.

        Raises:
            Overloaded: ``max_pending`` calls are already waiting.
            PoolClosed: the pool was closed in this event loop.

        **Cancellation**: a pending call never runs; a running one follows the pool's
        default policy (a thread is abandoned: it runs on, holding its slot, and its result
        is dropped).
        """
        # A plain function returning the coroutine saves a frame per call; the pool starts
        # in the loop that awaits it.
        return self._run(self._ad_hoc, fn, args, kwargs)

    async def _run(
        self,
        options: _Options,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        tally: _Tally | None = None,
    ) -> R:
        """Run one call in this loop's workers and return (or raise) its outcome.

        This is the hot path of every call: one coroutine frame from the runtime lookup to
        the result.
        """
        queued = perf_counter()
        key = current_key()
        runtime = self._last
        if runtime is None or runtime.key is not key:
            runtime = self._runtime()

        try:  # a caller cancelled already uses no worker (as anyio's and trio's to_thread)
            deadline = runtime.effective_deadline
            if deadline is None or deadline() == CANCELLED:
                await runtime.checkpoint_if_cancelled()
        except BaseException:
            runtime._refused(tally)
            raise

        if options.limit is None:  # no coroutine for the limiter
            fn_limiter = None
        else:
            fn_limiter = await runtime._admit(options, tally)

        job = runtime._submit(fn, args, kwargs, fn_limiter, queued)
        if options.retries:
            job.retries = options.retries

        try:
            value: R = await job.waiter
        except BaseException as exc:
            if job.delivered and exc is job.error:
                job.error = None  # break the job -> traceback -> frame -> job cycle
                if isinstance(exc, WorkerCrashed):
                    runtime.counters.crashed += 1
                else:
                    runtime.counters.failed += 1

                raise

            await runtime._cancelled(job, options, tally)
            raise

        runtime.counters.completed += 1
        return value

    # -- settings -----------------------------------------------------------------------------

    def configure(self, **settings: Any) -> None:
        """Set some of this pool's settings; a running pool applies them to the next calls.

        Explicit settings win over ``OFFLOAD_<POOL>_<SETTING>`` environment variables and
        the built-in defaults.

        Raises:
            ValueError: a setting is unknown or its value is not valid.
        """
        checked = validate(self._name, self._fields, settings)
        with self._lock:
            self._explicit.update(checked)
            explicit = dict(self._explicit)
            runtimes = list(self._runtimes.values())

        try:
            here: object = current_key()
        except RuntimeError:
            here = None

        for runtime in runtimes:
            if runtime.key is here:
                runtime.apply(explicit)
            else:
                try:
                    runtime.loop.call_soon_threadsafe(functools.partial(runtime.apply, explicit))
                except RuntimeError:  # that loop is closed
                    pass

    def settings(self) -> SettingsT:
        """Return the settings in force: this loop's, or what a new loop would start with.

        Raises:
            ValueError: an ``OFFLOAD_<POOL>_<SETTING>`` variable holds a bad value.
        """
        try:
            runtime = self._runtimes.get(current_key())
        except RuntimeError:
            runtime = None

        if runtime is not None:
            return runtime.settings

        base = resolve(self._name, self._settings_kind, self._defaults(), self._explicit)
        return cast(SettingsT, base)

    def stats(self) -> PoolStats:
        """Return a frozen snapshot of the pool's workers, queue, outcomes and timings.

        Gauges are summed over the event loops the pool runs in now; counters cover every
        loop since the pool was made.
        """
        with self._lock:
            runtimes = list(self._runtimes.values())
            counters = [self._retired, *(r.counters for r in runtimes)]
            explicit = dict(self._explicit)

        workers = busy = pending = abandoned = 0
        for runtime in runtimes:
            w, b, p, a = runtime.gauges()
            workers, busy, pending, abandoned = workers + w, busy + b, pending + p, abandoned + a

        if runtimes:
            max_workers = sum(r.settings.max_workers for r in runtimes)
        else:
            try:
                max_workers = self.settings().max_workers
            except ValueError:  # a bad environment variable; the first call will say so
                max_workers = cast(
                    int, explicit.get("max_workers") or self._defaults()["max_workers"]
                )

        return PoolStats(
            name=self._name,
            max_workers=max_workers,
            workers=workers,
            busy=busy,
            pending=pending,
            abandoned=abandoned,
            **Counters.totals(counters),  # type: ignore[arg-type]
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the pool in the running event loop.

        Pending calls end with :exc:`~offload.PoolClosed`; running ones are given
        ``shutdown_timeout``, then a warning names what still runs; the workers exit. Later
        calls in this loop raise :exc:`~offload.PoolClosed`; the next loop's run starts the
        pool afresh. The end of the loop's run does this by itself.
        """
        runtime = self._runtimes.get(current_key())
        if runtime is not None:
            await runtime.aclose()
        else:
            self._closed_loops.add(current_key())

    async def __aenter__(self) -> Self:
        self._runtime()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


_qualname = qualname


class CallFunction(Protocol):
    """The type of ``offload.call``: ``await call(fn, *args, **kwargs)``."""

    def __call__(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]: ...


class ThreadDecorator(Protocol):
    """What ``@pool(limit=..., timeout=..., cancel=...)`` returns: a decorator."""

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: staticmethod[P, R], /
    ) -> staticmethod[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(
        self, fn: classmethod[T, P, R], /
    ) -> classmethod[T, P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Generator[Y, Any, Any]], /
    ) -> Callable[P, AsyncGenerator[Y, None]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


class ThreadPool(_Pool[ThreadSettings]):
    """A bounded pool of worker threads, for blocking I/O and code that releases the GIL.

    Use it three ways::

        db = offload.ThreadPool("db", max_workers=4)

        @db
        def query(sql: str) -> list[tuple]: ...

        @db(limit=2, timeout=5.0)
        def report(day: str) -> bytes: ...

        rows = await db.call(cursor.execute, "select 1")

    ``offload.thread`` is the default pool, named ``thread``.

    Args:
        name: the pool's name: unique, and the ``<POOL>`` of ``OFFLOAD_<POOL>_<SETTING>``
            environment variables.
        **settings: explicit settings (:class:`ThreadSettings`), which win over the
            environment and the defaults.

    Raises:
        ValueError: the name is taken, or a setting is not valid.
    """

    _settings_kind = ThreadSettings
    _policies = ("abandon", "wait")

    def __init__(self, name: str, /, **settings: Unpack[ThreadOptions]) -> None:
        super().__init__(name, settings)

    def configure(self, **settings: Unpack[ThreadOptions]) -> None:  # type: ignore[override]
        """Set some of this pool's settings; a running pool applies them to the next calls.

        Explicit settings win over ``OFFLOAD_<POOL>_<SETTING>`` environment variables and
        the built-in defaults.

        Raises:
            ValueError: a setting is unknown or its value is not valid.
        """
        super().configure(**settings)

    def _defaults(self) -> dict[str, object]:
        return {"max_workers": min(32, usable_cpus() + 4)}

    def _start_workers(self, runtime: _Runtime[ThreadSettings]) -> ThreadWorkers:
        settings = runtime.settings
        return ThreadWorkers(self._name, runtime.post, settings.max_workers, settings.idle_timeout)

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: staticmethod[P, R], /
    ) -> staticmethod[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(
        self, fn: classmethod[T, P, R], /
    ) -> classmethod[T, P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Generator[Y, Any, Any]], /
    ) -> Callable[P, AsyncGenerator[Y, None]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(
        self,
        /,
        *,
        limit: int | None = None,
        timeout: float | None = None,
        cancel: CancelPolicy = "abandon",
    ) -> ThreadDecorator: ...
    def __call__(
        self,
        fn: Any = None,
        /,
        *,
        limit: int | None = None,
        timeout: float | None = None,
        cancel: CancelPolicy = "abandon",
    ) -> Any:
        """Turn a blocking function into an async one that runs in this pool.

        ``@pool`` and ``@pool(limit=..., timeout=..., cancel=...)`` both work. The result
        keeps ``fn``'s signature, ``__name__``, ``__doc__`` and ``__wrapped__``; a generator
        function becomes an async generator function whose sync generator lives on one
        worker thread.

        Args:
            fn: the blocking function (or method, staticmethod, classmethod, generator
                function).
            limit: at most this many calls of this function run at once, whatever the
                pool's size (per event loop).
            timeout: seconds for waiting and running together; past them the call raises
                the built-in ``TimeoutError`` (for a generator: per item).
            cancel: ``"abandon"`` (default) gives control back at once when the awaiter is
                cancelled, and the thread runs on holding its slot; ``"wait"`` delivers the
                cancellation when the thread returns.

        **Cancellation**: a call still pending when its awaiter is cancelled never runs;
        inside the worker, :func:`offload.cancelled` turns True once the caller is gone.
        """
        options = _check_options(self._name, limit, timeout, cancel, self._policies)
        if fn is None:
            return functools.partial(_decorate, self, options)

        return _decorate(self, options, fn)


class ProcessDecorator(Protocol):
    """What ``@pool(limit=..., timeout=..., cancel=..., retries=...)`` returns for a process
    pool: a decorator."""

    @overload
    def __call__(self, fn: staticmethod[P, R], /) -> staticmethod[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(
        self, fn: classmethod[T, P, R], /
    ) -> classmethod[T, P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


class ProcessPool(_Pool[ProcessSettings]):
    """A bounded pool of worker processes, for CPU-bound work past the GIL.

    Use it three ways::

        cpu = offload.ProcessPool("cpu", max_workers=4)

        @cpu
        def render(page: int) -> bytes: ...

        @cpu(timeout=30.0, retries=1)
        def transcode(path: str) -> str: ...

        digest = await cpu.call(hash_file, "/data/big.iso")

    ``offload.process`` is the default pool, named ``process``. What a call sends must
    pickle: the function goes by reference (a module-level function, also in a ``__main__``
    script), its arguments and result by value. Processes do not see the caller's
    ``contextvars``.

    Args:
        name: the pool's name: unique, and the ``<POOL>`` of ``OFFLOAD_<POOL>_<SETTING>``
            environment variables.
        **settings: explicit settings (:class:`ProcessSettings`), which win over the
            environment and the defaults.

    Raises:
        ValueError: the name is taken, or a setting is not valid.
    """

    _settings_kind = ProcessSettings
    _policies = ("kill", "wait")
    _copies_context = False
    _kills_on_close = True

    def __init__(self, name: str, /, **settings: Unpack[ProcessOptions]) -> None:
        super().__init__(name, settings)

    def configure(self, **settings: Unpack[ProcessOptions]) -> None:  # type: ignore[override]
        """Set some of this pool's settings; a running pool applies them to the next calls.

        ``start_method``, ``initializer`` and ``initargs`` apply to worker processes that
        start afterwards.

        Raises:
            ValueError: a setting is unknown or its value is not valid.
        """
        super().configure(**settings)

    def _defaults(self) -> dict[str, object]:
        return {"max_workers": usable_cpus(), "start_method": default_start_method()}

    def _start_workers(self, runtime: _Runtime[ProcessSettings]) -> ProcessWorkers:
        settings = runtime.settings
        return ProcessWorkers(
            self._name,
            runtime.post,
            settings.max_workers,
            settings.idle_timeout,
            settings.start_method,
            settings.max_tasks_per_worker,
            settings.initializer,
            settings.initargs,
        )

    @overload
    def __call__(self, fn: staticmethod[P, R], /) -> staticmethod[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(
        self, fn: classmethod[T, P, R], /
    ) -> classmethod[T, P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(
        self,
        /,
        *,
        limit: int | None = None,
        timeout: float | None = None,
        cancel: ProcessCancelPolicy = "kill",
        retries: int = 0,
        grace: float = KILL_GRACE,
    ) -> ProcessDecorator: ...
    def __call__(
        self,
        fn: Any = None,
        /,
        *,
        limit: int | None = None,
        timeout: float | None = None,
        cancel: ProcessCancelPolicy = "kill",
        retries: int = 0,
        grace: float = KILL_GRACE,
    ) -> Any:
        """Turn a CPU-bound function into an async one that runs in a worker process.

        ``@pool`` and ``@pool(limit=..., timeout=..., cancel=..., retries=...)`` both work.
        The function must be defined at module level (a lambda or a local function cannot
        be sent to a process: :exc:`~offload.SerializationError` says so at once).

        Args:
            fn: the function (or method, staticmethod, classmethod).
            limit: at most this many calls of this function run at once (per event loop).
            timeout: seconds for waiting and running together; past them the call raises
                the built-in ``TimeoutError`` and its worker is killed.
            cancel: ``"kill"`` (default) gives control back at once when the awaiter is
                cancelled and terminates the worker process (SIGTERM, then SIGKILL after
                ``grace`` seconds); a fresh one replaces it on demand. ``"wait"`` lets the
                call finish (``offload.cancelled()`` turns True inside it) and delivers the
                cancellation when it returns.
            retries: re-run the call this many times on a fresh worker when its worker
                process crashes (for idempotent functions).
            grace: seconds between SIGTERM and SIGKILL when a call is killed.

        **Cancellation**: a call still pending when its awaiter is cancelled never runs.
        """
        options = _check_options(
            self._name, limit, timeout, cancel, self._policies, retries, grace
        )
        if fn is None:
            return functools.partial(_decorate, self, options)

        return _decorate(self, options, fn)


def _decorate(pool: _Pool[Any], options: _Options, fn: Any) -> Any:
    if isinstance(fn, staticmethod):
        return staticmethod(_decorate(pool, options, fn.__func__))

    if isinstance(fn, classmethod):
        return classmethod(_decorate(pool, options, cast(Any, fn).__func__))

    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{_qualname(fn)} is already async; offload runs blocking (sync) functions. "
            f"Await it directly instead of decorating it with {pool!r}"
        )

    if not callable(fn):
        raise TypeError(f"{pool!r} decorates a function, not {fn!r}")

    target: Callable[..., Any] = fn
    if isinstance(pool, ProcessPool):
        check_picklable_function(fn, pool.name)
        # The worker imports the function by name (the name is this wrapper's).
        target = cast(Callable[..., Any], FunctionRef(fn.__module__, fn.__qualname__))

    if inspect.isgeneratorfunction(fn):
        if not isinstance(pool, ThreadPool):
            raise TypeError(
                f"{_qualname(fn)} is a generator function: generators run in thread pools "
                f"(use @offload.thread), since a generator cannot be sent to another process"
            )

        @functools.wraps(fn)
        async def stream(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            agen = pool._runtime().stream(options, fn, args, kwargs)
            try:
                item = await agen.__anext__()
                while True:
                    try:
                        value = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:  # athrow(): on to the sync generator
                        item = await agen.athrow(exc)
                    else:
                        item = await agen.asend(value)
            except StopAsyncIteration:
                return
            finally:
                await agen.aclose()

        return stream

    if options.timeout is None:
        run = pool._run

        @functools.wraps(fn)
        async def offloaded(*args: Any, **kwargs: Any) -> Any:
            return await run(options, target, args, kwargs)

    else:
        call = pool._call

        @functools.wraps(fn)
        async def offloaded(*args: Any, **kwargs: Any) -> Any:
            return await call(options, target, args, kwargs)

    # A process worker finds the wrapper by its module and name, and runs this instead.
    offloaded.__offload_target__ = fn  # type: ignore[attr-defined]
    return offloaded


def configure(**pools: Mapping[str, Any]) -> None:
    """Set the settings of several pools at once, by pool name.

    ``offload.configure(thread={"max_workers": 64}, db={"max_pending": 100})`` is
    ``offload.thread.configure(max_workers=64)`` and ``db.configure(max_pending=100)``.
    Every setting is checked before any is applied.

    Raises:
        ValueError: no pool has that name, or a setting is not valid.
    """
    targets: list[tuple[_Pool[Any], Mapping[str, Any]]] = []
    with _registry_lock:
        known = sorted(_registry)
        for name, settings in pools.items():
            pool = _registry.get(name)
            if pool is None:
                raise ValueError(f"no pool is named {name!r}; the pools are: {', '.join(known)}")

            validate(name, pool._fields, settings)
            targets.append((pool, settings))

    for target, settings in targets:
        _Pool[Any].configure(target, **settings)
