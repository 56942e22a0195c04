"""Policy: the pools people declare (``ThreadPool``, ``ProcessPool``), their registry by name,
their settings and stats.

A pool object is declared at import time and holds only its name, its kind
(:class:`~offload._kinds.PoolKind`: what differs between thread and process pools) and its
explicit settings. The first call inside a running event loop starts a
:class:`~offload._runtime.Runtime` for that loop; calls take the path in ``_calls.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
)
from concurrent.futures import Executor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, cast, overload

from typing_extensions import ParamSpec, Self, Unpack

from ._backends import current_key, current_loop
from ._calls import run
from ._decorate import decorate
from ._exceptions import PoolClosed
from ._executors import ExecutorSource, ExecutorWorkers
from ._kinds import PROCESSES, THREADS, PoolKind, executors
from ._map import MapIterator
from ._options import KILL_GRACE, Options, check_options
from ._runtime import Runtime
from ._settings import (
    ExecutorOptions,
    ExecutorSettings,
    PoolSettings,
    ProcessOptions,
    ProcessSettings,
    ThreadOptions,
    ThreadSettings,
    resolve,
    validate,
)
from ._stats import Counters, PoolStats

if TYPE_CHECKING:
    from typing import TypeAlias

__all__ = (
    "CancelPolicy",
    "ExecutorCancelPolicy",
    "ExecutorPool",
    "ProcessCancelPolicy",
    "ProcessPool",
    "ThreadPool",
    "configure",
)

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
T = TypeVar("T")
SettingsT = TypeVar("SettingsT", bound=PoolSettings)

CancelPolicy: TypeAlias = Literal["abandon", "wait"]
ProcessCancelPolicy: TypeAlias = Literal["kill", "wait"]
ExecutorCancelPolicy: TypeAlias = Literal["cancel", "wait"]

_registry: weakref.WeakValueDictionary[str, _Pool[Any]] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


class _Pool(Generic[SettingsT]):
    """What every pool shares: name, settings, per-loop runtimes, calls, stats, close."""

    _kind: PoolKind  # what differs between kinds of pools

    def __init__(self, name: str, explicit: Mapping[str, object]) -> None:
        if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"a pool's name must be a non-empty string, not {name!r}")

        fields = tuple(f.name for f in dataclasses.fields(self._kind.settings))
        self._fields = fields
        self._explicit: dict[str, Any] = validate(name, fields, explicit)
        self._name = name
        self._lock = threading.RLock()
        self._runtimes: weakref.WeakKeyDictionary[object, Runtime[SettingsT]] = (
            weakref.WeakKeyDictionary()
        )
        self._closed_loops: weakref.WeakSet[object] = weakref.WeakSet()
        self._last: Runtime[SettingsT] | None = None
        self._retired = Counters()
        self._ad_hoc = Options(None, None, self._kind.policies[0])
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

    # -- runtimes ---------------------------------------------------------------------------

    def _runtime(self) -> Runtime[SettingsT]:
        key = current_key()
        runtime = self._last
        if runtime is not None and runtime.key is key:
            return runtime

        with self._lock:
            runtime = self._runtimes.get(key)
            if runtime is None:
                if key in self._closed_loops:
                    raise PoolClosed(self._name)

                base = resolve(self._name, self._kind.settings, self._kind.defaults(), {})
                runtime = Runtime(self, current_loop(key), cast(SettingsT, base))
                self._runtimes[key] = runtime

            self._last = runtime
            return runtime

    def _retire(self, runtime: Runtime[SettingsT]) -> None:
        """The runtime's loop is ending: keep its counts, forget the loop."""
        with self._lock:
            self._retired.merge(runtime.counters)
            runtime.counters = Counters()
            self._closed_loops.add(runtime.key)
            self._runtimes.pop(runtime.key, None)
            if self._last is runtime:
                self._last = None

    async def _settled(self, runtime: Runtime[SettingsT]) -> None:
        """Return once the runtime's ``max_workers`` is known (an executor pool's factory may
        still be making its executor)."""

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
        default policy. In a thread pool the thread is abandoned: it runs on, holding its
        slot, and its result is dropped. In a process pool the worker process is killed
        (SIGTERM, then SIGKILL) and a fresh one replaces it.
        """
        # A plain function returning the coroutine saves a frame per call; the pool starts
        # in the loop that awaits it.
        return run(self, self._ad_hoc, fn, args, kwargs)

    @overload
    def map(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        iterable: Iterable[T] | AsyncIterable[T],
        /,
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T] | AsyncIterable[T],
        /,
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
    ) -> MapIterator[R]: ...
    def map(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
    ) -> MapIterator[Any]:
        """Run ``fn(item)`` in this pool for each item, and iterate over the results.

        ``async for r in pool.map(fn, items)`` gives what ``for r in map(fn, items)`` gives,
        with up to ``max_in_flight`` calls running at once. Each item is one call, counted
        in :meth:`stats` and bounded by ``max_pending`` as any :meth:`call` is.

        Args:
            fn: a blocking function of one argument; a function decorated for this pool
                runs its original function with its options (``limit``, ``timeout``,
                ``cancel``, ``retries``).
            iterable: the items, a sync or an async iterable. It is read on the event loop,
                only as fast as results are taken: at most ``max_in_flight`` items are
                read and not yet handed out.
            ordered: yield results in input order (default; a slow item holds back the
                ones after it), or ``False``: as calls finish.
            max_in_flight: the most items in flight at once (read from the input and not
                yet taken by the consumer); default: the pool's ``max_workers`` when the
                iteration starts.

        Raises:
            TypeError: ``fn`` is async, or decorated for another pool; ``iterable`` is not
                iterable; ``max_in_flight`` is not a whole number.
            ValueError: ``max_in_flight`` is below 1.

        The iterator raises an item's exception at that item's place (ordered) or as it
        comes (unordered), after cancelling the other calls in flight.

        **Cancellation**: an item's error, ``aclose()``, leaving ``async with
        pool.map(...) as results:`` and a cancelled consumer cancel the calls in flight
        under the function's ``cancel`` policy, and wait for their outcomes; after a
        ``break`` without ``aclose()``, the iterator cancels them as it is collected.
        """
        return MapIterator(self, fn, iterable, ordered, max_in_flight)

    # -- settings -----------------------------------------------------------------------------

    def configure(self, **settings: Any) -> None:
        """Set some of this pool's settings; a running pool applies them to the next calls.

        Explicit settings win over ``OFFLOAD_<POOL>_<SETTING>`` environment variables and
        the built-in defaults.

        Raises:
            ValueError: a setting is unknown or its value is not valid.
        """
        checked = validate(self._name, self._fields, settings)
        validate(self._name, self._fields, {**self._explicit, **checked})  # settings together
        with self._lock:
            explicit = {**self._explicit, **checked}
            runtimes = list(self._runtimes.values())
            for runtime in runtimes:  # with the defaults and environment of each running loop
                base = {f: getattr(runtime.base, f) for f in self._fields}
                if base.get("max_workers") == 0:  # an executor pool's factory runs: no size yet
                    del base["max_workers"]
                validate(self._name, self._fields, {**base, **explicit})

            self._explicit = explicit

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

        base = resolve(self._name, self._kind.settings, self._kind.defaults(), self._explicit)
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
                    int, explicit.get("max_workers") or self._kind.defaults()["max_workers"]
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

    _kind = THREADS

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

        ``@pool`` and ``@pool(limit=..., timeout=..., cancel=...)`` (which returns a
        :class:`ThreadDecorator`) both work. The result keeps ``fn``'s signature,
        ``__name__``, ``__doc__`` and ``__wrapped__``; a generator function becomes an async
        generator function whose sync generator lives on one worker thread.

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
        options = check_options(self._name, limit, timeout, cancel, self._kind.policies)
        if fn is None:
            return functools.partial(decorate, self, options)

        return decorate(self, options, fn)


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

    _kind = PROCESSES

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

        ``@pool`` and ``@pool(limit=..., timeout=..., cancel=..., retries=...)`` both work
        (the latter returns a :class:`ProcessDecorator`).
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
        options = check_options(
            self._name, limit, timeout, cancel, self._kind.policies, retries, grace
        )
        if fn is None:
            return functools.partial(decorate, self, options)

        return decorate(self, options, fn)


class ExecutorDecorator(Protocol):
    """What ``@pool(limit=..., timeout=..., cancel=...)`` returns for an executor pool: a
    decorator."""

    @overload
    def __call__(self, fn: staticmethod[P, R], /) -> staticmethod[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(
        self, fn: classmethod[T, P, R], /
    ) -> classmethod[T, P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


class ExecutorPool(_Pool[ExecutorSettings]):
    """Any :class:`concurrent.futures.Executor` behind offload's decorator and ``call``, with
    ``limit``, ``timeout``, ``max_pending``, cancellation, ``stats()`` and the lifecycle.

    A dask.distributed cluster, loky's reusable executor, Ray's executor or a stdlib pool::

        from distributed import Client

        cluster = offload.ExecutorPool(
            "cluster", lambda: Client("tcp://scheduler:8786").get_executor(pure=False)
        )

        @cluster
        def render(page: int) -> bytes: ...

        png = await render(3)  # runs on a dask worker

    **Ownership**: an executor object stays yours (offload never shuts it down; every
    event loop uses it). A zero-argument factory is offload's: it is called in a thread of
    the pool (never on the loop's thread) when the pool first starts in an event loop, and
    its executor is shut down when that loop's run ends or on :meth:`aclose` (for dask, its
    client and the cluster that client started, such as a ``LocalCluster``, are closed too).
    Calls made while the factory runs wait as pending; if it raises (or its executor tells
    no size and ``max_workers`` is not given: ``ValueError``), they fail with that error, as
    does every later call in that loop until the pool is closed there.

    **Capacity**: at most ``max_workers`` calls are in the executor at once; the others wait
    on this side, so a pending call never reaches the executor. ``max_workers`` defaults to
    the executor's size where it tells it (``_max_workers`` of the stdlib's and loky's
    pools; a dask cluster's total threads, asked once the executor is there); elsewhere it
    must be given.

    Functions go by reference, as to a process pool: a module-level decorated function runs
    as the original on the remote worker; a lambda or a local function is refused with
    :exc:`~offload.SerializationError`, and so is an argument that cannot be pickled (except
    for a stdlib :class:`~concurrent.futures.ThreadPoolExecutor`, which pickles nothing).
    Generator functions are refused, and the workers do not see the caller's
    ``contextvars``.

    Args:
        name: the pool's name: unique, and the ``<POOL>`` of ``OFFLOAD_<POOL>_<SETTING>``
            environment variables.
        executor: an executor (yours), or a function without arguments that makes one
            (offload's).
        **settings: explicit settings (:class:`ExecutorSettings`): ``max_workers``,
            ``max_pending``, ``shutdown_timeout``.

    Raises:
        ValueError: the name is taken, a setting is not valid, or ``max_workers`` is left
            out for an executor that does not tell its size.
        TypeError: ``executor`` is neither an executor nor callable.

    **Cancellation**: a pending call never runs. Cancelling a call that the executor holds
    cancels its future (``cancel="cancel"``, the default): the executor never starts it if
    it has not yet, and a dask task is cancelled on the cluster; a call already running in
    a stdlib or loky pool runs to its end, holding its slot. :func:`offload.cancelled` is
    always False in an executor's workers, since offload does not control them.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        name: str,
        executor: Executor | Callable[[], Executor],
        /,
        **settings: Unpack[ExecutorOptions],
    ) -> None:
        if "idle_timeout" in settings:
            raise ValueError(
                f"idle_timeout is not a setting of executor pool {name!r}: its executor starts "
                f"and stops its workers itself"
            )

        if not (isinstance(executor, Executor) or callable(executor)):
            raise TypeError(
                f"ExecutorPool({name!r}, ...) takes a concurrent.futures.Executor or a "
                f"function without arguments that makes one, not {executor!r}"
            )

        source = ExecutorSource(name, executor, self._resize)
        source.check_size(settings.get("max_workers"))
        self._source = source
        self._kind = executors(source)
        super().__init__(name, settings)
        self._fields = tuple(f for f in self._fields if f != "idle_timeout")

    def _resize(self, key: object, size: int | None) -> int:
        """A factory's executor in the loop of ``key`` tells its ``size`` (None: it does
        not): make it that loop's default ``max_workers``; return the one in force there (0
        for none)."""
        runtime = self._runtimes.get(key)
        if runtime is None:
            return 0

        if size is not None:
            runtime.base = dataclasses.replace(runtime.base, max_workers=size)

        max_workers: int | None = self._explicit.get("max_workers", size)
        if max_workers is None:
            return 0

        runtime.settings = dataclasses.replace(runtime.settings, max_workers=max_workers)
        return max_workers

    async def _settled(self, runtime: Runtime[ExecutorSettings]) -> None:
        await cast(ExecutorWorkers, runtime.workers).settled()

    def configure(self, **settings: Unpack[ExecutorOptions]) -> None:  # type: ignore[override]
        """Set some of this pool's settings; a running pool applies them to the next calls.

        Raises:
            ValueError: a setting is unknown or its value is not valid.
        """
        super().configure(**settings)

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
        cancel: ExecutorCancelPolicy = "cancel",
    ) -> ExecutorDecorator: ...
    def __call__(
        self,
        fn: Any = None,
        /,
        *,
        limit: int | None = None,
        timeout: float | None = None,
        cancel: ExecutorCancelPolicy = "cancel",
    ) -> Any:
        """Turn a blocking function into an async one that runs in this pool's executor.

        ``@pool`` and ``@pool(limit=..., timeout=..., cancel=...)`` both work. The function
        must be defined at module level (a lambda or a local function cannot be sent by
        reference: :exc:`~offload.SerializationError` says so at once).

        Args:
            fn: the function (or method, staticmethod, classmethod).
            limit: at most this many calls of this function run at once (per event loop).
            timeout: seconds for waiting and running together; past them the call raises
                the built-in ``TimeoutError`` and its future is cancelled.
            cancel: ``"cancel"`` (default) gives control back at once when the awaiter is
                cancelled and cancels the call's future; ``"wait"`` leaves the future alone
                and delivers the cancellation when it is done.

        **Cancellation**: a call still pending when its awaiter is cancelled never reaches
        the executor.
        """
        options = check_options(self._name, limit, timeout, cancel, self._kind.policies)
        if fn is None:
            return functools.partial(decorate, self, options)

        return decorate(self, options, fn)


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
