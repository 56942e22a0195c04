"""Policy: a pool's state in one event loop (its workers, limiters, counters and close).

The first call of a pool inside a running event loop starts a :class:`Runtime` for that
loop: the workers (which hold the pool's capacity and its first-in, first-out queue), the
limiters of functions with a ``limit``, counters, and a system task that closes it all when
the loop's run ends. The steps of one call (admit, submit, finish, a caller that is gone)
are its methods; ``_calls.py`` and ``_generators.py`` put them in order.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import logging
import sys
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar, copy_context
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio

from ._backends import CANCELLED, Loop, Waiter
from ._exceptions import Overloaded, PoolClosed, WorkerCrashed
from ._job import Job
from ._limiter import Limiter
from ._options import KILL_GRACE, Options
from ._settings import PoolSettings
from ._stats import Counters

if TYPE_CHECKING:
    from ._pools import _Pool

__all__ = ("Delivery", "Runtime", "Tally")

SettingsT = TypeVar("SettingsT", bound=PoolSettings)

logger = logging.getLogger("offload")


class _State(enum.Enum):
    """Where a pool's runtime in one event loop stands."""

    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class Delivery(Protocol):
    """Something a worker hands back to the loop other than a finished job (a generator's
    item), resolved on the loop thread."""

    def deliver(self) -> None: ...


class Tally:
    """Counts the end of a call that has a ``timeout`` once its caller's view is known:
    ``timed_out`` if the caller gets ``TimeoutError``, else ``cancelled`` (an outer scope
    may cancel the call after its deadline passed, and win)."""

    __slots__ = ("counters",)

    def __init__(self) -> None:
        self.counters: Counters | None = None  # set while a caller's end awaits its count

    def count(self, timed_out: bool) -> None:
        counters = self.counters
        if counters is not None:
            self.counters = None
            if timed_out:
                counters.timed_out += 1
            else:
                counters.cancelled += 1


# The async library's marker (sniffio's context variable, when sniffio is loaded) is cleared
# in the context a worker sees: code in a worker thread is not in async context.
_sniffio_cvar: ContextVar[str | None] | None = None


def worker_context() -> Any:
    """Return a copy of the caller's context, as a worker thread should see it."""
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


