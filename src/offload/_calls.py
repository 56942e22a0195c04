"""Policy: the path of one call, from the caller's await to its one outcome.

Every call takes it: ``pool.call``, a decorated function, each ``await`` of a decorated
generator (through the same :class:`~offload._runtime.Runtime` steps), and each item of
``pool.map`` (``_map.py``):

1. find the pool's runtime in this loop (started on first use);
2. admit: refuse a caller cancelled already, wait for the function's ``limit``, apply the
   pending bound (:meth:`Runtime.enter`; straight to :meth:`Runtime.submit` when neither
   can apply);
3. submit the job to the workers, which run it and hand it back to the loop;
4. await its waiter, and count exactly one outcome: completed, failed, crashed, or (the
   caller gone) cancelled or timed out, as the caller sees it.

:func:`run` is the hot path: one coroutine frame from the runtime lookup to the result.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._backends import CANCELLED, current_key
from ._job import qualname
from ._options import Options
from ._runtime import Tally

if TYPE_CHECKING:
    from ._pools import _Pool

__all__ = ("run", "run_with_timeout", "timeout_error")

R = TypeVar("R")


async def run(
    pool: _Pool[Any],
    options: Options,
    fn: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    tally: Tally | None = None,
) -> R:
    """Run one call in the pool's workers in this loop and return (or raise) its outcome."""
    queued = perf_counter()
    key = current_key()
    runtime = pool._last
    if runtime is None or runtime.key is not key:
        runtime = pool._runtime()

    deadline = runtime.effective_deadline
    if options.limit is not None or (deadline is not None and deadline() == CANCELLED):
        job = await runtime.enter(options, fn, args, kwargs, queued, tally)
    else:  # Runtime.enter inlined: no limit to wait for, and no coroutine for it
        if deadline is None:  # trio: its checkpoint is the cheaper look
            try:
                await runtime.checkpoint_if_cancelled()
            except BaseException:
                runtime.refused(tally)
                raise

        job = runtime.submit(options, fn, args, kwargs, None, queued)

    try:
        value: R = await job.waiter
    except BaseException as exc:
        if runtime.failed(job, exc):
            raise

        await runtime.caller_gone(job, options, tally)
        raise

    runtime.counters.completed += 1
    return value


async def run_with_timeout(
    pool: _Pool[Any],
    options: Options,
    fn: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    """:func:`run` within the function's ``timeout`` (waiting and running together)."""
    timeout = options.timeout
    if timeout is None:
        return await run(pool, options, fn, args, kwargs)

    tally = Tally()
    try:
        with anyio.CancelScope(deadline=anyio.current_time() + timeout):
            return await run(pool, options, fn, args, kwargs, tally)
    except BaseException:
        tally.count(timed_out=False)  # the caller sees a cancellation (or PoolClosed)
        raise

    tally.count(timed_out=True)
    raise timeout_error(pool.name, qualname(fn), timeout)


def timeout_error(pool: str, function: str, timeout: float) -> TimeoutError:
    """Return the error of a call that did not finish within its ``timeout``."""
    return TimeoutError(
        f"{function}() did not finish within its timeout of {timeout:g} s (waiting and running, "
        f"in pool {pool!r})"
    )
