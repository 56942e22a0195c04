"""Policy: a function's ``limit``, a first-come, first-served limiter owned by one event loop.

(The pool's own capacity is its worker count, in the mechanism; see ``_threads.py``.)

A slot is taken by the caller's task and given back by the loop when the *worker* is done
with the call, not when the caller stops waiting: a thread whose awaiter was cancelled still
runs, so it still holds its slot. That is what makes capacity honest.

A freed slot is handed straight to the first waiter (no barging), so waiters are served in
the order they came.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ._backends import Waiter

__all__ = ("Limiter",)


class Limiter:
    """Count slots up to ``total``; queue the tasks that want one when none is free."""

    __slots__ = ("_new_waiter", "_waiters", "borrowed", "total")

    def __init__(self, total: int, new_waiter: Callable[[], Waiter]) -> None:
        self.total = total
        self.borrowed = 0
        self._new_waiter = new_waiter
        self._waiters: deque[Waiter] = deque()

    def free(self) -> bool:
        """Return whether a slot can be taken now without jumping the queue."""
        return self.borrowed < self.total and not self._waiters

    def take(self) -> None:
        """Take a slot that :meth:`free` said is there."""
        self.borrowed += 1

    async def acquire(self, closed: Callable[[], BaseException]) -> None:
        """Wait for a slot, first come, first served.

        Raises:
            BaseException: ``closed()``, when :meth:`close_waiters` ends the wait.

        **Cancellation**: a waiter cancelled before it got its slot leaves the queue; one
        cancelled just after its slot was handed over passes the slot on.
        """
        waiter = self._new_waiter()
        self._waiters.append(waiter)
        try:
            granted = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

            raise

        if not granted:
            raise closed()

    def release(self) -> None:
        """Give a slot back: hand it to the first live waiter, or free it."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return

        self.borrowed -= 1

    def close_waiters(self) -> None:
        """Turn every waiter away: its :meth:`acquire` raises (the pool is closing)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)
