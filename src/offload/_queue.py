"""Mechanism: the first-in, first-out queue of calls waiting for a worker, and its bound.

Every worker kind keeps its waiting calls here: the threads of a thread pool, those of a
process pool (each owning a process), and any kind to come (an executor behind a pool). The
queue knows the capacity (``max_workers``) and how many workers run a call (``busy``), so
it alone says how many calls *wait*, and it alone applies ``max_pending``: the one rule of
the pending bound.

The worker kind that owns a queue holds :attr:`JobQueue.lock` while it changes ``jobs`` or
``busy`` (it may do more under the same lock, such as waking a thread).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._job import Job

__all__ = ("JobQueue",)


class JobQueue:
    """The calls waiting for a worker of one pool in one event loop, first in, first out."""

    __slots__ = ("busy", "capacity", "jobs", "lock")

    def __init__(self, capacity: int) -> None:
        self.lock = threading.Lock()
        self.jobs: deque[Job] = deque()
        self.capacity = capacity  # max_workers
        self.busy = 0  # workers running a call (abandoned ones included)

    @property
    def pending(self) -> int:
        """How many queued calls wait for a worker: those beyond the free capacity
        (``capacity`` less the workers running a call), however workers are being woken or
        started to take the rest."""
        return max(0, len(self.jobs) - max(0, self.capacity - self.busy))

    def refuses(self, max_pending: int | None, elsewhere: int, joining: bool) -> bool:
        """The pending bound: whether a call that would wait finds ``max_pending`` calls
        waiting already (call it under :attr:`lock` when ``joining``).

        Args:
            max_pending: the bound; None for none.
            elsewhere: calls of the pool waiting outside this queue (for a function's
                ``limit``): they count too.
            joining: the call joins this queue now; False for a call about to wait for a
                function's ``limit``, which waits whatever this queue holds.
        """
        if max_pending is None:
            return False

        if joining:
            # Every queued call not yet taken counts against the free capacity, so a burst
            # on a warm pool is bounded as one on a cold pool, whatever workers are idle,
            # waking or starting.
            return len(self.jobs) >= self.capacity - self.busy + max_pending - elsewhere

        return elsewhere + self.pending >= max_pending

    def withdraw(self, job: Job) -> bool:
        """Take ``job`` back if no worker has started it; return whether it was."""
        with self.lock:
            try:
                self.jobs.remove(job)
            except ValueError:
                return False

            return True

    def withdraw_all(self) -> list[Job]:
        """Take back every call no worker has started (the pool is closing)."""
        with self.lock:
            jobs = list(self.jobs)
            self.jobs.clear()
            return jobs
