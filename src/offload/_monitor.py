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
it returns, and blamed on the site of the look before it, where it began. The fixes are in
``_monitor_fixes``.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import logging
import os
import select
import site
import sys
import sysconfig
import threading
import time
import tokenize
import traceback
import types
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

from typing_extensions import Self

from . import _alarm
from ._monitor_fixes import advice, busy_advice, positions

if TYPE_CHECKING:
    import trio

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

_logger = logging.getLogger("offload")

BlockingKind: TypeAlias = Literal["blocking", "cpu", "saturation", "starvation"]
"""What stopped the loop: see `BlockingEvent.kind`."""

_SiteKind: TypeAlias = Literal["blocking", "cpu"]

_KIND_TEXT: Final[dict[BlockingKind, str]] = {
    "blocking": "a blocking call: the loop thread waited in the kernel",
    "cpu": "CPU-bound work on the loop thread",
    "saturation": "saturation: many short steps, none blocking alone",
    "starvation": (
        "starvation: the loop thread was ready to run, but other threads held the GIL or the CPUs"
    ),
}

_SATURATION_FIX: Final = (
    "no single line to blame: too many short steps run per loop turn. Bound the concurrency "
    "(anyio.CapacityLimiter), batch small steps, or move CPU-heavy steps to @offload.process"
)
_STARVATION_FIX: Final = (
    "no line on the loop to blame: CPU-bound work in other threads (@offload.thread, "
    "to_thread, plain threads) holds the GIL or the CPUs; run it with @offload.process instead"
)

_SAMPLE_INTERVAL: Final = 0.001
_OTHERS_EVERY: Final = 0.005  # how often a stall looks at the other threads too
_GIL_FREE_GAP: Final = 0.0025  # half of CPython's default switch interval
_MAX_EVENTS: Final = 10_000
_MAX_SPLIT: Final = 8
_NO_STACK: Final = traceback.StackSummary()


