"""What differs between pool kinds, each said once: :class:`PoolKind`, and the seam to the
worker layer (:class:`Workers`, and the optional :class:`Stopper`).

Everything else (the runtime per loop, the call path, decoration, generators, settings and
stats) is the same for every kind. A new kind of pool is a new ``PoolKind`` and its workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from ._backends import Loop
from ._executors import ExecutorSource
from ._job import Job
from ._processes import FunctionRef, ProcessWorkers, check_picklable_function
from ._queue import JobQueue
from ._settings import (
    ExecutorSettings,
    PoolSettings,
    ProcessSettings,
    ThreadSettings,
    default_start_method,
    usable_cpus,
)
from ._threads import ThreadWorkers

__all__ = ("EXECUTORS", "PROCESSES", "THREADS", "PoolKind", "Stopper", "Workers", "executors")


class Workers(Protocol):
    """What a worker layer gives the pool: a queue with its bound, and workers that run each
    submitted job and hand it to the delivery callback they were made with."""

    @property
    def queue(self) -> JobQueue: ...
    def submit(self, job: Job, max_pending: int | None, elsewhere: int = 0, /) -> bool: ...
    def withdraw(self, job: Job, /) -> bool: ...
    def withdraw_all(self) -> list[Job]: ...
    def gauges(self) -> tuple[int, int, int, int]: ...
    def reconfigure(self, settings: Any, /) -> None: ...
    def shutdown(self) -> object: ...


class Stopper(Protocol):
    """The optional capability of stopping a running job (set ``job.caller_gone`` first).

    The three actions, mildest first: notify (``offload.cancelled()`` turns True where the
    job runs), terminate (ask the worker to end), kill (end it if terminate did not).
    """

    def notify(self, job: Job, /) -> None: ...
    def terminate(self, job: Job, /) -> None: ...
    def kill(self, job: Job, /) -> None: ...


StartWorkers = Callable[[str, Callable[[Job], None], Any, Loop], Workers]


@dataclass(frozen=True, slots=True)
class PoolKind:
    """What one kind of pool does differently from the others."""

    settings: type[PoolSettings]  # its settings class
    defaults: Callable[[], dict[str, object]]  # its defaults, for this machine
    start_workers: StartWorkers  # (pool name, delivery callback, settings, loop) -> its workers
    delivers_on_loop: bool  # its workers call the delivery callback on the loop's thread
    stopper: Callable[[Workers], Stopper | None]  # its workers' stop actions, if any
    policies: tuple[str, ...]  # the cancel policies it allows; the first is the default
    prepare: Callable[[Callable[..., Any], str], Callable[..., Any]]  # (fn, pool) -> target
    generators: bool  # takes generator functions
    copies_context: bool  # its workers see a copy of the caller's contextvars
    kills_on_close: bool  # kills what still runs past shutdown_timeout


def _as_is(fn: Callable[..., Any], pool: str) -> Callable[..., Any]:
    return fn


def _by_reference(fn: Callable[..., Any], pool: str) -> Callable[..., Any]:
    check_picklable_function(fn, pool)
    # The worker imports the function by name (the name is the wrapper's).
    return cast(Callable[..., Any], FunctionRef(fn.__module__, fn.__qualname__))


def _thread_defaults() -> dict[str, object]:
    return {"max_workers": min(32, usable_cpus() + 4)}


def _start_threads(
    pool: str, deliver: Callable[[Job], None], settings: Any, loop: Loop
) -> Workers:
    return ThreadWorkers(
        pool,
        deliver,
        settings.max_workers,
        settings.idle_timeout,
        initializer=settings.initializer,
        initargs=settings.initargs,
    )


def _process_defaults() -> dict[str, object]:
    return {"max_workers": usable_cpus(), "start_method": default_start_method()}


def _start_processes(
    pool: str, deliver: Callable[[Job], None], settings: Any, loop: Loop
) -> Workers:
    return ProcessWorkers(pool, deliver, loop, settings)


def _no_stopper(workers: Workers) -> Stopper | None:
    return None  # a thread cannot be stopped from outside: caller_gone is all there is


def _process_stopper(workers: Workers) -> Stopper | None:
    return cast(ProcessWorkers, workers)


THREADS = PoolKind(
    settings=ThreadSettings,
    defaults=_thread_defaults,
    start_workers=_start_threads,
    delivers_on_loop=False,
    stopper=_no_stopper,
    policies=("abandon", "wait"),
    prepare=_as_is,
    generators=True,
    copies_context=True,
    kills_on_close=False,
)

PROCESSES = PoolKind(
    settings=ProcessSettings,
    defaults=_process_defaults,
    start_workers=_start_processes,
    delivers_on_loop=True,
    stopper=_process_stopper,
    policies=("kill", "wait"),
    prepare=_by_reference,
    generators=False,
    copies_context=False,
    kills_on_close=True,
)


def _no_executor(pool: str, deliver: Callable[[Job], None], settings: Any, loop: Loop) -> Workers:
    raise AssertionError("an executor pool's kind comes from executors(source)")


def _executor_stopper(workers: Workers) -> Stopper | None:
    return cast("Stopper", workers)  # cancelling a call is cancelling its future


EXECUTORS = PoolKind(
    settings=ExecutorSettings,
    defaults=dict,  # the executor's size: see executors()
    start_workers=_no_executor,
    delivers_on_loop=False,
    stopper=_executor_stopper,
    policies=("cancel", "wait"),
    prepare=_by_reference,
    generators=False,
    copies_context=False,
    kills_on_close=False,
)


def executors(source: ExecutorSource) -> PoolKind:
    """Return the kind of one executor pool: :data:`EXECUTORS`, with its executor's size as
    the default ``max_workers`` and its executor behind the workers."""
    return dataclasses.replace(
        EXECUTORS, defaults=source.defaults, start_workers=source.start_workers
    )
