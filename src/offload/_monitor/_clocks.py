"""CPU clocks of threads and of the machine, readable from the watchdog thread."""

from __future__ import annotations

import sys
import time

__all__ = ("native_thread_clock", "runnable_now", "system_cpu", "thread_clock")


def thread_clock(thread_id: int) -> int | None:
    """Return the CPU clock of a thread, readable from any thread, where the platform has one."""
    if sys.platform == "win32" or not hasattr(time, "pthread_getcpuclockid"):
        return None  # pragma: no cover - Linux has it

    try:
        clock = time.pthread_getcpuclockid(thread_id)
        time.clock_gettime(clock)
    except (OSError, OverflowError):  # pragma: no cover - a platform that lies about it
        return None

    return clock


def native_thread_clock(native_id: int | None) -> int | None:
    """Return the CPU clock of a thread of this process by its kernel id, on Linux.

    Safe for a thread that may exit at any moment: the clock is made from the id as Linux
    makes it (``MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)``), and reading the clock of a
    thread that has exited fails with ``EINVAL``. ``pthread_getcpuclockid`` on such a thread
    reads freed memory, and crashed the process.
    """
    if native_id is None or not sys.platform.startswith("linux"):
        return None

    clock = ((~native_id) << 3) | 6
    try:
        time.clock_gettime(clock)
    except OSError:  # it has exited already
        return None

    return clock


def system_cpu() -> tuple[int, int] | None:
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


def runnable_now(native_id: int) -> bool | None:
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
