"""The few things offload needs from the running event loop, per backend.

anyio gives portable cancel scopes, but the hot path of a call (a one-shot waiter, a
thread-safe wake-up) costs several microseconds through it. Here each backend gets the
native primitive: an ``asyncio.Future`` and ``loop.call_soon_threadsafe`` on asyncio (and
uvloop), ``wait_task_rescheduled`` and ``TrioToken.run_sync_soon`` on trio.
"""

from __future__ import annotations

import contextvars
import math
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Protocol, cast

__all__ = ("CANCELLED", "Loop", "Waiter", "current_loop")

if TYPE_CHECKING:
    import asyncio

    import trio


class Waiter(Protocol):
    """A one-shot result that one task awaits and the loop thread resolves.

    ``asyncio.Future`` is one; ``_TrioWaiter`` gives trio the same surface. A waiter whose
    awaiter was cancelled is ``done()`` and ignores later results.
    """

    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def result(self) -> Any: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...
    def __await__(self) -> Generator[Any, None, Any]: ...


class Loop:
    """A handle on one running event loop: its identity, waiters and thread-safe calls."""

    __slots__ = (
        "call_soon_threadsafe",
        "checkpoint_if_cancelled",
        "effective_deadline",
        "key",
        "new_waiter",
    )

    key: object
    new_waiter: Callable[[], Waiter]
    call_soon_threadsafe: Callable[[Callable[[], object]], object]
    # Raise the running task's cancellation if a cancel scope around it was cancelled
    # already; else return at once, without letting other tasks run (anyio's and trio's
    # ``checkpoint_if_cancelled``).
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]
    # Where a synchronous look is cheaper than that checkpoint (asyncio): the running task's
    # effective deadline, ``CANCELLED`` inside a cancelled scope. None: always checkpoint.
    effective_deadline: Callable[[], float] | None

    def spawn_system_task(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> object:
        """Start ``fn()`` as a task that lives until the loop's run ends, then is cancelled."""
        raise NotImplementedError

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        """Call ``fn()`` in the loop after ``delay`` seconds (unless the run ends first)."""

        async def later() -> None:
            import anyio

            await anyio.sleep(delay)
            fn()

        self.spawn_system_task(later)

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        """Call ``callback()`` in the loop whenever ``fd`` is readable, until
        :meth:`remove_reader` (which must come before ``fd`` is closed)."""
        raise NotImplementedError

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``; the callback is not called again."""
        raise NotImplementedError


class _AsyncioLoop(Loop):
    __slots__ = ("_loop", "_tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop, token: object) -> None:
        self.key = loop
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()
        self.new_waiter = loop.create_future
        self.call_soon_threadsafe = loop.call_soon_threadsafe
        # anyio's, with the backend looked up once (EventLoopToken.backend_class) and not
        # per call; the checkpoint only runs when the deadline says the task is cancelled.
        import anyio.lowlevel

        backend = getattr(token, "backend_class", None)
        self.effective_deadline = (
            anyio.current_effective_deadline
            if backend is None
            else backend.current_effective_deadline
        )
        self.checkpoint_if_cancelled = anyio.lowlevel.checkpoint_if_cancelled

    def spawn_system_task(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> object:
        # ``asyncio.run`` (and ``asyncio.Runner``, which anyio and pytest use) cancels every
        # task left when the main coroutine ends, and runs the loop until they finish: this
        # task's cleanup runs then, before ``run`` returns. It starts in an empty context:
        # a task keeps the context it starts in, and the caller's (a request object in a
        # contextvar) must not live as long as the loop.
        return contextvars.Context().run(self._spawn, fn())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> object:
        task = self._loop.create_task(coro, name="offload lifecycle")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        contextvars.Context().run(self._loop.call_later, delay, fn)

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        contextvars.Context().run(self._loop.add_reader, fd, callback)

    def remove_reader(self, fd: int) -> None:
        self._loop.remove_reader(fd)


class _TrioWaiter:
    __slots__ = ("_aborted", "_error", "_resolved", "_task", "_value")

    def __init__(self) -> None:
        self._task: Any = None
        self._resolved = False
        self._aborted = False
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._resolved or self._aborted

    def cancelled(self) -> bool:
        return self._aborted

    def result(self) -> Any:
        if not self._resolved:
            raise RuntimeError("waiter not resolved yet")

        if self._error is not None:
            raise self._error

        return self._value

    def set_result(self, result: Any, /) -> None:
        self._value = result
        self._resolve()

    def set_exception(self, exception: BaseException, /) -> None:
        self._error = exception
        self._resolve()

    def _resolve(self) -> None:
        if self.done():
            raise RuntimeError("waiter already resolved")

        self._resolved = True
        task, self._task = self._task, None
        if task is not None:
            import outcome

            result = (
                outcome.Value(self._value) if self._error is None else outcome.Error(self._error)
            )
            _trio().lowlevel.reschedule(task, result)

    def __await__(self) -> Generator[Any, None, Any]:
        if self._resolved:
            return self.result()

        lowlevel = _trio().lowlevel
        self._task = lowlevel.current_task()

        def abort(_: object) -> Any:
            self._task = None
            self._aborted = True
            return lowlevel.Abort.SUCCEEDED

        wait: Generator[Any, None, Any] = lowlevel.wait_task_rescheduled(abort).__await__()
        return (yield from wait)


class _TrioLoop(Loop):
    __slots__ = ("_readers",)

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._readers: dict[int, list[Callable[[], object]]] = {}  # fd -> its callback
        self.key = token
        self.new_waiter = _TrioWaiter
        self.call_soon_threadsafe = token.run_sync_soon
        self.checkpoint_if_cancelled = _trio().lowlevel.checkpoint_if_cancelled
        self.effective_deadline = None  # trio's checkpoint is the cheaper look

    def spawn_system_task(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> object:
        # System tasks are cancelled when the main task ends, and trio.run waits for them.
        return _trio().lowlevel.spawn_system_task(fn, name="offload lifecycle")

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        # One task per file descriptor, shielded: it keeps reading while the end of the run
        # closes the pools (a worker's last results arrive then), until remove_reader.
        trio = _trio()
        box = [callback]  # emptied by remove_reader: the task ending later holds nothing
        self._readers[fd] = box
        wait_readable = trio.lowlevel.wait_readable
        closed = trio.ClosedResourceError

        async def read() -> None:
            with trio.CancelScope(shield=True):
                try:
                    while box:  # never wait on a descriptor removed already
                        await wait_readable(fd)
                        if box:
                            box[0]()
                except closed:  # remove_reader
                    pass

        trio.lowlevel.spawn_system_task(read, name="offload reader", context=contextvars.Context())

    def remove_reader(self, fd: int) -> None:
        # notify_closing unregisters the descriptor at once (the caller may close it next)
        # and wakes the task waiting on it.
        box = self._readers.pop(fd, None)
        if box is not None:
            box.clear()
            _trio().lowlevel.notify_closing(fd)


def _trio() -> Any:
    return sys.modules["trio"]


CANCELLED = -math.inf  # the effective deadline inside a cancelled scope


def current_key() -> object:
    """Return the identity of the running loop: an asyncio loop or a ``TrioToken``.

    Raises:
        RuntimeError: no asyncio, uvloop or trio loop runs in this thread.
    """
    # asyncio is not imported here (nor by ``import offload``): where no one imported it, no
    # asyncio loop runs.
    aio = sys.modules.get("asyncio")
    if aio is not None:
        loop = aio._get_running_loop()
        # In trio's guest mode an asyncio loop runs too, but no asyncio task does.
        if loop is not None and aio.current_task(loop) is not None:
            return loop

    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        return trio.lowlevel.current_trio_token()

    raise RuntimeError(
        "offload needs a running event loop: await this from async code that runs under "
        "asyncio, uvloop or trio (for example inside asyncio.run(...) or trio.run(...))"
    )


def current_loop(key: object) -> Loop:
    """Return a new handle on the running loop whose identity is ``key``.

    A pool calls this when it first starts in a loop, before any of its workers runs: so
    this is also where anyio gets ready for the loop. anyio imports its backend for the
    running library on first use, and the pool's lifecycle task would otherwise do that on
    the loop thread once the first call already runs. Under CPU-bound workers that import
    freezes the loop: every file it reads releases the GIL, and each time the loop thread
    waits a switch interval to get it back (hundreds of milliseconds in all).
    """
    import anyio.lowlevel

    token = anyio.lowlevel.current_token()  # imports anyio's backend for this loop, now
    aio = sys.modules.get("asyncio")
    if aio is not None and isinstance(key, aio.AbstractEventLoop):
        return _AsyncioLoop(cast("asyncio.AbstractEventLoop", key), token)

    return _TrioLoop(key)  # type: ignore[arg-type]
