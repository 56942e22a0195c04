"""A one-shot kernel timer that one thread re-arms and another waits on (Linux ``timerfd``).

The monitor's watchdog must notice within a threshold when a loop stops beating. Waking the
watchdog thread on a schedule to look costs a busy loop dearly: every wake makes the loop
thread hand over the GIL, and the handover drags on for milliseconds while the loop keeps
taking the GIL back between steps (about 18% of an asyncio loop's throughput at 20 wakes a
second on a 2-core machine). With an alarm, each beat pushes the deadline back from the loop
thread, with one system call and no other thread involved, and the watchdog sleeps in the
kernel until a beat is late. A healthy loop never wakes it.

Where the kernel has no timerfd (macOS, Windows), `new_alarm` returns ``None`` and the
watchdog falls back to looking on a schedule.

Which way the watchdog sleeps is chosen once, here, at import, as trio picks its I/O manager:
`TheWaiter` is `EpollWaiter` (epoll on the alarms and on a wake-up pipe) where there are
timerfds, else `ScheduleWaiter` (a bare lock, and `NoAlarm` for every loop). Both have the
`Waiter` interface, so the watchdog has no platform branches.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol, TypeAlias

__all__ = (
    "Alarm",
    "AnyAlarm",
    "EpollWaiter",
    "NoAlarm",
    "ScheduleWaiter",
    "TheWaiter",
    "Waiter",
    "available",
    "new_alarm",
)

_TFD_NONBLOCK: Final = 0o4000  # O_NONBLOCK
_TFD_CLOEXEC: Final = 0o2000000  # O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _libc_timerfd() -> tuple[Callable[[], int], Callable[[int, float], None]] | None:
    """``timerfd_create`` and ``timerfd_settime`` through ctypes (Python < 3.13)."""
    try:
        # PyDLL keeps the GIL through the call: the call is quick and never blocks, and
        # letting go of the GIL on every beat would invite the handovers this module avoids.
        libc = ctypes.PyDLL(None, use_errno=True)
        create = libc.timerfd_create
        settime = libc.timerfd_settime
    except (OSError, AttributeError):
        return None

    create.argtypes = (ctypes.c_int, ctypes.c_int)
    create.restype = ctypes.c_int
    settime.argtypes = (
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(_Itimerspec),
        ctypes.POINTER(_Itimerspec),
    )
    settime.restype = ctypes.c_int

    def timerfd_create() -> int:
        fd: int = create(time.CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))
        return fd

    def timerfd_settime(fd: int, delay: float) -> None:
        # A structure per call: loops in several threads arm their alarms at once.
        seconds = int(delay)
        spec = _Itimerspec(it_value=_Timespec(seconds, int((delay - seconds) * 1e9)))
        if settime(fd, 0, ctypes.byref(spec), None) < 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))

    return timerfd_create, timerfd_settime


def _os_timerfd() -> tuple[Callable[[], int], Callable[[int, float], None]] | None:
    """``os.timerfd_create`` and ``os.timerfd_settime`` (Python 3.13+ on Linux)."""
    create = getattr(os, "timerfd_create", None)
    settime = getattr(os, "timerfd_settime", None)
    if create is None or settime is None:
        return None

    flags = os.TFD_NONBLOCK | os.TFD_CLOEXEC  # type: ignore[attr-defined,unused-ignore]

    def timerfd_create() -> int:
        fd: int = create(time.CLOCK_MONOTONIC, flags=flags)
        return fd

    def timerfd_settime(fd: int, delay: float) -> None:
        settime(fd, initial=delay)

    return timerfd_create, timerfd_settime


def _find_timerfd() -> tuple[Callable[[], int], Callable[[int, float], None]] | None:
    if not sys.platform.startswith("linux"):
        return None

    found = _os_timerfd() or _libc_timerfd()
    if found is None:
        return None

    try:  # the kernel may still refuse (seccomp, very old kernels)
        os.close(found[0]())
    except OSError:
        return None

    return found


_timerfd: tuple[Callable[[], int], Callable[[int, float], None]] | None = None
_looked = False
_looking = threading.Lock()


class Alarm:
    """A one-shot timer behind a file descriptor that turns readable when the timer fires.

    `arm` and `disarm` may be called from any thread, also after `close` (they do nothing
    then): the descriptor number is never used once closed, so it cannot hit a file that
    later took the same number.
    """

    __slots__ = ("_failed", "_fd", "_lock", "_settime")

    def __init__(self, fd: int, settime: Callable[[int, float], None]) -> None:
        self._fd = fd
        self._settime = settime
        self._lock = threading.Lock()
        self._failed = False

    def fileno(self) -> int:
        """The descriptor to wait on; -1 once closed."""
        return self._fd

    @property
    def usable(self) -> bool:
        """Open, and never refused by the kernel: a waiter may rely on it to fire."""
        return self._fd >= 0 and not self._failed

    def arm(self, delay: float) -> None:
        """Fire in ``delay`` seconds (``delay`` > 0), replacing any earlier setting."""
        self._set(delay)

    def disarm(self) -> None:
        """Do not fire until armed again."""
        self._set(0.0)

    def _set(self, delay: float) -> None:
        # Called from the loop's beat: an error here must not reach the loop (on trio it
        # would crash the run). A refused setting makes the alarm unusable instead, and the
        # watchdog goes back to looking on a schedule.
        with self._lock:
            if self._fd >= 0 and not self._failed:
                try:
                    self._settime(self._fd, delay)
                except OSError:
                    self._failed = True

    def clear(self) -> bool:
        """Consume a firing, so the descriptor is no longer readable; says whether it fired."""
        with self._lock:
            if self._fd < 0:
                return False
            try:
                os.read(self._fd, 8)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return False
                raise
            return True

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)

    def __del__(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:  # never closed: its watch was dropped before the watchdog saw it
            try:
                os.close(fd)
            except OSError:  # pragma: no cover - nothing to do about it in a finalizer
                pass


def _timerfd_functions() -> tuple[Callable[[], int], Callable[[int, float], None]] | None:
    global _timerfd, _looked
    if not _looked:
        with _looking:
            if not _looked:
                _timerfd = _find_timerfd()
                _looked = True

    return _timerfd


def available() -> bool:
    """Whether `new_alarm` can make alarms here (it still may not, out of descriptors)."""
    return _timerfd_functions() is not None


def new_alarm() -> Alarm | None:
    """A new disarmed `Alarm`, or ``None`` where the kernel has no timerfd."""
    functions = _timerfd_functions()
    if functions is None:
        return None

    create, settime = functions
    try:
        fd = create()
    except OSError:  # out of descriptors: watch on a schedule instead
        return None

    return Alarm(fd, settime)


class NoAlarm:
    """The alarm of a loop where there is no timerfd: it never rings, so it is never usable."""

    __slots__ = ()

    def fileno(self) -> int:
        return -1

    @property
    def usable(self) -> bool:
        return False

    def arm(self, delay: float) -> None:
        pass

    def disarm(self) -> None:
        pass

    def clear(self) -> bool:
        return False

    def close(self) -> None:
        pass


AnyAlarm: TypeAlias = "Alarm | NoAlarm"


class Waiter(Protocol):
    """Where the watchdog thread sleeps: until a timeout, an alarm rings, or `wake`.

    A loop's alarm is `add`-ed from the loop's thread; `wait`, `drain` and `close` are called
    from the watchdog thread only, and `wake` from any thread.
    """

    def new_alarm(self) -> AnyAlarm:
        """A new disarmed alarm for one loop."""
        ...

    def add(self, alarm: AnyAlarm) -> bool:
        """Wake the sleeper when ``alarm`` rings; ``False`` if it never will (look on a timer)."""
        ...

    def remove(self, alarm: AnyAlarm) -> None:
        """Stop listening to ``alarm`` (the caller closes it)."""
        ...

    def wait(self, timeout: float | None) -> tuple[list[AnyAlarm], bool]:
        """Sleep until ``timeout`` (seconds; ``None``: no timeout), an alarm rings, or `wake`.

        Returns the alarms that rang, and whether `wake` woke it. Consumes neither: see `drain`
        and `Alarm.clear`.
        """
        ...

    def drain(self) -> None:
        """Consume the `wake` that the last `wait` saw."""
        ...

    def wake(self) -> None:
        """Wake the sleeper now (from any thread); does nothing once closed."""
        ...

    def close(self) -> None:
        """Let go of the waiter's descriptors."""
        ...