def _heartbeat_interval(threshold: float, backend: str) -> float:
    """How often the loop beats: each beat wakes an idle loop, which costs CPU.

    A wake costs an asyncio loop about half what it costs trio's, so asyncio beats every
    quarter threshold and trio every half: either way an idle loop spends under 1% of a core
    on it at the default threshold. A stall is timed to within half an interval (a CPU-bound
    one closer, see ``_Stall._begin``).
    """
    fraction = 2 if backend == "trio" else 4
    return min(max(threshold / fraction, 0.002), 0.25)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteShare:
    """The time one site took within one blocking step.

    Attributes:
        site: the innermost frame of user code at this site.
        duration: seconds the loop spent here.
        share: ``duration`` as a fraction of the event's duration.
        kind: ``"blocking"`` or ``"cpu"``, for this site alone.
        fix: how to stop this site from blocking the loop, in offload's API.
    """

    site: traceback.FrameSummary
    duration: float
    share: float
    kind: _SiteKind
    fix: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadShare:
    """A thread that kept the CPUs or the GIL while the loop starved.

    Attributes:
        name: the thread's name (``threading.Thread.name``).
        site: its innermost frame of user code where it spent the most time (for an
            offloaded function, that function), or ``None`` if it ran no user code.
        share: the fraction of the stall it spent on a CPU.
    """

    name: str
    site: traceback.FrameSummary | None
    share: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockingEvent:
    """The event loop did not turn for longer than the monitor's threshold.

    ``str(event)`` reads as a short report: duration, kind, site, fix and stack.

    Attributes:
        duration: seconds the loop did not turn (for ``blocking`` and ``cpu``: the one step).
        kind: what the step did most: ``"blocking"`` (the loop thread waited in a blocking
            call), ``"cpu"`` (it computed), ``"saturation"`` (many short steps, none blocking
            alone) or ``"starvation"`` (it was ready to run, but other threads held the GIL or
            the CPUs).
        site: the innermost frame of user code (not the standard library, site-packages or
            offload) where the step spent the most time (its kind is in ``split``); ``None``
            for saturation and starvation, which no line causes.
        leaf: the innermost Python frame at that site, wherever it is.
        stack: the step's stack at that site, outermost first (empty without a site).
        split: how the time split between sites when one step blocked in several, in the
            order they ran.
        fix: how to stop it, in offload's API.
        threshold: the monitor's threshold.
        detected_after: seconds after the loop stopped turning that the monitor knew it was
            past the threshold (a C call that holds the GIL is seen when it returns).
        cpu: the fraction of ``duration`` the loop thread spent on a CPU, or ``None`` where the
            platform has no per-thread CPU clock.
        loop: which loop it was, e.g. ``"asyncio loop in thread 'MainThread'"``.
        started: when the loop stopped turning, as a ``time.time()`` timestamp.
        busy_threads: for starvation (and saturation that other threads slowed down), the
            other threads that held the GIL or the CPUs, the busiest first.
    """

    duration: float
    kind: BlockingKind
    site: traceback.FrameSummary | None
    leaf: traceback.FrameSummary | None
    stack: traceback.StackSummary = field(repr=False)
    split: tuple[SiteShare, ...]
    fix: str
    threshold: float
    detected_after: float
    cpu: float | None
    loop: str
    started: float
    busy_threads: tuple[ThreadShare, ...] = ()

    def __str__(self) -> str:
        lines = [f"event loop blocked for {self.duration:.3f} s: {_KIND_TEXT[self.kind]}"]
        if self.site is not None:
            lines.append(f"  at {_where(self.site)}")
            code = _code_text(self.site)
            if code:
                lines.append(f"    {code}")

        lines.append(f"  fix: {self.fix}")
        if len(self.split) > 1:
            lines.append("  time split between the sites of this step:")
            lines.extend(
                f"    {share.share:4.0%} {share.duration:7.3f} s  {share.kind:<8}  "
                f"{_where(share.site)}: {_code_text(share.site)}"
                for share in self.split
            )

        if self.busy_threads:
            lines.append("  threads that held the GIL or the CPUs:")
            lines.extend(f"    {_thread_text(busy)}" for busy in self.busy_threads)

        if self.stack:
            lines.append("Stack (most recent call last):")
            lines.append(_format_stack(self.stack))

        return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRow:
    """Every event at one site (or, for saturation and starvation, of one kind).

    Attributes:
        kind: the kind that took the most time here.
        site: the site, or ``None`` for saturation and starvation.
        count: how many events involved this site (one event can involve several sites).
        total: seconds the loop spent blocked here, over all events.
        max: the longest time in one event.
        fix: how to stop it, in offload's API.
        busy_threads: for starvation (and saturation), the threads that held the GIL or the
            CPUs, by site, each with its share of ``total``.
    """

    kind: BlockingKind
    site: traceback.FrameSummary | None
    count: int
    total: float
    max: float
    fix: str
    busy_threads: tuple[ThreadShare, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """What a monitor saw, by site: ``print(monitor.report())`` shows it as a table.

    Attributes:
        threshold: the monitor's threshold.
        events: how many events the monitor recorded.
        rows: one row per site (and per kind without a site), the most total time first.
    """

    threshold: float
    events: int
    rows: tuple[ReportRow, ...]

    def __str__(self) -> str:
        if not self.rows:
            return f"offload.monitor: the event loop never blocked past {self.threshold:g} s."

        total = sum(row.total for row in self.rows)
        sites = sum(row.site is not None for row in self.rows)
        kinds = [row.kind for row in self.rows if row.site is None]
        shared = sum(row.count for row in self.rows) > self.events
        lines = [
            (
                f"offload.monitor: {_plural(self.events, 'event')} past {self.threshold:g} s, "
                f"{total:.2f} s in all"
                + (f", at {_plural(sites, 'site')}" if sites else "")
                + (" (an event that blocked at several sites counts in each)" if shared else "")
                + (f"; {_and(kinds)}, with no single line to blame" if kinds else "")
                + ":"
            ),
            "",
            f"{'events':>6} {'total':>9} {'max':>9}  {'kind':<11} where",
        ]
        indent = " " * 39
        for row in self.rows:
            where_text = "(no single line)" if row.site is None else _where(row.site)
            lines.append(
                f"{row.count:>6} {row.total:>7.3f} s {row.max:>7.3f} s  {row.kind:<11} "
                f"{where_text}"
            )
            if row.site is not None:
                code = _code_text(row.site)
                if code:
                    lines.append(f"{indent}  {code}")

            lines.extend(f"{indent}  {_thread_text(busy)}" for busy in row.busy_threads)
            lines.append(f"{indent}  fix: {row.fix}")

        return "\n".join(lines)


def _import_machinery(frame: traceback.FrameSummary) -> bool:
    filename = frame.filename
    return filename.startswith("<frozen importlib.") or filename == _IMPORTLIB


_IMPORTLIB: Final = importlib.__file__


def _format_stack(stack: traceback.StackSummary) -> str:
    """Format a stack as a traceback does, with Python's import machinery folded."""
    parts: list[str] = []
    folded = 0
    for frame in stack:
        if _import_machinery(frame):
            folded += 1
            continue

        if folded:
            parts.append(f"  [{folded} frames of Python's import machinery]\n")
            folded = 0

        parts.extend(traceback.StackSummary.from_list([frame]).format())

    if folded:
        parts.append(f"  [{folded} frames of Python's import machinery]\n")

    return "".join(parts).rstrip("\n")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _thread_text(busy: ThreadShare) -> str:
    where = "no user code" if busy.site is None else _where(busy.site)
    code = _code_text(busy.site) if busy.site is not None else ""
    name = busy.name if busy.name.endswith(" threads") else f"thread {busy.name!r}"
    return f"{busy.share:4.0%} {name}  {where}" + (f": {code}" if code else "")


def _where(site: traceback.FrameSummary) -> str:
    filename = site.filename
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive, on Windows
        relative = filename

    if not relative.startswith(os.pardir):
        filename = relative

    return f"{filename}:{site.lineno} in {site.name}"


def _code_text(site: traceback.FrameSummary) -> str:
    """Return the site's source line without a trailing comment."""
    line = (site.line or "").strip()
    if "#" not in line:
        return line

    try:
        tokens = list(tokenize.generate_tokens(iter([line + "\n"]).__next__))
    except (tokenize.TokenError, SyntaxError):
        return line

    for token in tokens:
        if token.type == tokenize.COMMENT:
            return line[: token.start[1]].rstrip()

    return line


# --------------------------------------------------------------------------------------------
# Where code lives: the user's, a library's, or the event loop's own
# --------------------------------------------------------------------------------------------

_USER: Final = 0
_LIBRARY: Final = 1
_LOOP: Final = 2

# Packages in site-packages that run the loop itself: a step made only of their frames is the
# loop's own work, not a library's.
_LOOP_PACKAGES: Final = frozenset({"anyio", "outcome", "sniffio", "trio", "uvloop"})


class _Places:
    """Classify source files: user code, a library (site-packages), or the loop's own code.

    The standard library, offload and the event loop packages are the loop's own code;
    ``offload/_demo.py`` stands in for user code, since it shows what a user's code does.
    """

    def __init__(self) -> None:
        here = self._normal(os.path.dirname(__file__))
        self._offload = here + os.sep
        self._demo = os.path.join(here, "_demo.py")
        paths = sysconfig.get_paths()
        site_dirs = {paths["purelib"], paths["platlib"]}
        try:
            site_dirs.update(site.getsitepackages())
        except AttributeError:  # pragma: no cover - old virtualenv's site module
            pass

        user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
        if user_site:
            site_dirs.add(user_site)

        self._site = sorted({self._normal(d) + os.sep for d in site_dirs}, key=len, reverse=True)
        std_dirs = {paths["stdlib"], paths["platstdlib"]}
        self._std = sorted({self._normal(d) + os.sep for d in std_dirs}, key=len, reverse=True)
        self._cache: dict[str, int] = {}

    @staticmethod
    def _normal(path: str) -> str:
        return os.path.normcase(os.path.realpath(path))

    def __call__(self, filename: str) -> int:
        place = self._cache.get(filename)
        if place is None:
            place = self._cache[filename] = self._classify(filename)

        return place

    def _classify(self, filename: str) -> int:
        if filename.startswith("<"):
            return _LOOP if filename.startswith("<frozen") else _USER

        path = self._normal(filename)
        if path == self._demo:
            return _USER

        if path.startswith(self._offload):
            return _LOOP

        for directory in self._site:
            if path.startswith(directory):
                package = path[len(directory) :].split(os.sep, 1)[0]
                name = package.split(".", 1)[0].lower()
                return _LOOP if name in _LOOP_PACKAGES else _LIBRARY

        for directory in self._std:
            if path.startswith(directory):
                return _LOOP

        return _USER


_places_lock = threading.Lock()
_places: _Places | None = None


def _get_places() -> _Places:
    global _places
    with _places_lock:
        if _places is None:
            _places = _Places()

        return _places


# --------------------------------------------------------------------------------------------
# Clocks
# --------------------------------------------------------------------------------------------


def _thread_clock(thread_id: int) -> int | None:
    """Return the CPU clock of a thread, readable from any thread, where the platform has one."""
    if sys.platform == "win32" or not hasattr(time, "pthread_getcpuclockid"):
        return None  # pragma: no cover - Linux has it

    try:
        clock = time.pthread_getcpuclockid(thread_id)
        time.clock_gettime(clock)
    except (OSError, OverflowError):  # pragma: no cover - a platform that lies about it
        return None

    return clock


def _system_cpu() -> tuple[int, int] | None:
    """Return (busy, total) CPU ticks of the whole machine, on Linux."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()[1:9]
    except OSError:  # pragma: no cover - not Linux
        return None

    try:
        values = [int(value) for value in fields]
    except ValueError:  # pragma: no cover - an unexpected format
        return None

    if len(values) < 5:  # pragma: no cover - an unexpected format
        return None

    total = sum(values)
    return total - values[3] - values[4], total


def _runnable(native_id: int) -> bool | None:
    """Whether a thread of this process is running or waiting for a CPU (Linux), or None.

    A thread in a kernel wait (a blocking call, a lock, the GIL) is sleeping instead.
    """
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None

    end = data.rfind(b")")
    return data[end + 2 : end + 3] == b"R" if end > 0 else None


# --------------------------------------------------------------------------------------------
# Watches: the loop side
# --------------------------------------------------------------------------------------------


class _Watch:
    """One event loop watched by one monitor.

    The loop thread writes (the beats); the watchdog thread reads. Every write is one attribute
    store, atomic under the GIL, and ``beats`` is written last.
    """

    __slots__ = (
        "__weakref__",
        "_prefix_key",
        "alarm",
        "beats",
        "clock",
        "interval",
        "last_beat",
        "late",
        "last_cpu",
        "name",
        "native_id",
        "paused",
        "prefix",
        "stopped",
        "thread_id",
    )

    def __init__(self, kind: str, interval: float, late: float) -> None:
        self.thread_id = threading.get_ident()
        self.native_id = threading.get_native_id()
        self.clock = _thread_clock(self.thread_id)
        self.name = f"{kind} loop in thread {threading.current_thread().name!r}"
        self.interval = interval
        self.late = late  # after a beat, when the watchdog looks if no other beat came
        self.beats = 0
        self.last_beat = time.perf_counter()
        self.last_cpu = self.cpu_here()
        self.prefix: frozenset[types.CodeType] = frozenset()
        self._prefix_key: tuple[types.CodeType, ...] = ()
        self.paused = False
        self.stopped = False
        # Fires when the next beat is overdue (see ``_alarm``); the watchdog closes it.
        self.alarm = _alarm.new_alarm()

    def cpu_here(self) -> float:
        """Read this loop's CPU clock from the loop thread."""
        return time.thread_time() if self.clock is not None else time.process_time()

    def read_cpu(self) -> float | None:
        """Read this loop's CPU clock from any thread (the process's where no thread clock)."""
        if self.clock is None:
            return time.process_time()

        try:
            return time.clock_gettime(self.clock)
        except OSError:  # pragma: no cover - the thread is gone
            return None

    def beat(self, below: types.FrameType | None, also: tuple[types.CodeType, ...] = ()) -> None:
        """Record that the loop turned; ``below`` is the frame under the beating callback.

        ``also`` adds the code of the loop's machinery that ``below`` does not show yet: at the
        start of a run, before its first step, the frames that will dispatch the steps.
        """
        codes: list[types.CodeType] = list(also)
        while below is not None:
            codes.append(below.f_code)
            below = below.f_back

        key = tuple(codes)
        if key != self._prefix_key:
            self._prefix_key = key
            self.prefix = frozenset(key)

        self._mark(self.cpu_here())
        if self.alarm is not None:
            self.alarm.arm(self.late)

    def _mark(self, cpu: float | None) -> None:
        if cpu is not None:
            self.last_cpu = cpu

        self.last_beat = time.perf_counter()
        self.beats += 1

    def pause(self) -> None:
        """The loop stopped running (between two ``run_until_complete``): not a stall."""
        self.paused = True
        self._mark(self.cpu_here())
        if self.alarm is not None:
            self.alarm.disarm()

    def resume(self) -> None:
        """The loop runs again."""
        self.paused = False
        self._mark(self.cpu_here())
        if self.alarm is not None:
            self.alarm.arm(self.late)

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    def stop(self) -> None:
        """Stop beating; ends a stall in progress now."""
        self.stopped = True
        self._mark(self.cpu_here() if self.on_loop_thread() else self.read_cpu())
        if self.alarm is not None:
            self.alarm.disarm()

    def running(self) -> bool:
        raise NotImplementedError

    def gone(self) -> bool:
        raise NotImplementedError


class _AsyncioWatch(_Watch):
    """A heartbeat on an asyncio (or uvloop) loop: a timer callback that re-arms itself.

    A timer, unlike a task, is invisible to ``asyncio.all_tasks()`` and leaves nothing to
    cancel when the loop closes.
    """

    __slots__ = ("_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, late: float) -> None:
        module = type(loop).__module__.split(".", 1)[0]
        super().__init__("uvloop" if module == "uvloop" else "asyncio", interval, late)
        self._loop = weakref.ref(loop)
        self._handle: asyncio.Handle | None = None

    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop()

    def start(self, below: types.FrameType | None, known: bool) -> None:
        """Start beating, and watch at once.

        ``known`` says ``below`` is the loop's machinery under a task. Otherwise the loop is
        starting its run (``below`` called ``sys.set_asyncgen_hooks``) and the first step, the
        main task's, runs before any callback of ours: the first beat is now, with the code
        that will dispatch the steps, and the next beat learns the machinery as it is.
        """
        loop = self._loop()
        assert loop is not None
        if known:
            self.beat(below)
            self._handle = loop.call_later(self.interval, self._on_beat)
        else:
            self.beat(below, _asyncio_dispatch())
            self._handle = loop.call_soon(self._on_beat)

    def _on_beat(self) -> None:
        if self.stopped:
            return

        try:
            below: types.FrameType | None = sys._getframe(1)
        except ValueError:  # pragma: no cover - a loop run entirely from C
            below = None

        self.beat(below)
        loop = self._loop()
        if loop is not None:
            self._handle = loop.call_later(self.interval, self._on_beat)

    def stop(self) -> None:
        super().stop()
        if self._handle is not None and self.on_loop_thread():
            self._handle.cancel()

    def running(self) -> bool:
        loop = self._loop()
        return (
            loop is not None
            and not self.paused
            and not self.stopped
            and loop.is_running()
            and not loop.is_closed()
        )

    def gone(self) -> bool:
        loop = self._loop()
        return self.stopped or loop is None or loop.is_closed()


def _asyncio_dispatch() -> tuple[types.CodeType, ...]:
    """The code of the stdlib loop that runs each step under ``run_forever`` (none: uvloop)."""
    codes: list[types.CodeType] = []
    for owner, name in (
        (asyncio.base_events.BaseEventLoop, "_run_once"),
        (asyncio.events.Handle, "_run"),
    ):
        code = getattr(getattr(owner, name, None), "__code__", None)
        if isinstance(code, types.CodeType):
            codes.append(code)

    return tuple(codes)


class _TrioWatch(_Watch):
    """A heartbeat on a trio run: a system task, which the run cancels when it ends.

    A run's watch starts before its first task (an instrument's ``before_run``), so the
    tasks a program starts at launch are watched from their first step; the heartbeat task
    joins as soon as the run can take system tasks.
    """

    __slots__ = ("_ended", "_scope", "_token")

    def __init__(self, interval: float, late: float) -> None:
        import trio

        super().__init__("trio", interval, late)
        self._token = trio.lowlevel.current_trio_token()
        self._scope: trio.CancelScope | None = None
        self._ended = False

    def start(self, below: types.FrameType | None, known: bool) -> None:
        """Beat now, and start the heartbeat task (once the run can take one)."""
        self.beat(below)
        if known:
            self._spawn()
        else:
            self._token.run_sync_soon(self._spawn)

    def _spawn(self) -> None:
        import trio

        if not self.stopped:
            trio.lowlevel.spawn_system_task(self._heartbeat, name="offload.monitor heartbeat")

    def ended(self) -> None:
        """The run ended (``after_run``), whether or not the heartbeat ever started."""
        self._ended = True
        self.stop()

    async def _heartbeat(self) -> None:
        import trio

        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                while not self.stopped:
                    self.beat(sys._getframe(0).f_back)
                    await trio.sleep(self.interval)
        finally:
            self._ended = True

    def _cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def stop(self) -> None:
        import trio

        super().stop()
        if self.on_loop_thread():
            self._cancel()
        else:
            try:
                self._token.run_sync_soon(self._cancel)
            except trio.RunFinishedError:
                pass

    def running(self) -> bool:
        return not self._ended and not self.stopped

    def gone(self) -> bool:
        return self._ended or self.stopped


def _task_machinery() -> tuple[str, types.FrameType | None, bool] | None:
    """Find the running loop of this thread and the frames below the current task.

    Returns ``(backend, below, known)``: ``below`` is the frame under the current task's
    outermost coroutine (the loop's machinery) and ``known`` says it was found. ``None``
    outside any running loop.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None

    if loop is not None:
        task = asyncio.current_task(loop)
        frame: types.FrameType | None = None
        if task is not None:
            frame = getattr(task.get_coro(), "cr_frame", None)

        return "asyncio", (frame.f_back if frame else None), frame is not None

    if "trio" in sys.modules:
        import trio

        if trio.lowlevel.in_trio_task():
            coro = trio.lowlevel.current_task().coro
            frame = getattr(coro, "cr_frame", None)
            return "trio", (frame.f_back if frame else None), frame is not None

    return None


# --------------------------------------------------------------------------------------------
# Stalls: the watchdog side
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _FrameRec:
    """A frame as a sample saw it: the frame, and its line and instruction then."""

    frame: types.FrameType
    lineno: int | None
    lasti: int


def _filename(record: _FrameRec) -> str:
    return record.frame.f_code.co_filename


@dataclass(slots=True)
class _SiteAcc:
    """The time one site took within a segment."""

    stack: tuple[_FrameRec, ...]
    site: int  # index of the site's frame in ``stack``
    time: float = 0.0
    cpu: float = 0.0
    starved: float = 0.0
    free_cpu: float = 0.0  # CPU time while the watchdog got the GIL at once: C without the GIL
    contended: float = 0.0  # off-CPU time of intervals that computed in part
    # Time by instruction of the site's frame: a line of several calls is blamed on the one
    # that took the time, not the one the first sample saw.
    at: dict[int, float] = field(default_factory=dict[int, float])
    last: int = -1

    def merge(self, other: _SiteAcc) -> None:
        for lasti, spent in other.at.items():
            self.at[lasti] = self.at.get(lasti, 0.0) + spent

        self.time += other.time
        self.cpu += other.cpu
        self.starved += other.starved
        self.free_cpu += other.free_cpu
        self.contended += other.contended


class _Sample:
    """One look at the loop thread: its stack, and where in it the step and the site are.

    The frames' lines and instructions are read at once, before anything that could release
    the GIL and let the loop thread move on (the first look at a file name stats the file).
    """

    __slots__ = ("frames", "leaf_key", "root", "site", "site_key", "step")

    def __init__(self, leaf: types.FrameType | None, prefix: frozenset[types.CodeType]) -> None:
        chain: list[_FrameRec] = []
        frame = leaf
        while frame is not None:
            chain.append(_FrameRec(frame, frame.f_lineno, frame.f_lasti))
            frame = frame.f_back

        # The loop's machinery is the outermost frames, whose code the heartbeat saw below it.
        end = len(chain)
        while end > 0 and chain[end - 1].frame.f_code in prefix:
            end -= 1

        self.frames = tuple(chain[end - 1 :: -1]) if end else ()  # the step, outermost first
        # Where the innermost frame is: the same code at the same instruction is the same
        # place, even in a new frame (a helper called in a loop).
        self.leaf_key = (id(chain[0].frame.f_code), chain[0].lasti) if chain else (0, -1)
        self.root: types.FrameType | None = self.frames[0].frame if self.frames else None
        self.site = -1
        self.site_key: tuple[types.CodeType, int | None] | None = None
        self.step = False

    def locate(self) -> None:
        """Find the site: the innermost frame of user code (may release the GIL)."""
        if not self.frames:
            return

        places = _get_places()
        library = -1
        for index in range(len(self.frames) - 1, -1, -1):
            place = places(self.frames[index].frame.f_code.co_filename)
            if place == _USER:
                self.site = index
                break

            if place == _LIBRARY and library < 0:
                library = index

        if self.site < 0:
            # No user code: a library's own step (blamed on its innermost frame), or the
            # loop's own work between steps (blamed on nothing).
            if library < 0:
                return

            self.site = library

        self.step = True
        record = self.frames[self.site]
        self.site_key = (record.frame.f_code, record.lineno)


class _Segment:
    """Consecutive samples in one step (the same outermost frame), or in the loop's own code."""

    __slots__ = ("cpu", "last", "root", "sites", "start", "starved", "step", "time")

    def __init__(self, root: types.FrameType | None, step: bool, start: float) -> None:
        self.root = root
        self.step = step
        self.start = start
        self.time = 0.0
        self.cpu = 0.0
        self.starved = 0.0
        self.sites: dict[tuple[types.CodeType, int | None], _SiteAcc] = {}
        self.last: _SiteAcc | None = None

    def add(self, sample: _Sample, dt: float, share: float, moved: bool) -> None:
        acc: _SiteAcc | None = None
        if sample.site_key is not None:
            acc = self.sites.get(sample.site_key)
            if acc is None:
                acc = self.sites[sample.site_key] = _SiteAcc(sample.frames, sample.site)

            acc.last = sample.frames[sample.site].lasti

        self.last = acc
        self.add_time(dt, share, moved)

    def add_time(self, dt: float, share: float, moved: bool) -> None:
        # The leaf moved but the thread was not on a CPU all along: it ran Python, slowed
        # by other threads (the GIL) or processes; that part is neither blocking nor its own CPU.
        low = (1.0 - share) * dt if moved else 0.0
        self.time += dt
        self.cpu += share * dt
        self.starved += low
        if self.last is not None:
            self.last.at[self.last.last] = self.last.at.get(self.last.last, 0.0) + dt
            self.last.time += dt
            self.last.cpu += share * dt
            self.last.starved += low
            if not moved and share >= 0.2:
                # A kernel wait uses next to no CPU: a stable leaf that computed in part was
                # computing, and waited for a CPU the rest of the time if others kept them busy.
                self.last.contended += (1.0 - share) * dt
            if dt <= _GIL_FREE_GAP:
                # The watchdog took the GIL again within a switch interval while the loop
                # thread computed: the computation does not hold the GIL.
                self.last.free_cpu += share * dt

    def merge(self, other: _Segment) -> None:
        self.time += other.time
        self.cpu += other.cpu
        self.starved += other.starved
        for key, acc in other.sites.items():
            mine = self.sites.get(key)
            if mine is None:
                self.sites[key] = acc
            else:
                mine.merge(acc)


class _OtherThread:
    """Another thread, as the watchdog saw it during a stall: its CPU time and its sites."""

    __slots__ = (
        "clock",
        "cpu0",
        "cpu1",
        "looks",
        "moved",
        "name",
        "native_id",
        "prev",
        "runnable",
        "sites",
        "t0",
        "t1",
    )

    def __init__(self, ident: int, thread: threading.Thread | None, now: float) -> None:
        self.name = thread.name if thread is not None else str(ident)
        self.native_id = thread.native_id if thread is not None else None
        self.clock = _thread_clock(ident)
        self.cpu0 = self.cpu1 = self._cpu()
        self.t0 = self.t1 = now
        self.looks = self.moved = self.runnable = 0
        self.prev: tuple[int, int] | None = None
        self.sites: dict[tuple[types.CodeType, int | None], list[Any]] = {}  # [count, record]

    def _cpu(self) -> float | None:
        if self.clock is None:
            return None

        try:
            return time.clock_gettime(self.clock)
        except OSError:  # the thread ended
            return None

    def read_clock(self, now: float) -> None:
        cpu = self._cpu()
        if cpu is not None:
            self.cpu1, self.t1 = cpu, now

    def look(self, leaf: types.FrameType, now: float) -> None:
        self.read_clock(now)

        key = (id(leaf.f_code), leaf.f_lasti)
        self.moved += self.prev is not None and key != self.prev
        if self.native_id is not None:
            self.runnable += _runnable(self.native_id) is True
        self.prev = key
        self.looks += 1
        places = _get_places()
        frame: types.FrameType | None = leaf
        while frame is not None and places(frame.f_code.co_filename) != _USER:
            frame = frame.f_back

        if frame is not None:
            record = _FrameRec(frame, frame.f_lineno, frame.f_lasti)
            seen = self.sites.setdefault((frame.f_code, frame.f_lineno), [0, record])
            seen[0] += 1

    def timed(self) -> bool:
        """Whether it was watched long enough for its CPU clock to tell its share."""
        return self.cpu0 is not None and self.cpu1 is not None and self.t1 - self.t0 >= 0.02

    def share(self) -> float:
        """The share of the time it was watched that it spent on a CPU."""
        if self.cpu0 is not None and self.cpu1 is not None and self.t1 > self.t0:
            return min(max((self.cpu1 - self.cpu0) / (self.t1 - self.t0), 0.0), 1.0)

        return self.moved / (self.looks - 1) if self.looks > 1 else 0.0

    def site(self) -> _FrameRec | None:
        if not self.sites:
            return None

        return max(self.sites.values(), key=lambda seen: seen[0])[1]  # type: ignore[no-any-return]


class _Stall:
    """The watchdog's record of one stretch where the loop did not beat on time."""

    def __init__(self, watch: _Watch, threshold: float, beats: int, last_beat: float) -> None:
        # ``beats`` and ``last_beat`` as the watchdog read them: the loop may beat again
        # before this runs, which ends the stall at once.
        self.watch = watch
        self.threshold = threshold
        self.beats = beats
        self.t0 = last_beat
        self.start = last_beat + watch.interval / 2
        self.cpu_t = last_beat
        self.cpu: float | None = watch.last_cpu if watch.beats == beats else None
        self.held_gap = 4 * sys.getswitchinterval()
        self.proc = sys.platform == "linux"
        self.attr_t = self.start
        self.prev_leaf: tuple[int, int] | None = None
        self.current: _Segment | None = None
        self.big: list[_Segment] = []
        self.rest = _Segment(None, step=False, start=self.start)
        self.detected: float | None = None
        self.hang_logged = False
        self.samples = 0
        self.wall0 = 0.0
        self.process0 = self.own0 = 0.0
        self.system0: tuple[int, int] | None = None
        self.loop0: float | None = None
        self.others: dict[int, _OtherThread] = {}
        self.others_t = -1.0

    def sample(self) -> _Sample:
        """Look at the loop thread now: its clock, its CPU clock and its stack, together."""
        watch = self.watch
        now = time.perf_counter()
        cpu = watch.read_cpu()
        frames = sys._current_frames()
        sample = _Sample(frames.get(watch.thread_id), watch.prefix)
        sample.locate()
        if now - self.others_t >= _OTHERS_EVERY:
            self.others_t = now
            self._look_at_others(frames, now)

        if self.samples == 0:
            self._begin(now, cpu)

        gap = now - self.cpu_t
        share = self._share(now, cpu)
        dt = max(now - self.attr_t, 0.0)
        # Python ran on between the two looks (the leaf moved), or the loop thread held the
        # GIL all along, in C (a blocking call lets go of it): either way it was not blocked.
        moved = (self.prev_leaf is not None and sample.leaf_key != self.prev_leaf) or (
            gap > self.held_gap and share >= 0.2
        )
        if not moved and share < 0.2 and self.proc:
            # Off the CPU without moving: a kernel wait, unless the thread is runnable and
            # only waits for a CPU that other processes keep busy.
            runnable = _runnable(watch.native_id)
            if runnable is None:
                self.proc = False
            else:
                moved = runnable
        key = sample.root if sample.step else None
        current = self.current
        if self.samples and gap > self.held_gap and share >= 0.2 and current is not None:
            # The loop thread held the GIL since the last look: a C call that began after it,
            # at the last look's site. This look lands wherever the call returned to.
            current.add_time(dt, share, moved=True)
            self.attr_t, dt = now, 0.0

        if current is None or current.root is not key or current.step != sample.step:
            if current is not None:
                self._close(current)

            current = self.current = _Segment(key, sample.step, self.attr_t)

        current.add(sample, dt, share, moved)
        self.attr_t = now
        self.prev_leaf = sample.leaf_key
        self.samples += 1
        if self.detected is None and now - self.start >= self.threshold:
            self.detected = now - self.start

        return sample

    def _look_at_others(self, frames: dict[int, types.FrameType], now: float) -> None:
        """Note where the other threads are and their CPU clocks: they may be starving us."""
        skip = (self.watch.thread_id, threading.get_ident())
        threads: dict[int | None, threading.Thread] | None = None
        for ident, leaf in frames.items():
            if ident in skip:
                continue

            other = self.others.get(ident)
            if other is None:
                if threads is None:
                    threads = {thread.ident: thread for thread in threading.enumerate()}

                other = self.others[ident] = _OtherThread(ident, threads.get(ident), now)

            other.look(leaf, now)

    def busy_threads(self) -> list[tuple[_OtherThread, float]]:
        """The other threads that were on a CPU for 2% of the stall or more, busiest first."""
        now = time.perf_counter()
        for other in self.others.values():
            other.read_clock(now)  # the stall just ended: its clock now closes the interval

        others = list(self.others.values())
        if others and not any(other.timed() for other in others):
            # Starved of the GIL itself, the watchdog saw the others only as the stall ended:
            # too briefly to time them. Those running then shared the GIL with the loop.
            running = [other for other in others if other.runnable]
            return [(other, 1 / (len(running) + 1)) for other in running][:_MAX_SPLIT]

        busy = [(other, other.share()) for other in others]
        busy = [(other, share) for other, share in busy if share >= 0.02]
        busy.sort(key=lambda pair: pair[1], reverse=True)
        return busy[:_MAX_SPLIT]

    def _begin(self, now: float, cpu: float | None) -> None:
        """Estimate when the loop stopped turning, at the first sample."""
        watch = self.watch
        self.wall0 = now
        self.loop0 = cpu if watch.clock is not None else None
        self.process0 = time.process_time()
        self.own0 = time.thread_time()
        self.system0 = _system_cpu()
        # The loop beat at t0 and would have beaten at t0 + interval had it been free: it
        # stopped in between, and any computing it did since came after. A step that computed
        # all along started when its computing did; otherwise take the middle of what is left.
        t0 = self.t0
        latest = t0 + watch.interval
        start = t0 + watch.interval / 2
        if self.loop0 is not None and cpu is not None and self.cpu is not None:
            used = max(cpu - self.cpu, 0.0)
            if used >= 0.9 * (now - latest):
                start = max(t0, now - used)
            else:
                start = (t0 + max(t0, min(latest, now - used))) / 2

        self.start = self.attr_t = self.rest.start = start

    def _share(self, now: float, cpu: float | None) -> float:
        span = now - self.cpu_t
        share = 0.0
        if cpu is not None and self.cpu is not None and span > 0:
            share = min(max((cpu - self.cpu) / span, 0.0), 1.0)

        if cpu is not None:
            self.cpu = cpu
            self.cpu_t = now

        return share

    def _close(self, segment: _Segment) -> None:
        if segment.step and segment.time >= self.threshold:
            self.big.append(segment)
        else:
            self.rest.merge(segment)

    def finish(self, end: float, end_cpu: float | None) -> None:
        """Close the stall at ``end``: the time since the last sample goes to its site."""
        dt = end - self.attr_t
        if self.current is not None:
            if dt > 0:
                self.current.add_time(dt, self._share(end, end_cpu), moved=False)

            self._close(self.current)
            self.current = None

    def others_busy(self) -> bool:
        """Whether other threads or processes kept the CPUs busy during the stall."""
        wall = time.perf_counter() - self.wall0
        if wall <= 0:
            return False

        process = time.process_time() - self.process0
        own = time.thread_time() - self.own0
        loop = 0.0
        if self.loop0 is not None:
            cpu = self.watch.read_cpu()
            if cpu is not None:
                loop = cpu - self.loop0

        if (process - own - loop) / wall >= 0.5:
            return True

        system0 = self.system0
        system1 = _system_cpu()
        if system0 is None or system1 is None or system1[1] <= system0[1]:
            return False

        return (system1[0] - system0[0]) / (system1[1] - system0[1]) >= 0.9


# --------------------------------------------------------------------------------------------
# Turning stalls into events
# --------------------------------------------------------------------------------------------


if sys.version_info >= (3, 11):

    def _summary(record: _FrameRec) -> traceback.FrameSummary:
        frame = record.frame
        code = frame.f_code
        linecache.lazycache(code.co_filename, frame.f_globals)
        end_lineno, colno, end_colno = positions(code, record.lasti)
        return traceback.FrameSummary(
            code.co_filename,
            record.lineno,
            code.co_name,
            end_lineno=end_lineno,
            colno=colno,
            end_colno=end_colno,
        )

else:

    def _summary(record: _FrameRec) -> traceback.FrameSummary:
        frame = record.frame
        code = frame.f_code
        linecache.lazycache(code.co_filename, frame.f_globals)
        return traceback.FrameSummary(code.co_filename, record.lineno, code.co_name)


class _Builder:
    """Turn a finished stall into events."""

    def __init__(self, stall: _Stall, others_busy: bool, wall_offset: float) -> None:
        self._stall = stall
        self._others_busy = others_busy
        self._wall_offset = wall_offset

    def events(self) -> list[BlockingEvent]:
        stall = self._stall
        threshold = stall.threshold
        events = [self._step(segment) for segment in stall.big]
        if stall.rest.time >= threshold:
            events.append(self._rest(stall.rest))

        return events

    def _detected(self, duration: float) -> float:
        detected = self._stall.detected
        return duration if detected is None else min(detected, duration)

    def _busy(self) -> tuple[tuple[ThreadShare, ...], str]:
        """The threads that starved the loop, and the fix for the busiest."""
        busy = self._stall.busy_threads()
        shares = tuple(
            ThreadShare(
                name=other.name,
                site=_summary(record) if (record := other.site()) is not None else None,
                share=share,
            )
            for other, share in busy
        )
        if not busy:
            return shares, _STARVATION_FIX

        # The busiest thread in user code: one caught in offload's own code (starting the
        # next worker thread, say) has no function to name.
        top = next((other for other, _ in busy if other.site() is not None), busy[0][0])
        record = top.site()
        return shares, busy_advice(record.frame if record else None, top.name)

    def _event(
        self,
        segment: _Segment,
        kind: BlockingKind,
        shares: Sequence[tuple[_SiteAcc, _SiteKind]] = (),
        fix: str = "",
    ) -> BlockingEvent:
        stall = self._stall
        busy_threads: tuple[ThreadShare, ...] = ()
        if kind == "starvation":
            busy_threads, fix = self._busy()
        elif kind == "saturation" and self._others_busy:
            # Too much work per turn, slowed further by other threads: name them too.
            busy_threads, busy_fix = self._busy()
            if busy_threads:
                fix = f"{fix}; other threads slowed it down: {busy_fix}"

        duration = segment.time
        cpu = segment.cpu / duration if duration > 0 else 0.0
        places = _get_places()
        site = leaf = None
        stack = _NO_STACK
        split: list[SiteShare] = []
        if shares:
            # The site is where the step spent the most time, whatever its kind.
            main = max(shares, key=lambda pair: pair[0].time)
            backend = stall.watch.name.split(" ", 1)[0]
            for acc, site_kind in shares:
                if acc.time < max(0.001, 0.01 * duration) and acc is not main[0]:
                    continue

                record = acc.stack[acc.site]
                if acc.at:  # the instruction of this line that took the most time
                    lasti = max(acc.at, key=lambda at: acc.at[at])
                    record = _FrameRec(record.frame, record.lineno, lasti)

                inner = acc.stack[acc.site + 1] if acc.site + 1 < len(acc.stack) else None
                split.append(
                    SiteShare(
                        site=_summary(record),
                        duration=acc.time,
                        share=min(acc.time / duration, 1.0) if duration > 0 else 1.0,
                        kind=site_kind,
                        fix=advice(
                            site_kind,
                            record.frame,
                            record.lineno,
                            record.lasti,
                            user=places(record.frame.f_code.co_filename) == _USER,
                            gil_free=acc.free_cpu >= acc.cpu / 2 > 0,
                            callee=inner.frame.f_code if inner is not None else None,
                            backend=backend,
                        ),
                    )
                )
                if acc is main[0]:
                    # The stack starts at the step's first frame outside the loop's own code.
                    first = 0
                    while first < acc.site and places(_filename(acc.stack[first])) == _LOOP:
                        first += 1

                    summaries = [_summary(r) for r in acc.stack[first:]]
                    stack = traceback.StackSummary.from_list(summaries)
                    site = summaries[acc.site - first]
                    leaf = summaries[-1]
                    fix = split[-1].fix

            if len(split) > _MAX_SPLIT:
                kept = sorted(split, key=lambda share: share.duration, reverse=True)[:_MAX_SPLIT]
                split = [share for share in split if share in kept]

        return BlockingEvent(
            duration=duration,
            kind=kind,
            site=site,
            leaf=leaf,
            stack=stack,
            split=tuple(split),
            fix=fix,
            threshold=stall.threshold,
            detected_after=self._detected(duration),
            cpu=cpu if stall.watch.clock is not None else None,
            loop=stall.watch.name,
            started=segment.start + self._wall_offset,
            busy_threads=busy_threads,
        )

    def _site_kind(self, acc: _SiteAcc) -> _SiteKind:
        # Time where Python ran on (the leaf moved) counts as computing, even when other
        # threads or processes kept the CPU from it.
        busy = acc.cpu + acc.starved + (acc.contended if self._others_busy else 0.0)
        return "cpu" if busy >= acc.time - busy else "blocking"

    def _step(self, segment: _Segment) -> BlockingEvent:
        duration = segment.time
        starved = segment.starved
        if starved >= duration / 2 and duration - starved < self._stall.threshold:
            # A step that would not have blocked alone: other threads kept it from running.
            return self._event(segment, "starvation", fix=_STARVATION_FIX)

        shares: list[tuple[_SiteAcc, _SiteKind]]
        shares = [(acc, self._site_kind(acc)) for acc in segment.sites.values()]
        cpu_time = sum(acc.time for acc, kind in shares if kind == "cpu")
        blocked_time = sum(acc.time for acc, kind in shares if kind == "blocking")
        kind: _SiteKind = "cpu" if cpu_time > blocked_time else "blocking"
        return self._event(segment, kind, shares)

    def _rest(self, rest: _Segment) -> BlockingEvent:
        duration = rest.time
        if rest.cpu >= min(duration / 2, self._stall.threshold):
            # The loop's own work in this turn, alone, took past the threshold (or most of
            # the time): too much work per turn, even if others slowed it down further.
            return self._event(rest, "saturation", fix=_SATURATION_FIX)

        if not self._others_busy:
            # Nobody else used the CPUs: the loop thread waited, in short blocking steps.
            shares: list[tuple[_SiteAcc, _SiteKind]]
            shares = [(acc, self._site_kind(acc)) for acc in rest.sites.values()]
            blocked = sum(
                acc.time - acc.cpu - acc.starved for acc, kind in shares if kind == "blocking"
            )
            if shares and blocked >= duration / 2:
                return self._event(rest, "blocking", shares)

        return self._event(rest, "starvation", fix=_STARVATION_FIX)


# --------------------------------------------------------------------------------------------
# The watchdog thread
# --------------------------------------------------------------------------------------------

_PAUSED_POLL: Final = 0.1


class _Watchdog:
    """A thread that watches the loops of one monitor.

    Where the kernel has timers behind file descriptors (Linux), each loop's beat re-arms its
    watch's `_alarm.Alarm` and the thread sleeps until an alarm fires, a sign that a beat is
    late, or until `wake`. Elsewhere it looks on a schedule: when the next beat is due, but
    not more often than every half threshold. Once a loop is late it samples the loop thread
    every millisecond until the loop beats again.
    """

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._threshold = monitor.threshold
        self._check_every = monitor.threshold / 2
        self._woke = 0.0
        self._hang_after = max(5.0, 10 * monitor.threshold)
        self._lock = threading.Lock()  # guards _watches, _closing, _epoll and _alarms
        # Where there are alarms, the thread sleeps in epoll on them and on a pipe that wakes
        # it; a loop's alarm joins the set without waking it (epoll allows that from any
        # thread), since waking it as a loop gets busy would cost the loop a GIL handover.
        # Elsewhere a bare lock wakes it, for half the CPU of a Condition.
        self._epoll: select.epoll | None = None
        self._pipe: tuple[int, int] | None = None
        self._alarms: dict[int, _Watch] = {}  # alarm fd -> its watch
        if _alarm.available() and hasattr(select, "epoll"):
            self._epoll = select.epoll()
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[1], False)
            os.set_blocking(self._pipe[0], False)
            self._epoll.register(self._pipe[0], select.EPOLLIN)
        self._signal = threading.Lock()
        self._signal.acquire()
        self._watches: list[_Watch] = []
        self._stalls: dict[_Watch, _Stall] = {}
        # Watches whose alarm rang a hair before their beat was late by our clock, with the
        # beat count then: the alarm rings only once, so look again on a timer.
        self._early: dict[_Watch, int] = {}
        self._woken = False  # the pipe woke the thread: drain it
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="offload.monitor", daemon=True)
        self._thread.start()

    def add(self, watch: _Watch) -> None:
        with self._lock:
            if self._closing:  # a loop started as the monitor stopped: nothing to watch
                watch.stop()
                self._drop(watch)
                return

            self._watches.append(watch)
            fd = watch.alarm.fileno() if watch.alarm is not None else -1
            if self._epoll is not None and fd >= 0:
                self._alarms[fd] = watch
                self._epoll.register(fd, select.EPOLLIN)
                return  # its alarm wakes the thread when the loop is late

        self.wake()

    def resumed(self) -> None:
        """A paused loop runs again: its alarm is armed, else look at it now."""
        if self._epoll is None:
            self.wake()

    def _drop(self, watch: _Watch) -> None:
        """Forget a watch whose loop is gone and close its alarm (under ``_lock``)."""
        self._early.pop(watch, None)
        if watch.alarm is None:
            return

        fd = watch.alarm.fileno()
        if self._alarms.pop(fd, None) is not None and self._epoll is not None:
            self._epoll.unregister(fd)
        watch.alarm.close()

    def watches(self) -> list[_Watch]:
        with self._lock:
            return list(self._watches)

    def wake(self) -> None:
        with self._lock:  # the thread closes the pipe under it: never write to a reused fd
            if self._pipe is not None:
                try:
                    os.write(self._pipe[1], b"!")
                except BlockingIOError:  # full: the thread wakes anyway
                    pass
                return

        try:
            self._signal.release()
        except RuntimeError:  # already released: the thread wakes anyway
            pass

    def close(self) -> None:
        """Finish every stall in progress, then stop the thread and wait for it."""
        with self._lock:
            self._closing = True

        self.wake()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except Exception:  # pragma: no cover - a bug; say so rather than die in silence
            _logger.exception("offload.monitor stopped watching after an internal error")
        finally:
            with self._lock:
                for watch in self._watches:
                    self._drop(watch)
                self._watches = []
                pipe, self._pipe = self._pipe, None
                if self._epoll is not None:
                    self._epoll.close()
            if pipe is not None:
                for fd in pipe:
                    os.close(fd)

    def _timeout(self, watches: list[_Watch], now: float) -> float | None:
        timeout: float | None = None
        for watch in watches:
            if watch in self._stalls:
                wait: float | None = _SAMPLE_INTERVAL
            elif watch.beats == 0:
                wait = watch.interval
            elif not watch.running():
                wait = _PAUSED_POLL
            elif watch.alarm is not None and watch.alarm.usable and self._epoll is not None:
                if self._early.get(watch) == watch.beats:
                    wait = max(watch.last_beat + watch.late - now, _SAMPLE_INTERVAL / 4)
                else:
                    wait = None  # its alarm wakes the thread when a beat is late
            else:
                # Look again when the next beat is overdue, but not more often than every
                # half threshold while the loop is well: each wake costs CPU.
                wait = max(watch.last_beat + watch.late, self._woke + self._check_every) - now

            if wait is not None and (timeout is None or wait < timeout):
                timeout = wait

        return timeout

    def _wait(self, timeout: float | None) -> list[_Watch]:
        """Sleep until ``timeout`` (seconds), `wake` or an alarm; return whose alarm rang.

        The alarms and the pipe are read later, in `_clear`: reading lets go of the GIL, and
        a loop thread that holds the GIL in a long C call would take it back and run on
        before the stall is on record.
        """
        epoll, pipe = self._epoll, self._pipe
        if epoll is None or pipe is None:
            if timeout is None:
                self._signal.acquire()
            elif timeout > 0:
                self._signal.acquire(timeout=timeout)
            return []

        # epoll rounds its timeout up to whole milliseconds
        ready = epoll.poll(-1 if timeout is None else max(timeout, 0.0))
        self._woken = False
        rang: list[_Watch] = []
        with self._lock:
            for fd, _ in ready:
                if fd == pipe[0]:
                    self._woken = True
                elif (watch := self._alarms.get(fd)) is not None:
                    rang.append(watch)
        return rang

    def _clear(self, rang: list[_Watch]) -> None:
        """Consume what woke the thread, after the stalls are on record."""
        if self._pipe is not None and self._woken:
            try:
                while os.read(self._pipe[0], 512):
                    pass
            except BlockingIOError:
                pass

        for watch in rang:
            assert watch.alarm is not None
            watch.alarm.clear()
            if watch not in self._stalls:
                # It rang, yet the beat was not late by our clock (or it beat since): the
                # alarm will not ring again until the next beat, so look again on a timer.
                # ``beats`` is read after the clear, so a beat since then re-armed it.
                self._early[watch] = watch.beats

    def _step(self) -> bool:
        rang: list[_Watch] = []
        if not self._closing:
            timeout = self._timeout(self.watches(), time.perf_counter())
            rang = self._wait(timeout)

        self._woke = time.perf_counter()
        with self._lock:
            closing = self._closing
            kept: list[_Watch] = []
            for watch in self._watches:
                if watch in self._stalls or not watch.gone():
                    kept.append(watch)
                else:
                    self._drop(watch)
            self._watches = kept
            watches = list(kept)

        for watch in watches:
            stall = self._stalls.get(watch)
            beats = watch.beats
            if stall is not None:
                if beats != stall.beats:
                    self._finish(stall, watch.last_beat, watch.last_cpu)
                elif closing or not watch.running():
                    self._finish(stall, time.perf_counter(), watch.read_cpu())
                else:
                    sample = stall.sample()
                    if not stall.hang_logged and stall.attr_t - stall.start >= self._hang_after:
                        stall.hang_logged = True
                        self._log_hang(stall, sample)

                continue

            last_beat = watch.last_beat
            if closing or beats == 0 or not watch.running():
                continue

            if self._early.get(watch, beats) != beats:
                del self._early[watch]  # it beat since: its alarm is armed again

            if time.perf_counter() - last_beat > watch.late:
                self._early.pop(watch, None)
                stall = _Stall(watch, self._threshold, beats, last_beat)
                self._stalls[watch] = stall
                stall.sample()

        self._clear([watch for watch in rang if watch in watches])
        return not closing

    def _finish(self, stall: _Stall, end: float, end_cpu: float | None) -> None:
        del self._stalls[stall.watch]
        stall.finish(end, end_cpu)
        if not stall.big and stall.rest.time < self._threshold:
            return

        builder = _Builder(stall, stall.others_busy(), time.time() - time.perf_counter())
        self._monitor._record(builder.events())

    def _log_hang(self, stall: _Stall, sample: _Sample) -> None:
        if not self._monitor.log:
            return

        where = ""
        if sample.step and sample.site >= 0:
            summaries = [_summary(record) for record in sample.frames]
            site = summaries[sample.site]
            where = (
                f" at {_where(site)}\n    {_code_text(site)}\nStack (most recent call last):\n"
                + _format_stack(traceback.StackSummary.from_list(summaries))
            )

        _logger.warning(
            "the %s has not turned for %.1f s and is still blocked%s",
            stall.watch.name,
            time.perf_counter() - stall.start,
            where,
        )