class Runtime(Generic[SettingsT]):
    """A pool's state in one event loop. Only that loop's thread touches it, except
    :meth:`post`, which workers call."""

    def __init__(self, pool: _Pool[SettingsT], loop: Loop, base: SettingsT) -> None:
        kind = pool._kind
        self.pool = pool
        self.name = pool.name
        self.loop = loop
        self.key = loop.key
        self.base = base  # defaults and environment, without the explicit settings
        self.settings: SettingsT = dataclasses.replace(base, **pool._explicit)
        self.state = _State.RUNNING
        self.fn_limiters: weakref.WeakKeyDictionary[Options, Limiter] = weakref.WeakKeyDictionary()
        self.counters = Counters()
        self.pending = 0  # calls waiting for their function's limit
        self.running: set[Job] = set()
        self._done: deque[Job | Delivery] = deque()
        self._wake_scheduled = False
        self._call_soon_threadsafe = loop.call_soon_threadsafe
        self._drained: Waiter | None = None
        self._closed: list[Waiter] = []
        # Workers that the loop drives hand a job back on the loop's thread: straight to
        # _finish. Others (threads) post it.
        deliver = self._finish if kind.delivers_on_loop else self.post
        self.workers = kind.start_workers(pool.name, deliver, self.settings, loop)
        self.stopper = kind.stopper(self.workers)
        self._kills_on_close = kind.kills_on_close
        self._workers_submit = self.workers.submit
        self._queue = self.workers.queue
        self._new_waiter = loop.new_waiter
        self._copies_context = kind.copies_context
        self.checkpoint_if_cancelled = loop.checkpoint_if_cancelled
        self.effective_deadline = loop.effective_deadline
        # The guard holds the runtime weakly: a closed pool that nobody references is
        # collected (and frees its name) while the loop runs on.
        loop.spawn_system_task(functools.partial(_guard, weakref.ref(self)))

    # -- completions: workers -> loop --------------------------------------------------------

    def post(self, item: Job | Delivery) -> None:
        """Hand a finished job (or a generator's item) back to the loop; workers call it.

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

    # -- the steps of a call -----------------------------------------------------------------

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(self.name)

    def _closing(self) -> bool:
        return self.state is not _State.RUNNING

    def _fn_limiter(self, options: Options) -> Limiter:
        limiter = self.fn_limiters.get(options)
        if limiter is None:
            assert options.limit is not None
            limiter = self.fn_limiters[options] = Limiter(options.limit, self.loop.new_waiter)

        return limiter

    async def enter(
        self,
        options: Options,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        queued: float,
        tally: Tally | None,
        label: str | None = None,
    ) -> Job:
        """Admit a call and submit it: refuse a caller that is cancelled already (it uses no
        worker, as with anyio's and trio's ``to_thread``), wait for its function's
        ``limit``, then :meth:`submit`."""
        try:
            deadline = self.effective_deadline
            if deadline is None or deadline() == CANCELLED:
                await self.checkpoint_if_cancelled()
        except BaseException:
            self.refused(tally)
            raise

        fn_limiter = None if options.limit is None else await self._admit(options, tally)
        return self.submit(options, fn, args, kwargs, fn_limiter, queued, label)

    def refused(self, tally: Tally | None) -> None:
        """Count a call whose caller was cancelled before it reached a worker: submitted and
        cancelled, as its caller sees it."""
        self.counters.submitted += 1
        self.count_gone(tally)

    async def _admit(self, options: Options, tally: Tally | None) -> Limiter:
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
        if self._queue.refuses(max_pending, self.pending, False):
            self.counters.rejected += 1
            raise Overloaded(self.name, max_pending)  # type: ignore[arg-type]

        self.pending += 1
        self.counters.submitted += 1
        try:
            await fn_limiter.acquire(self._closed_error)
        except BaseException:
            self.count_gone(tally)
            raise
        finally:
            self.pending -= 1

        if self._closing():  # closed as the slot was handed over
            fn_limiter.release()
            self.count_gone(tally)
            raise PoolClosed(self.name)

        self.counters.submitted -= 1  # submit() counts it again as it hands the call on
        return fn_limiter

    def submit(
        self,
        options: Options,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fn_limiter: Limiter | None,
        queued: float,
        label: str | None = None,
    ) -> Job:
        """Hand a call to the workers, within the pending bound; count it submitted."""
        if self.state is not _State.RUNNING:
            if fn_limiter is not None:
                fn_limiter.release()

            raise PoolClosed(self.name)

        context = worker_context() if self._copies_context else None
        job = Job(fn, args, kwargs, context, self._new_waiter(), fn_limiter, queued, options)
        if label is not None:
            job.label = label

        # Calls waiting for a function's limit count against the bound too.
        if not self._workers_submit(job, self.settings.max_pending, self.pending):
            if fn_limiter is not None:
                fn_limiter.release()

            self.counters.rejected += 1
            raise Overloaded(self.name, self.settings.max_pending)  # type: ignore[arg-type]

        self.running.add(job)
        self.counters.submitted += 1
        return job

    def failed(self, job: Job, error: BaseException) -> bool:
        """Count the call's outcome if ``error`` is the one its function raised (or its
        worker's crash); return whether it was."""
        if not (job.delivered and error is job.error):
            return False

        job.error = None  # break the job -> traceback -> frame -> job cycle
        if isinstance(error, WorkerCrashed):
            self.counters.crashed += 1
        else:
            self.counters.failed += 1

        return True

    def count_gone(self, tally: Tally | None) -> None:
        """Count a submitted call whose caller stopped waiting (cancelled, timed out, or
        turned away by a closing pool); with a ``tally``, once the caller's view is known."""
        if tally is None:
            self.counters.cancelled += 1
        else:
            tally.counters = self.counters

    async def caller_gone(self, job: Job, options: Options, tally: Tally | None) -> None:
        """The caller of a submitted call stopped waiting: apply the function's policy."""
        job.caller_gone = True
        self.count_gone(tally)
        if job not in self.running:
            return  # the worker is done with it already

        if self.workers.withdraw(job):  # still waiting for a worker: it never runs
            self._forget(job)
            return

        if options.cancel == "wait":
            if self.stopper is not None:
                self.stopper.notify(job)  # a thread's job learns it from caller_gone

            await self.wait_for_worker(job)
        else:
            job.abandoned = True
            if options.cancel in ("kill", "cancel"):
                self._kill(job, options.grace)

    def _kill(self, job: Job, grace: float) -> None:
        """Terminate the worker running ``job`` now, kill it after ``grace``."""
        stopper = self.stopper
        assert stopper is not None, "only a pool whose workers can be stopped kills"
        stopper.terminate(job)
        self.loop.call_later(grace, functools.partial(stopper.kill, job))

    def _forget(self, job: Job) -> None:
        """Drop a job that never reached a worker."""
        self.running.discard(job)
        if job.fn_limiter is not None:
            job.fn_limiter.release()

        job.args = job.kwargs = job.context = None  # type: ignore[assignment]
        if self._drained is not None and not self.running and not self._drained.done():
            self._drained.set_result(None)

    async def wait_for_worker(self, job: Job) -> None:
        """Wait, shielded, until the worker is done with ``job``."""
        with anyio.CancelScope(shield=True):
            while job in self.running:
                job.waiter = self.loop.new_waiter()
                try:
                    await job.waiter
                except BaseException:
                    continue

    # -- lifecycle ---------------------------------------------------------------------------

    def apply(self, explicit: Mapping[str, object]) -> None:
        """Apply changed explicit settings; runs on this loop's thread."""
        settings = dataclasses.replace(self.base, **explicit)  # type: ignore[arg-type]
        self.workers.reconfigure(settings)  # may refuse them (ValueError): then nothing changes
        self.settings = settings

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
                job.caller_gone = True

            names = sorted({job.name for job in self.running})
            when = "the end of the event loop's run" if loop_ending else "aclose()"
            if self._kills_on_close:
                # Processes can be stopped: kill what still runs, and wait for the kill.
                for job in list(self.running):
                    self._kill(job, KILL_GRACE)

                self._drained = self.loop.new_waiter()
                with anyio.move_on_after(2 * KILL_GRACE + 1.0, shield=True):
                    await self._drained

                logger.warning(
                    "pool %r: killed %d worker process(es) still running %s %.3g s after %s",
                    self.name,
                    len(names),
                    ", ".join(names),
                    self.settings.shutdown_timeout,
                    when,
                )
            elif self.stopper is not None:  # an executor's: shutdown() cancels the futures
                logger.warning(
                    "pool %r: %d call(s) still running %.3g s after %s: %s. Their futures are "
                    "cancelled; a call the executor has started may run on there",
                    self.name,
                    len(self.running),
                    self.settings.shutdown_timeout,
                    when,
                    ", ".join(names),
                )
            else:
                logger.warning(
                    "pool %r: %d call(s) still running %.3g s after %s: %s. A thread cannot "
                    "be stopped from outside; it no longer holds up interpreter exit, and "
                    "offload.cancelled() is now True inside it",
                    self.name,
                    len(self.running),
                    self.settings.shutdown_timeout,
                    when,
                    ", ".join(names),
                )

        closing = self.workers.shutdown()
        if inspect.isawaitable(closing):  # an executor offload made shuts down in a thread
            with anyio.CancelScope(shield=True):
                await closing

        self.state = _State.CLOSED
        for waiter in self._closed:
            if not waiter.done():
                waiter.set_result(None)

    def gauges(self) -> tuple[int, int, int, int]:
        """Return (workers, busy, pending, abandoned)."""
        workers, busy, pending, abandoned = self.workers.gauges()
        return workers, busy, self.pending + pending, abandoned


async def _guard(ref: weakref.ReferenceType[Runtime[Any]]) -> None:
    """Close a runtime when its loop's run ends (a system task of that loop)."""
    try:
        await anyio.sleep_forever()
    finally:
        runtime = ref()
        if runtime is not None:
            with anyio.CancelScope(shield=True):
                await runtime.aclose(loop_ending=True)

            runtime.pool._retire(runtime)