class EpollWaiter:
    """Sleep in epoll on the loops' alarms and on a pipe that `wake` writes to (Linux).

    An alarm joins the set without waking the sleeper (epoll allows that from any thread):
    waking it as a loop gets busy would cost the loop a GIL handover.
    """

    __slots__ = ("_alarms", "_epoll", "_lock", "_pipe", "_woken")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _alarms, and _pipe and _epoll against close
        self._alarms: dict[int, AnyAlarm] = {}  # by descriptor
        self._woken = False
        self._epoll: select.epoll | None = select.epoll()
        pipe = os.pipe()
        os.set_blocking(pipe[1], False)
        os.set_blocking(pipe[0], False)
        self._epoll.register(pipe[0], select.EPOLLIN)
        self._pipe: tuple[int, int] | None = pipe

    def new_alarm(self) -> AnyAlarm:
        return new_alarm() or NoAlarm()  # out of descriptors: that loop is watched on a schedule

    def add(self, alarm: AnyAlarm) -> bool:
        fd = alarm.fileno()
        with self._lock:
            if fd < 0 or self._epoll is None:
                return False

            self._alarms[fd] = alarm
            self._epoll.register(fd, select.EPOLLIN)
            return True

    def remove(self, alarm: AnyAlarm) -> None:
        fd = alarm.fileno()
        with self._lock:
            if self._alarms.pop(fd, None) is not None and self._epoll is not None:
                self._epoll.unregister(fd)

    def wait(self, timeout: float | None) -> tuple[list[AnyAlarm], bool]:
        # The alarms and the pipe are read later: reading lets go of the GIL, and a loop
        # thread that holds the GIL in a long C call would take it back and run on before
        # the stall is on record.
        epoll, pipe = self._epoll, self._pipe
        assert epoll is not None, "waiting after close"
        assert pipe is not None, "waiting after close"
        # epoll rounds its timeout up to whole milliseconds
        ready = epoll.poll(-1 if timeout is None else max(timeout, 0.0))
        woken = False
        rang: list[AnyAlarm] = []
        with self._lock:
            for fd, _ in ready:
                if fd == pipe[0]:
                    woken = True
                elif (alarm := self._alarms.get(fd)) is not None:
                    rang.append(alarm)
        self._woken = woken
        return rang, woken

    def drain(self) -> None:
        if self._pipe is not None and self._woken:
            try:
                while os.read(self._pipe[0], 512):
                    pass
            except BlockingIOError:
                pass

    def wake(self) -> None:
        with self._lock:  # `close` closes the pipe under it: never write to a reused fd
            if self._pipe is not None:
                try:
                    os.write(self._pipe[1], b"!")
                except BlockingIOError:  # full: the thread wakes anyway
                    pass

    def close(self) -> None:
        with self._lock:
            pipe, self._pipe = self._pipe, None
            epoll, self._epoll = self._epoll, None
            self._alarms.clear()
            if epoll is not None:
                epoll.close()
        if pipe is not None:
            for fd in pipe:
                os.close(fd)


class ScheduleWaiter:
    """Sleep on a bare lock that `wake` releases, for half the CPU of a Condition.

    Its alarms never ring, so the watchdog looks on a schedule (macOS, Windows).
    """

    __slots__ = ("_signal",)

    def __init__(self) -> None:
        self._signal = threading.Lock()
        self._signal.acquire()

    def new_alarm(self) -> AnyAlarm:
        return NoAlarm()

    def add(self, alarm: AnyAlarm) -> bool:
        return False

    def remove(self, alarm: AnyAlarm) -> None:
        pass

    def wait(self, timeout: float | None) -> tuple[list[AnyAlarm], bool]:
        if timeout is None:
            return [], self._signal.acquire()

        if timeout > 0:
            return [], self._signal.acquire(timeout=timeout)

        return [], False

    def drain(self) -> None:
        pass

    def wake(self) -> None:
        try:
            self._signal.release()
        except RuntimeError:  # already released: the thread wakes anyway
            pass

    def close(self) -> None:
        pass


TheWaiter: type[Waiter] = (
    EpollWaiter if available() and hasattr(select, "epoll") else ScheduleWaiter
)
"""How the watchdog sleeps on this platform, chosen once, at import."""
