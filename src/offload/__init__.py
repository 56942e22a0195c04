"""Call blocking code from async Python without freezing the event loop.

``@offload.thread`` / ``@offload.process`` turn a blocking callable into an awaitable one that
runs in a managed, bounded pool; ``await offload.call(fn, *args, **kwargs)`` does the same ad
hoc.
"""

from __future__ import annotations

from ._exceptions import OffloadError as OffloadError
from ._exceptions import Overloaded as Overloaded
from ._exceptions import PoolClosed as PoolClosed
from ._exceptions import SerializationError as SerializationError
from ._exceptions import WorkerCrashed as WorkerCrashed
from ._job import cancelled as cancelled
from ._map import MapIterator as MapIterator
from ._monitor import BlockingEvent as BlockingEvent
from ._monitor import BlockingKind as BlockingKind
from ._monitor import Monitor as Monitor
from ._monitor import Report as Report
from ._monitor import ReportRow as ReportRow
from ._monitor import SiteShare as SiteShare
from ._monitor import ThreadShare as ThreadShare
from ._monitor import monitor as monitor
from ._pools import CallFunction as _CallFunction
from ._pools import CancelPolicy as CancelPolicy
from ._pools import ProcessCancelPolicy as ProcessCancelPolicy
from ._pools import ProcessDecorator as ProcessDecorator
from ._pools import ProcessPool as ProcessPool
from ._pools import ThreadDecorator as ThreadDecorator
from ._pools import ThreadPool as ThreadPool
from ._pools import configure as configure
from ._settings import PoolSettings as PoolSettings
from ._settings import ProcessSettings as ProcessSettings
from ._settings import ThreadSettings as ThreadSettings
from ._stats import PoolStats as PoolStats
from ._stats import TimingSummary as TimingSummary

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


def _set_module() -> None:
    # Public names read as ``offload.X`` in reprs, tracebacks and the docs. Dataclasses keep
    # their module: typing.get_type_hints() resolves their annotations in it.
    import dataclasses

    for name in __all__:
        obj = globals()[name]
        if dataclasses.is_dataclass(obj):
            continue

        if getattr(obj, "__module__", "").startswith("offload._"):
            try:
                obj.__module__ = "offload"
            except (AttributeError, TypeError):
                pass


_set_module()
