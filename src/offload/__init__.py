"""Call blocking code from async Python without freezing the event loop.

``@offload.thread`` / ``@offload.process`` turn a blocking callable into an awaitable one that
runs in a managed, bounded pool; ``await offload.call(fn, *args, **kwargs)`` does the same ad
hoc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exceptions import OffloadError as OffloadError
from ._exceptions import Overloaded as Overloaded
from ._exceptions import PoolClosed as PoolClosed
from ._exceptions import SerializationError as SerializationError
from ._exceptions import WorkerCrashed as WorkerCrashed
from ._job import cancelled as cancelled
from ._map import MapIterator as MapIterator
from ._pools import CallFunction as _CallFunction
from ._pools import CancelPolicy as CancelPolicy
from ._pools import ExecutorCancelPolicy as ExecutorCancelPolicy
from ._pools import ExecutorDecorator as ExecutorDecorator
from ._pools import ExecutorPool as ExecutorPool
from ._pools import ProcessCancelPolicy as ProcessCancelPolicy
from ._pools import ProcessDecorator as ProcessDecorator
from ._pools import ProcessPool as ProcessPool
from ._pools import ThreadDecorator as ThreadDecorator
from ._pools import ThreadPool as ThreadPool
from ._pools import configure as configure
from ._settings import ExecutorSettings as ExecutorSettings
from ._settings import PoolSettings as PoolSettings
from ._settings import ProcessSettings as ProcessSettings
from ._settings import ThreadSettings as ThreadSettings
from ._stats import PoolStats as PoolStats
from ._stats import TimingSummary as TimingSummary

if TYPE_CHECKING:
    from ._monitor import BlockingEvent as BlockingEvent
    from ._monitor import BlockingKind as BlockingKind
    from ._monitor import Monitor as Monitor
    from ._monitor import Report as Report
    from ._monitor import ReportRow as ReportRow
    from ._monitor import SiteShare as SiteShare
    from ._monitor import ThreadShare as ThreadShare
    from ._monitor import monitor as monitor

thread: ThreadPool = ThreadPool("thread")
"""The default thread pool, named ``thread``: ``@offload.thread``, ``offload.thread.call``."""

process: ProcessPool = ProcessPool("process")
"""The default process pool, named ``process``: ``@offload.process``,
``offload.process.call``."""

call: _CallFunction = thread.call
"""``await offload.call(fn, *args, **kwargs)`` runs ``fn`` in the default thread pool."""

__all__ = (
    "BlockingEvent",
    "BlockingKind",
    "CancelPolicy",
    "ExecutorCancelPolicy",
    "ExecutorDecorator",
    "ExecutorPool",
    "ExecutorSettings",
    "MapIterator",
    "Monitor",
    "OffloadError",
    "Overloaded",
    "PoolClosed",
    "PoolSettings",
    "PoolStats",
    "ProcessCancelPolicy",
    "ProcessDecorator",
    "ProcessPool",
    "ProcessSettings",
    "Report",
    "ReportRow",
    "SerializationError",
    "SiteShare",
    "ThreadDecorator",
    "ThreadPool",
    "ThreadSettings",
    "ThreadShare",
    "TimingSummary",
    "WorkerCrashed",
    "call",
    "cancelled",
    "configure",
    "monitor",
    "process",
    "thread",
)


# The monitor is imported on first use (PEP 562): ``import offload``, and so every worker
# process, which imports the package to reach its entry module, does not pay for it.
_LAZY = frozenset(
    (
        "BlockingEvent",
        "BlockingKind",
        "Monitor",
        "Report",
        "ReportRow",
        "SiteShare",
        "ThreadShare",
        "monitor",
    )
)


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'offload' has no attribute {name!r}")

    from . import _monitor

    for lazy in _LAZY:
        value: object = getattr(_monitor, lazy)
        _set_module(value)
        globals()[lazy] = value

    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _set_module(obj: object) -> None:
    # Public names read as ``offload.X`` in reprs, tracebacks and the docs. Dataclasses keep
    # their module: typing.get_type_hints() resolves their annotations in it.
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return

    if getattr(obj, "__module__", "").startswith("offload._"):
        try:
            obj.__module__ = "offload"
        except (AttributeError, TypeError):
            pass


def _set_modules() -> None:
    for name in __all__:
        if name not in _LAZY:
            _set_module(globals()[name])


_set_modules()
