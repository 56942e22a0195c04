"""What the parent sets up before a worker process starts, so that workers share it.

* **The forkserver's preload list.** A ``forkserver`` imports the modules of its preload
  list once, when it starts, and every worker forks from it with them in memory. offload
  adds its worker entry module (``offload._child``) to the list, and the event-loop library
  that the program imported (asyncio, trio: a worker that imports the main script again
  imports it too, and offload itself no longer does), keeping what the list holds:
  ``['__main__']`` by default (which preloads the main script only on Python 3.13.8 and
  later: before, a bug in multiprocessing made it a no-op, gh-126631) and what the program
  set itself. The list only counts before the forkserver starts: once it runs (another
  pool, another library started it), it is left alone.
* **The resource tracker.** Segments of big payloads (``_payloads``) are registered with
  multiprocessing's resource tracker by the process that makes them and unregistered by the
  one that unlinks them, so parent and workers must share one tracker. ``spawn`` and
  ``forkserver`` start it in the parent; a ``fork`` worker would start its own, which then
  complains about (and unlinks) segments that the parent took over.
"""

from __future__ import annotations

import sys
from typing import Any

from . import _payloads

__all__ = ("before_worker_start",)

WORKER_MODULES = ("offload._child",)
LOOP_MODULES = ("asyncio", "trio")  # preloaded when the program imported them


def before_worker_start(context: Any) -> None:
    """Get the parent ready for a new worker of ``context``'s start method."""
    if _payloads.ENABLED:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()

    if context.get_start_method() == "forkserver":
        _preload_worker_modules(context)


def _preload_worker_modules(context: Any) -> None:
    """Add offload's worker modules to the forkserver's preload list, if it is not running."""
    import multiprocessing.forkserver

    server: Any = getattr(multiprocessing.forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return  # started already: its list is fixed

    modules = list(getattr(server, "_preload_modules", None) or ["__main__"])
    wanted = [*WORKER_MODULES, *(name for name in LOOP_MODULES if name in sys.modules)]
    missing = [name for name in wanted if name not in modules]
    if missing:
        context.set_forkserver_preload([*modules, *missing])
