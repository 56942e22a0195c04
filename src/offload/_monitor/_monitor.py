"""`Monitor` and ``offload.monitor``: what a user creates, enters, installs and reads."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import types
from collections import deque
from typing import Final

from typing_extensions import Self

from ._events import BlockingEvent
from ._hooks import HOOKS
from ._report import Report, ReportRow, RowTotals
from ._watchdog import Watchdog
from ._watches import AsyncioWatch, TrioWatch, Watch, heartbeat_interval, task_machinery

__all__ = ("Monitor", "monitor")

_logger = logging.getLogger("offload")

_MAX_EVENTS: Final = 10_000


class _State(enum.Enum):
    IDLE = "idle"
    WATCHING = "watching the loop it was entered in"
    INSTALLED = "installed"


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
        self._rows: dict[object, RowTotals] = {}
        self._state = _State.IDLE
        self._scoped = False
        self._watchdog: Watchdog | None = None
        self._watch: Watch | None = None

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
        machinery = task_machinery()
        with self._lock:
            self._check_idle()
            self._state = _State.WATCHING if machinery is not None else _State.INSTALLED
            self._scoped = machinery is None

        if machinery is None:
            self._start_installed()
            return self

        backend, below, known = machinery
        self._watchdog = self._new_watchdog()
        if backend == "asyncio":
            loop = asyncio.get_running_loop()
            watch: Watch = self._attach_asyncio(loop, below, known)
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

    def _new_watchdog(self) -> Watchdog:
        return Watchdog(self._threshold, self._record, self._log_hang if self._log else None)

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
        self._watchdog = self._new_watchdog()
        HOOKS.add(self)
        machinery = task_machinery()
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

        HOOKS.remove(self)
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
    ) -> AsyncioWatch:
        watchdog = self._watchdog
        assert watchdog is not None
        interval = heartbeat_interval(self._threshold, "asyncio")
        watch = AsyncioWatch(loop, interval, interval + self._threshold / 5, watchdog.new_alarm())
        watch.start(below, known)
        watchdog.add(watch)
        return watch

    def _attach_trio(self, below: types.FrameType | None, known: bool) -> TrioWatch:
        watchdog = self._watchdog
        assert watchdog is not None
        interval = heartbeat_interval(self._threshold, "trio")
        watch = TrioWatch(interval, interval + self._threshold / 5, watchdog.new_alarm())
        watch.start(below, known)
        watchdog.add(watch)
        return watch

    def _asyncio_watch(self, loop: asyncio.AbstractEventLoop | None) -> AsyncioWatch | None:
        watchdog = self._watchdog
        if watchdog is None:
            return None

        thread_id = threading.get_ident()
        for watch in watchdog.watches():
            if (
                isinstance(watch, AsyncioWatch)
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
            watchdog.resumed(watch)

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
                if isinstance(watch, TrioWatch) and watch.on_loop_thread() and not watch.gone():
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
                            acc = self._rows[key] = RowTotals(share.site, share.fix)

                        acc.add(share.kind, share.duration, share.fix)
                else:
                    acc = self._rows.get(event.kind)
                    if acc is None:
                        acc = self._rows[event.kind] = RowTotals(event.site, event.fix)

                    acc.add(event.kind, event.duration, event.fix)
                    acc.add_busy(event)

        if self._log:
            for event in events:
                _logger.warning("%s", event)

    def _log_hang(self, loop: str, seconds: float, where: str) -> None:
        _logger.warning(
            "the %s has not turned for %.1f s and is still blocked%s", loop, seconds, where
        )


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
