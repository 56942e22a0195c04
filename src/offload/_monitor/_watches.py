"""The loop side: a heartbeat per watched loop (asyncio and uvloop timers, a trio system task)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types
import weakref
from typing import TYPE_CHECKING

from ._alarm import AnyAlarm
from ._clocks import thread_clock

if TYPE_CHECKING:
    import trio

__all__ = ("AsyncioWatch", "TrioWatch", "Watch", "heartbeat_interval", "task_machinery")


def heartbeat_interval(threshold: float, backend: str) -> float:
    """How often the loop beats: each beat wakes an idle loop, which costs CPU.

    A wake costs an asyncio loop about half what it costs trio's, so asyncio beats every
    quarter threshold and trio every half: either way an idle loop spends under 1% of a core
    on it at the default threshold. A stall is timed to within half an interval (a CPU-bound
    one closer, see ``Stall._begin``).
    """
    fraction = 2 if backend == "trio" else 4
    return min(max(threshold / fraction, 0.002), 0.25)


class Watch:
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

    def __init__(self, kind: str, interval: float, late: float, alarm: AnyAlarm) -> None:
        self.thread_id = threading.get_ident()
        self.native_id = threading.get_native_id()
        self.clock = thread_clock(self.thread_id)
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
        # Rings when the next beat is overdue (see ``_alarm``); the watchdog closes it.
        self.alarm = alarm

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
        self.alarm.disarm()

    def resume(self) -> None:
        """The loop runs again."""
        self.paused = False
        self._mark(self.cpu_here())
        self.alarm.arm(self.late)

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    def stop(self) -> None:
        """Stop beating; ends a stall in progress now."""
        self.stopped = True
        self._mark(self.cpu_here() if self.on_loop_thread() else self.read_cpu())
        self.alarm.disarm()

    def running(self) -> bool:
        raise NotImplementedError

    def gone(self) -> bool:
        raise NotImplementedError


class AsyncioWatch(Watch):
    """A heartbeat on an asyncio (or uvloop) loop: a timer callback that re-arms itself.

    A timer, unlike a task, is invisible to ``asyncio.all_tasks()`` and leaves nothing to
    cancel when the loop closes.
    """

    __slots__ = ("_handle", "_loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float, late: float, alarm: AnyAlarm
    ) -> None:
        module = type(loop).__module__.split(".", 1)[0]
        super().__init__("uvloop" if module == "uvloop" else "asyncio", interval, late, alarm)
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


class TrioWatch(Watch):
    """A heartbeat on a trio run: a system task, which the run cancels when it ends.

    A run's watch starts before its first task (an instrument's ``before_run``), so the
    tasks a program starts at launch are watched from their first step; the heartbeat task
    joins as soon as the run can take system tasks.
    """

    __slots__ = ("_ended", "_scope", "_token")

    def __init__(self, interval: float, late: float, alarm: AnyAlarm) -> None:
        import trio

        super().__init__("trio", interval, late, alarm)
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


def task_machinery() -> tuple[str, types.FrameType | None, bool] | None:
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
