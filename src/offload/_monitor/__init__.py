"""Find the code that blocks an event loop, and say what kind of blocking it is.

How it works:

* **Heartbeat.** The watched loop beats every quarter threshold (asyncio, uvloop: a timer
  callback) or half threshold (trio: a system task). Each beat writes down the time, the loop
  thread's CPU clock and the frames below the loop's callbacks (the loop's own machinery).
* **Watchdog.** One thread per monitor looks every half threshold whether a beat is overdue by
  a fifth of the threshold. Then it samples the loop thread's stack (``sys._current_frames()``)
  and CPU clock every millisecond (or as soon as the GIL lets it) until the loop beats again.
* **Steps.** Samples that share the step's outermost frame (a task's coroutine, a callback)
  belong to one step. A step that ran past the threshold is one `BlockingEvent`, blamed on the
  innermost frame of user code; the time each sample saw is split between the sites it visited.
  The loop thread's CPU clock tells a blocking call (``blocking``: waiting in the kernel) from
  computation (``cpu``).
* **The rest.** Time spent in many short steps, or in the loop's own code, is ``saturation``
  when the loop thread was busy, and ``starvation`` when it was ready but other threads held
  the GIL or the CPUs. Neither is blamed on a line; the other threads, looked at every 5 ms
  during a stall, are named in ``busy_threads``.
* **From the first step.** A watch beats as its loop starts (asyncio: as ``run_forever``
  sets the async generator hooks; trio: an instrument's ``before_run``), so the first step,
  which runs before any callback of ours, is watched too.

A C call that holds the GIL (``json.dumps``' encoder) stops the watchdog too: it is seen when
it returns, and blamed on the site of the look before it, where it began.

The modules, in the order a stall flows through them (``docs/design.md`` draws it):

* ``_watches``: each loop's heartbeat; every beat re-arms the loop's alarm.
* ``_alarm``: the alarm, and where the watchdog sleeps until one rings (chosen at import).
* ``_watchdog``: the thread that notices a late beat and samples until the loop turns again.
* ``_sampling``: the stall's samples, grouped into steps and sites; ``_clocks`` reads CPU clocks.
* ``_places``: which code is the user's, a library's or the loop's own.
* ``_attribution``: turns a stall into events; ``_fixes`` writes the advice.
* ``_events`` and ``_report``: the records a user reads.
* ``_hooks``: the process-wide hooks of ``install()``; ``_monitor``: `Monitor` itself.
"""

from __future__ import annotations

from ._events import BlockingEvent as BlockingEvent
from ._events import BlockingKind as BlockingKind
from ._events import SiteShare as SiteShare
from ._events import ThreadShare as ThreadShare
from ._monitor import Monitor as Monitor
from ._monitor import monitor as monitor
from ._report import Report as Report
from ._report import ReportRow as ReportRow

__all__ = (
    "BlockingEvent",
    "BlockingKind",
    "Monitor",
    "Report",
    "ReportRow",
    "SiteShare",
    "ThreadShare",
    "monitor",
)