# --------------------------------------------------------------------------------------------
# Hooks that tell installed monitors about every loop that starts
# --------------------------------------------------------------------------------------------


class _TrioImportHook(importlib.abc.MetaPathFinder):
    """Patch trio's entry points as soon as trio is imported."""

    def __init__(self, on_import: Callable[[types.ModuleType], None]) -> None:
        self._on_import = on_import
        self._busy = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "trio" or self._busy:
            return None

        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False

        loader = spec.loader if spec is not None else None
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None

        exec_module = loader.exec_module
        on_import = self._on_import

        def exec_and_patch(module: types.ModuleType) -> None:
            exec_module(module)
            on_import(module)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


class _Hooks:
    """Process-wide hooks, on while any monitor is installed.

    * asyncio and uvloop call ``sys.set_asyncgen_hooks`` with the loop's own hook when a loop
      starts running, and again when it stops: the wrapper hears both, for any loop.
    * trio's ``run`` and ``start_guest_run`` take instruments: the wrapped ones add one whose
      ``before_run`` starts the heartbeat. If trio is not imported yet, an import hook wraps
      them when it is.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._monitors: list[Monitor] = []
        self._original_set_hooks: Callable[..., None] | None = None
        self._trio_originals: dict[str, Callable[..., Any]] = {}
        self._import_hook: _TrioImportHook | None = None
        self._instrument_class: type[Any] | None = None

    def monitors(self) -> list[Monitor]:
        with self._lock:
            return list(self._monitors)

    def add(self, monitor: Monitor) -> None:
        with self._lock:
            self._monitors.append(monitor)
            if len(self._monitors) == 1:
                self._enable()

    def remove(self, monitor: Monitor) -> None:
        with self._lock:
            if monitor in self._monitors:
                self._monitors.remove(monitor)
                if not self._monitors:
                    self._disable()

    def _enable(self) -> None:
        self._original_set_hooks = original = sys.set_asyncgen_hooks

        def set_asyncgen_hooks(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            firstiter = kwargs["firstiter"] if "firstiter" in kwargs else (args or [None])[0]
            owner = getattr(firstiter, "__self__", None)
            if isinstance(owner, asyncio.AbstractEventLoop):
                self._asyncio_started(owner, sys._getframe(1))
            else:
                self._asyncio_stopped()

        _wraps(set_asyncgen_hooks, original)
        sys.set_asyncgen_hooks = set_asyncgen_hooks
        if "trio" in sys.modules:
            self._patch_trio(sys.modules["trio"])
        elif importlib.util.find_spec("trio") is not None:
            self._import_hook = _TrioImportHook(self._patch_trio)
            sys.meta_path.insert(0, self._import_hook)

    def _disable(self) -> None:
        original = self._original_set_hooks
        ours = getattr(sys.set_asyncgen_hooks, "__wrapped__", None) is original
        if original is not None and ours:
            sys.set_asyncgen_hooks = original

        self._original_set_hooks = None
        if self._import_hook is not None:
            try:
                sys.meta_path.remove(self._import_hook)
            except ValueError:  # pragma: no cover - someone else removed it
                pass

            self._import_hook = None

        trio_module = sys.modules.get("trio")
        if trio_module is not None and self._trio_originals:
            lowlevel = trio_module.lowlevel
            for owner, name in ((trio_module, "run"), (lowlevel, "start_guest_run")):
                wrapped = self._trio_originals.get(name)
                if getattr(getattr(owner, name), "__wrapped__", None) is wrapped:
                    setattr(owner, name, wrapped)

        self._trio_originals.clear()

    # asyncio ---------------------------------------------------------------------------------

    def _asyncio_started(self, loop: asyncio.AbstractEventLoop, below: types.FrameType) -> None:
        for monitor in self.monitors():
            monitor._asyncio_started(loop, below)

    def _asyncio_stopped(self) -> None:
        for monitor in self.monitors():
            monitor._asyncio_stopped()

    # trio ------------------------------------------------------------------------------------

    def _patch_trio(self, trio_module: types.ModuleType) -> None:
        with self._lock:
            if not self._monitors or self._trio_originals:
                return

            instrument = self._trio_instrument()
            lowlevel = trio_module.lowlevel
            for owner, name in ((trio_module, "run"), (lowlevel, "start_guest_run")):
                original = getattr(owner, name)
                self._trio_originals[name] = original
                setattr(owner, name, _with_instrument(original, instrument))

    def _trio_instrument(self) -> object:
        import trio

        hooks = self

        class _Instrument(trio.abc.Instrument):
            def before_run(self) -> None:
                hooks._trio_started(sys._getframe(1))

            def after_run(self) -> None:
                hooks._trio_ended()

        return _Instrument()

    def _trio_started(self, below: types.FrameType) -> None:
        for monitor in self.monitors():
            monitor._trio_started(below)

    def _trio_ended(self) -> None:
        for monitor in self.monitors():
            monitor._trio_ended()


def _wraps(wrapper: Callable[..., Any], wrapped: Callable[..., Any]) -> None:
    """Mark ``wrapper`` as a stand-in for ``wrapped`` (as functools.wraps, for builtins too)."""
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        value = getattr(wrapped, name, None)
        if value is not None:
            setattr(wrapper, name, value)

    wrapper.__wrapped__ = wrapped  # type: ignore[attr-defined]


def _with_instrument(original: Callable[..., Any], instrument: object) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = (*kwargs.get("instruments", ()), instrument)
        return original(*args, **kwargs)

    _wraps(run, original)
    return run


_HOOKS: Final = _Hooks()


# --------------------------------------------------------------------------------------------
# Monitor
# --------------------------------------------------------------------------------------------


class _State(enum.Enum):
    IDLE = "idle"
    WATCHING = "watching the loop it was entered in"
    INSTALLED = "installed"


@dataclass(slots=True)
class _RowAcc:
    site: traceback.FrameSummary | None
    fix: str
    count: int = 0
    total: float = 0.0
    longest: float = 0.0
    by_kind: dict[BlockingKind, float] = field(default_factory=dict[BlockingKind, float])
    # Busy threads by site: (name, site) of the busiest, and their seconds on a CPU.
    busy: dict[object, tuple[ThreadShare, float, set[str]]] = field(
        default_factory=dict[object, Any]
    )

    def add(self, kind: BlockingKind, duration: float, fix: str) -> None:
        self.count += 1
        self.total += duration
        if duration >= self.longest:  # the longest event's fix speaks for the row
            self.longest = duration
            self.fix = fix

        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + duration

    def add_busy(self, event: BlockingEvent) -> None:
        for busy in event.busy_threads:
            site = busy.site
            key = (site.filename, site.lineno, site.name) if site is not None else busy.name
            _, seconds, names = self.busy.get(key, (busy, 0.0, set[str]()))
            names.add(busy.name)
            self.busy[key] = (busy, seconds + busy.share * event.duration, names)

    def busy_threads(self) -> tuple[ThreadShare, ...]:
        shares = [
            ThreadShare(
                name=busy.name if len(names) == 1 else f"{len(names)} threads",
                site=busy.site,
                share=min(seconds / self.total, 1.0),
            )
            for busy, seconds, names in self.busy.values()
            if self.total > 0
        ]
        shares.sort(key=lambda busy: busy.share, reverse=True)
        return tuple(shares[:_MAX_SPLIT])


class Monitor:
    """Watch event loops for blocking, and say where and why it happened.

    Create one with `offload.monitor() <monitor>`, then:

    * ``with monitor:`` or ``async with monitor:`` inside a running loop watches that loop
      until the block ends;
    * ``with monitor:`` outside any loop watches every loop that runs inside the block;
    * ``offload.monitor.install()`` returns a monitor that watches every loop that runs
      afterwards, in any thread, until `uninstall`.

    Every stall past the threshold becomes a `BlockingEvent` in `events`, and a warning on the
    ``offload`` logger (unless ``log=False``). `report` sums them up by site.

    Args:
        threshold: report the loop when it does not turn for longer than this, in seconds.
        log: log a warning on the ``offload`` logger for each event.

    Raises:
        ValueError: ``threshold`` is not positive.

    **Cost**: a timer every quarter threshold on the loop (half on trio), and one thread per
    monitor that sleeps while the loop beats on time (on Linux; elsewhere it looks every half
    threshold): under 1% of a core for an idle loop at the default threshold, and under 2% of
    a busy loop's throughput (see ``benchmarks/monitor.py``).
    """

    def __init__(self, threshold: float = 0.1, *, log: bool = True) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be a positive number of seconds, not {threshold!r}")

        self._threshold = float(threshold)
        self._log = log
        self._lock = threading.Lock()
        self._events: deque[BlockingEvent] = deque(maxlen=_MAX_EVENTS)
        self._count = 0
        self._rows: dict[object, _RowAcc] = {}
        self._state = _State.IDLE
        self._scoped = False
        self._watchdog: _Watchdog | None = None
        self._watch: _Watch | None = None

    def __repr__(self) -> str:
        return (
            f"<offload.Monitor threshold={self._threshold:g} {self._state.value}, "
            f"{self._count} events>"
        )

    @property
    def threshold(self) -> float:
        """Seconds the loop may go without turning before it counts as blocked."""
        return self._threshold

    @property
    def log(self) -> bool:
        """Whether each event is logged as a warning on the ``offload`` logger."""
        return self._log

    @property
    def events(self) -> list[BlockingEvent]:
        """The events recorded so far, oldest first (the latest 10,000)."""
        with self._lock:
            return list(self._events)

    def report(self) -> Report:
        """Sum the events up by site: count, total and longest time, kind, and a fix.

        ``print(monitor.report())`` shows it as a table.
        """
        with self._lock:
            rows = [
                ReportRow(
                    kind=max(acc.by_kind, key=lambda kind: acc.by_kind[kind]),
                    site=acc.site,
                    count=acc.count,
                    total=acc.total,
                    max=acc.longest,
                    fix=acc.fix,
                    busy_threads=acc.busy_threads(),
                )
                for acc in self._rows.values()
            ]
            count = self._count

        rows.sort(key=lambda row: row.total, reverse=True)
        return Report(threshold=self._threshold, events=count, rows=tuple(rows))

    # Context manager -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        machinery = _task_machinery()
        with self._lock:
            self._check_idle()
            self._state = _State.WATCHING if machinery is not None else _State.INSTALLED
            self._scoped = machinery is None

        if machinery is None:
            self._start_installed()
            return self

        backend, below, known = machinery
        self._watchdog = _Watchdog(self)
        if backend == "asyncio":
            loop = asyncio.get_running_loop()
            watch: _Watch = self._attach_asyncio(loop, below, known)
        else:
            watch = self._attach_trio(below, known)

        self._watch = watch
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback_: types.TracebackType | None,
    ) -> None:
        if self._state is _State.INSTALLED and self._scoped:
            self.uninstall()
            return

        if self._state is not _State.WATCHING:
            raise RuntimeError(f"this monitor is {self._state.value}, not in a with block")

        watch, watchdog = self._watch, self._watchdog
        self._watch = self._watchdog = None
        if watch is not None:
            watch.stop()

        if watchdog is not None:
            watchdog.close()

        with self._lock:
            self._state = _State.IDLE

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback_: types.TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc_value, traceback_)

    def _check_idle(self) -> None:
        if self._state is not _State.IDLE:
            raise RuntimeError(
                f"this monitor is already {self._state.value}; create another with "
                f"offload.monitor() to watch twice"
            )

    # Install ---------------------------------------------------------------------------------

    def _install(self) -> None:
        with self._lock:
            self._check_idle()
            self._state = _State.INSTALLED
            self._scoped = False

        self._start_installed()

    def _start_installed(self) -> None:
        self._watchdog = _Watchdog(self)
        _HOOKS.add(self)
        machinery = _task_machinery()
        if machinery is not None:
            backend, below, known = machinery
            if backend == "asyncio":
                self._asyncio_started(asyncio.get_running_loop(), below, known)
            else:
                self._attach_trio(below, known)

    def uninstall(self) -> None:
        """Stop watching, from any thread; waits for the watchdog thread to end.

        Does nothing if the monitor is not installed.

        Raises:
            RuntimeError: the monitor is in a ``with`` block, which ends its watching.
        """
        with self._lock:
            if self._state is _State.WATCHING:
                raise RuntimeError(
                    "this monitor watches the loop of its with block; it stops when the block ends"
                )

            if self._state is not _State.INSTALLED:
                return

        _HOOKS.remove(self)
        watchdog = self._watchdog
        self._watchdog = None
        if watchdog is not None:
            for watch in watchdog.watches():
                watch.stop()

            watchdog.close()

        with self._lock:
            self._state = _State.IDLE
            self._scoped = False

    # Attaching to loops ----------------------------------------------------------------------

    def _attach_asyncio(
        self, loop: asyncio.AbstractEventLoop, below: types.FrameType | None, known: bool
    ) -> _AsyncioWatch:
        interval = _heartbeat_interval(self._threshold, "asyncio")
        watch = _AsyncioWatch(loop, interval, interval + self._threshold / 5)
        watch.start(below, known)
        assert self._watchdog is not None
        self._watchdog.add(watch)
        return watch

    def _attach_trio(self, below: types.FrameType | None, known: bool) -> _TrioWatch:
        interval = _heartbeat_interval(self._threshold, "trio")
        watch = _TrioWatch(interval, interval + self._threshold / 5)
        watch.start(below, known)
        assert self._watchdog is not None
        self._watchdog.add(watch)
        return watch

    def _asyncio_watch(self, loop: asyncio.AbstractEventLoop | None) -> _AsyncioWatch | None:
        watchdog = self._watchdog
        if watchdog is None:
            return None

        thread_id = threading.get_ident()
        for watch in watchdog.watches():
            if (
                isinstance(watch, _AsyncioWatch)
                and not watch.gone()
                and (watch.loop() is loop or (loop is None and watch.thread_id == thread_id))
            ):
                return watch

        return None

    def _asyncio_started(
        self,
        loop: asyncio.AbstractEventLoop,
        below: types.FrameType | None = None,
        known: bool = False,
    ) -> None:
        """A loop starts running in this thread (installed monitors only)."""
        watchdog = self._watchdog
        if watchdog is None:
            return

        watch = self._asyncio_watch(loop)
        if watch is None:
            self._attach_asyncio(loop, below, known)
        elif watch.paused:
            watch.resume()
            watchdog.resumed()

    def _asyncio_stopped(self) -> None:
        """The asyncio loop of this thread, if any, stopped running (installed monitors only)."""
        watch = self._asyncio_watch(None)
        if watch is not None:
            loop = watch.loop()
            if loop is None or not loop.is_running():
                watch.pause()

    def _trio_started(self, below: types.FrameType) -> None:
        """A trio run starts in this thread, before its first task (installed monitors only)."""
        if self._watchdog is not None:
            self._attach_trio(below, known=False)

    def _trio_ended(self) -> None:
        """The trio run of this thread ended (installed monitors only)."""
        watchdog = self._watchdog
        if watchdog is not None:
            for watch in watchdog.watches():
                if isinstance(watch, _TrioWatch) and watch.on_loop_thread() and not watch.gone():
                    watch.ended()

    # Events ----------------------------------------------------------------------------------

    def _record(self, events: list[BlockingEvent]) -> None:
        with self._lock:
            for event in events:
                self._events.append(event)
                self._count += 1
                if event.split:
                    for share in event.split:
                        key = (share.site.filename, share.site.lineno, share.site.name)
                        acc = self._rows.get(key)
                        if acc is None:
                            acc = self._rows[key] = _RowAcc(share.site, share.fix)

                        acc.add(share.kind, share.duration, share.fix)
                else:
                    acc = self._rows.get(event.kind)
                    if acc is None:
                        acc = self._rows[event.kind] = _RowAcc(event.site, event.fix)

                    acc.add(event.kind, event.duration, event.fix)
                    acc.add_busy(event)

        if self._log:
            for event in events:
                _logger.warning("%s", event)


class _MonitorFactory:
    """``offload.monitor``: create a `Monitor`, or install one for every loop.

    * ``offload.monitor(threshold=0.1)`` returns a `Monitor` to use as ``with`` or
      ``async with``;
    * ``offload.monitor.install(threshold=0.1)`` returns a `Monitor` already watching every
      event loop that runs afterwards, until its `~Monitor.uninstall`.
    """

    __slots__ = ()

    def __call__(self, threshold: float = 0.1, *, log: bool = True) -> Monitor:
        """Return a `Monitor` that reports the loop when it does not turn for ``threshold`` s.

        Args:
            threshold: seconds the loop may go without turning before it counts as blocked.
            log: log a warning on the ``offload`` logger for each event.
        """
        return Monitor(threshold, log=log)

    def install(self, threshold: float = 0.1, *, log: bool = True) -> Monitor:
        """Watch every event loop that runs from now on, in any thread, until ``uninstall()``.

        Called inside a running loop, it watches that loop too. Loops already running in
        other threads are watched from their next start.

        Args:
            threshold: seconds the loop may go without turning before it counts as blocked.
            log: log a warning on the ``offload`` logger for each event.
        """
        monitor = Monitor(threshold, log=log)
        monitor._install()
        return monitor

    def __repr__(self) -> str:
        return "offload.monitor"


monitor: Final = _MonitorFactory()
"""Create a `Monitor` (``offload.monitor(threshold=0.1)``), or install one for every loop
(``offload.monitor.install(threshold=0.1)``)."""
