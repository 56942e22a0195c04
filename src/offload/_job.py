"""One call on its way through a pool, and ``offload.cancelled()`` for the code it runs."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from contextvars import Context
from time import perf_counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backends import Waiter
    from ._limiter import Limiter
    from ._options import Options

__all__ = ("Job", "ProcessCallState", "cancelled", "qualname", "refuse_awaitable")

_local = threading.local()


class ProcessCallState:
    """Inside a worker process: the call running now, and the last one told to stop."""

    active = False
    current = 0
    told_to_stop = 0  # the number of the last call whose caller stopped waiting


def cancelled() -> bool:
    """Return whether the caller of the offloaded call running here is gone.

    Inside a worker, this turns True once the awaiter was cancelled (or timed out), so a long
    loop can stop early and clean up::

        @offload.thread
        def crunch(items):
            for item in items:
                if offload.cancelled():
                    return None
                work(item)

    Outside an offloaded call it returns False, so the same function can also be called
    directly.
    """
    if ProcessCallState.active:
        current = ProcessCallState.current
        return current != 0 and current == ProcessCallState.told_to_stop

    job: Job | None = getattr(_local, "job", None)
    return job is not None and job.caller_gone


class Job:
    """A call: what to run, how it ended, and the waiter of the task that awaits it.

    The worker writes ``value``/``error``/``ok``/``started``/``ended`` and then hands the job
    to its delivery callback; the loop thread owns every other field.
    """

    __slots__ = (
        "abandoned",
        "args",
        "caller_gone",
        "context",
        "delivered",
        "ended",
        "error",
        "fn",
        "fn_limiter",
        "kwargs",
        "label",
        "ok",
        "options",
        "queued",
        "started",
        "value",
        "waiter",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: Context | None,
        waiter: Waiter,
        fn_limiter: Limiter | None,
        queued: float,
        options: Options | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.context = context
        self.waiter = waiter
        self.fn_limiter = fn_limiter
        self.queued = queued
        self.options = options  # the function's options (None: the pool's defaults)
        self.label: str | None = None
        self.started = 0.0
        self.ended = 0.0
        self.ok = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.caller_gone = False  # the caller stopped waiting: offload.cancelled() is True
        self.abandoned = False  # the caller is gone; the result goes nowhere
        self.delivered = False  # the loop resolved the waiter with the outcome

    def run(self) -> None:
        """Run the call here (in a worker thread) unless its caller is already gone."""
        if self.caller_gone:
            return

        _local.job = self
        self.started = perf_counter()
        try:
            if self.context is None:
                value = self.fn(*self.args, **self.kwargs)
            else:
                value = self.context.run(self.fn, *self.args, **self.kwargs)

            if hasattr(value, "__await__"):  # never hand back an un-awaited coroutine
                raise refuse_awaitable(self.fn, value)

            self.value = value
            self.ok = True
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended = perf_counter()
            _local.job = None

    @property
    def name(self) -> str:
        """The called function's qualified name, for messages."""
        if self.label is not None:
            return self.label

        return qualname(self.fn)


def qualname(fn: object) -> str:
    """Return a function's qualified name, for messages."""
    fn = getattr(fn, "__func__", fn)
    name = getattr(fn, "offload_name", None) or getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else repr(fn)


def refuse_awaitable(fn: object, value: object) -> TypeError:
    """Return the error for a call whose function returned an awaitable, and close it.

    A coroutine is closed (it never ran), so no "never awaited" warning follows it.
    """
    close = getattr(value, "close", None)
    if inspect.iscoroutine(value) and callable(close):
        close()

    name = qualname(fn)
    if inspect.iscoroutinefunction(fn):
        what = f"{name} is a coroutine function (async def)"
    else:
        what = f"{name}() returned an awaitable ({type(value).__name__})"

    return TypeError(
        f"{what}: offload runs blocking (sync) functions in workers and cannot await. "
        f"Await it directly instead (await {name}(...)), without offload"
    )
