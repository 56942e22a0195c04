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
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ("Alarm", "available", "new_alarm")

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
