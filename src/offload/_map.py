"""Policy: ``pool.map(fn, iterable)``, one call per item with bounded work in flight.

Each item is one call on the one call path (:func:`~offload._calls.run`), so it is admitted,
counted and cancelled like any ``pool.call``. What ``map`` adds is a window and an order:

* **The window.** At most ``max_in_flight`` items are taken from the input and not yet
  handed to the consumer (running, waiting for a worker, or finished and waiting for their
  turn). The input is read in the consumer's ``__anext__``, only to refill that window, so
  it is read exactly as fast as results are taken: after ``k`` results, at most
  ``k + max_in_flight`` items were read.
* **The order.** Ordered, results come out in input order (a slow item holds the window);
  unordered, as calls finish.

Why an iterator class and not an async generator: the calls need tasks, and tasks need a
task group, but a task group (a cancel scope) must not stay open across a ``yield`` of an
async generator (trio and anyio forbid it: the consumer's code would run inside the
generator's scope). Here the task group lives in a task of its own (the *runner*, started
beside the consumer, in a copy of its context); the consumer's ``__anext__`` starts calls in
it and waits for their results. Stopping (an error, ``aclose()``, ``async with``'s exit, a
cancelled consumer) cancels the runner's scope and waits until every call has its outcome;
an iterator dropped after ``break`` cancels it as it is collected, without waiting.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextvars import copy_context
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.abc

from ._backends import current_key
from ._calls import run, run_with_timeout
from ._job import qualname
from ._options import Options

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._pools import _Pool

__all__ = ("MapIterator", "check_max_in_flight")

R = TypeVar("R")

logger = logging.getLogger("offload")


def check_max_in_flight(value: object) -> int | None:
    """Return ``max_in_flight`` if it is None or a whole number >= 1.

    Raises:
        TypeError: it is not a whole number.
        ValueError: it is below 1.
    """
    if value is None:
        return None

    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"max_in_flight must be a whole number >= 1 (or None for the pool's max_workers), "
            f"not {value!r}"
        )

    if value < 1:
        raise ValueError(
            f"max_in_flight={value} is not valid: it must be a whole number >= 1 (or None "
            f"for the pool's max_workers)"
        )

    return value


def _target(pool: _Pool[Any], fn: Any) -> tuple[Callable[..., Any], Options, tuple[Any, ...]]:
    """Return what each item's call runs: the function, its options, and the arguments that
    go before the item (the instance of a bound method).

    An offload-decorated function runs its original, with the options it was decorated
    with; it must belong to ``pool``.

    Raises:
        TypeError: ``fn`` is not callable, is async (and not offload's), or is decorated
            for another pool.
    """
    if not callable(fn):
        raise TypeError(f"{pool!r}.map() needs a function as its first argument, not {fn!r}")

    decorated = getattr(fn, "__offload_call__", None)
    if decorated is not None:
        owner, options, target = decorated
        if owner is not pool:
            raise TypeError(
                f"{qualname(fn)} is decorated for {owner!r}: map it there "
                f"({owner.name}.map(...)), or map its original function here "
                f"({pool.name}.map({qualname(fn)}.__wrapped__, ...))"
            )

        bound = getattr(fn, "__self__", None) if inspect.ismethod(fn) else None
        return target, options, () if bound is None else (bound,)

    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{qualname(fn)} is async; {pool!r}.map() runs a blocking (sync) function once "
            f"per item. Run coroutines with your async library instead (a task group)"
        )

    return fn, pool._ad_hoc, ()


class _Slot:
    """One item's call: its outcome, once the call has ended."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


class _Calls:
    """The calls of one map and the runner task that owns their task group.

    The runner and the calls hold this, never the :class:`MapIterator`, so an iterator that
    its consumer drops is collected (and cancels them) at once.
    """

    __slots__ = (
        "args",
        "call",
        "fn",
        "options",
        "ordered",
        "pool",
        "ready",
        "runner",
        "runner_done",
        "scope",
        "stopping",
        "task_group",
        "wakeup",
        "window",
    )

    def __init__(
        self,
        pool: _Pool[Any],
        fn: Callable[..., Any],
        options: Options,
        args: tuple[Any, ...],
        ordered: bool,
    ) -> None:
        self.pool = pool
        self.fn = fn
        self.options = options
        self.args = args
        self.call = run if options.timeout is None else run_with_timeout
        self.ordered = ordered
        self.window: deque[_Slot] = deque()  # ordered: the slots not taken yet, in input order
        self.ready: deque[_Slot] = deque()  # unordered: the finished slots not taken yet
        self.wakeup: anyio.Event | None = None  # set when the consumer's next result is in
        self.task_group: anyio.abc.TaskGroup | None = None
        self.scope: anyio.CancelScope | None = None
        self.stopping = False
        self.runner_done = anyio.Event()
        self.runner: object = None  # the runner task (asyncio keeps only weak references)

    async def start(self) -> None:
        """Start the runner beside the consumer, in a copy of its context; wait until its
        task group is open."""
        ready = anyio.Event()
        key = current_key()
        aio = sys.modules.get("asyncio")  # not imported by offload: see _backends
        if aio is not None and isinstance(key, aio.AbstractEventLoop):
            loop: Any = key
            self.runner = loop.create_task(self._run(ready), name="offload map")
        else:  # trio: a system task, so that no nursery of the consumer's is needed
            import trio

            self.runner = trio.lowlevel.spawn_system_task(
                self._run, ready, name="offload map", context=copy_context()
            )

        await ready.wait()

    async def _run(self, ready: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self.task_group = tg
                self.scope = tg.cancel_scope
                if self.stopping:  # stopped before the task group was open
                    tg.cancel_scope.cancel()

                ready.set()
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():  # the loop's run ends: each call had its outcome
            pass
        except BaseException:  # a bug of offload's: say so, rather than end the loop's run
            logger.exception("pool %r: map's runner failed", self.pool.name)
        finally:
            self.task_group = None
            self.runner_done.set()
            ready.set()  # cancelled before the task group opened: let start() return

    def start_call(self, item: Any) -> _Slot:
        """Start one item's call in the runner's task group."""
        slot = _Slot()
        if self.ordered:
            self.window.append(slot)

        tg = self.task_group
        if tg is None:
            raise RuntimeError("the map's calls were cancelled (its event loop's run ends)")

        tg.start_soon(self._one, slot, item)
        return slot

    async def _one(self, slot: _Slot, item: Any) -> None:
        """Run one item's call and keep its outcome in its slot."""
        try:
            slot.value = await self.call(self.pool, self.options, self.fn, (*self.args, item), {})
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            slot.error = exc

        slot.done = True
        if self.ordered:
            if not self.window or self.window[0] is not slot:
                return  # the consumer waits for an earlier item
        else:
            self.ready.append(slot)

        wakeup = self.wakeup
        if wakeup is not None:
            self.wakeup = None
            wakeup.set()

    async def stop(self) -> None:
        """Cancel the calls still in flight and wait until each has its outcome."""
        self.stopping = True
        self.window.clear()
        self.ready.clear()
        wakeup = self.wakeup
        if wakeup is not None:  # a consumer waits (aclose() came from another task)
            self.wakeup = None
            wakeup.set()

        if self.scope is not None:
            self.scope.cancel()

        if self.runner is not None:
            with anyio.CancelScope(shield=True):
                await self.runner_done.wait()


class MapIterator(Generic[R]):
    """The results of ``pool.map(fn, iterable)``: an async iterator, and an async context
    manager that closes it.

    ``async for result in pool.map(fn, items)`` runs ``fn(item)`` in the pool for each item,
    at most ``max_in_flight`` at a time, and yields the results (in input order when
    ``ordered``). ``async with pool.map(fn, items) as results:`` closes it on the way out,
    whatever happens in the block.

    **Cancellation**: an error from an item, :meth:`aclose`, the end of an ``async with``
    block and a cancelled consumer cancel the calls still in flight, under the function's
    ``cancel`` policy (a thread is abandoned, a process killed), and wait until each has
    its outcome. An iterator left by ``break`` without ``aclose()`` cancels them when it is
    collected (at once in CPython), without waiting.
    """

    __slots__ = (
        "__weakref__",
        "_async_source",
        "_busy",
        "_calls",
        "_cancel",
        "_closed",
        "_max_in_flight",
        "_outstanding",
        "_reading",
        "_source",
    )

    def __init__(
        self,
        pool: _Pool[Any],
        fn: Callable[..., Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        ordered: bool,
        max_in_flight: int | None,
    ) -> None:
        self._closed = True  # until every argument is checked (for __del__)
        if not isinstance(ordered, bool):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"ordered must be True or False, not {ordered!r}")

        self._max_in_flight = check_max_in_flight(max_in_flight)
        target, options, args = _target(pool, fn)
        if isinstance(iterable, AsyncIterable):
            self._async_source: AsyncIterator[Any] | None = aiter(iterable)
            self._source: Iterator[Any] | None = None
        elif isinstance(iterable, Iterable):  # pyright: ignore[reportUnnecessaryIsInstance]
            self._async_source = None
            self._source = iter(iterable)
        else:
            raise TypeError(
                f"{pool!r}.map() needs an iterable or an async iterable of items, not "
                f"{type(iterable).__name__}"
            )

        self._calls = _Calls(pool, target, options, args, ordered)
        self._outstanding = 0  # items read from the input whose result was not taken yet
        self._reading = False  # the consumer is inside the input's __anext__
        self._busy = False  # a task is inside __anext__
        self._cancel: Callable[[Callable[[], object]], object] | None = None
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def __anext__(self) -> R:
        if self._closed:
            raise StopAsyncIteration

        if self._busy:
            raise RuntimeError(
                "another task is already waiting for this map's next result: take the results "
                "in one task (and hand them on, e.g. through an anyio memory object stream)"
            )

        self._busy = True
        try:
            return await self._next()
        finally:
            self._busy = False

    async def _next(self) -> R:
        try:
            if self._cancel is None:
                await self._start()

            await self._fill()
            slot = await self._next_slot()
        except BaseException:
            await self.aclose()  # an error of the input, or the consumer was cancelled
            raise

        if slot is None:  # the input is exhausted and every result was taken
            await self.aclose()
            raise StopAsyncIteration

        self._outstanding -= 1
        error = slot.error
        if error is not None:
            slot.error = None
            try:
                await self.aclose()
                raise error
            finally:
                del error

        value: R = slot.value
        return value

    async def aclose(self) -> None:
        """Stop: cancel the calls still in flight and wait until each has its outcome.

        Results not taken yet are dropped; later ``__anext__`` calls end the iteration.
        Closing twice does nothing.
        """
        if self._closed:
            return

        self._closed = True
        source, async_source = self._source, self._async_source
        self._async_source = self._source = None
        await self._calls.stop()
        # The input is closed as a for loop over a generator would leave it to the collector:
        # now, so that an async generator's cleanup runs in this task (trio warns otherwise).
        if async_source is not None and not self._reading:
            aclose = getattr(async_source, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
        elif source is not None and not self._reading:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __del__(self) -> None:
        # Dropped without aclose() (``break`` out of ``async for``): cancel what still runs.
        if self._closed:
            return

        scope, cancel = self._calls.scope, self._cancel
        if scope is not None and cancel is not None:
            try:
                cancel(scope.cancel)
            except Exception:  # the loop is closed: its run cancelled the calls already
                pass

    async def _start(self) -> None:
        pool = self._calls.pool
        runtime = pool._runtime()  # PoolClosed and bad settings surface here
        if self._max_in_flight is None:
            await pool._settled(runtime)  # an executor pool's factory may still run
            # At least 1: where the pool has no executor, the first call raises why.
            self._max_in_flight = max(1, runtime.settings.max_workers)

        self._cancel = runtime.loop.call_soon_threadsafe
        await self._calls.start()

    async def _fill(self) -> None:
        """Read items and start their calls until the window is full or the input ends."""
        limit = self._max_in_flight
        assert limit is not None
        calls = self._calls
        while self._outstanding < limit:
            try:
                if self._async_source is not None:
                    self._reading = True
                    try:
                        item = await self._async_source.__anext__()
                    finally:
                        self._reading = False
                elif self._source is not None:
                    item = next(self._source)
                else:
                    return
            except (StopIteration, StopAsyncIteration):
                self._async_source = self._source = None
                return

            self._outstanding += 1
            calls.start_call(item)
            del item

    async def _next_slot(self) -> _Slot | None:
        """Wait for the next result: the oldest item's (ordered) or the first to finish."""
        calls = self._calls
        while True:
            if calls.ordered:
                if calls.window and calls.window[0].done:
                    return calls.window.popleft()
            elif calls.ready:
                return calls.ready.popleft()

            if not self._outstanding or self._closed:
                return None

            wakeup = calls.wakeup = anyio.Event()
            await wakeup.wait()
