"""``pool.stats()``: frozen snapshots, and the counters behind them."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ("Counters", "PoolStats", "TimingSummary")

# How many recent samples the percentiles are computed from: enough for a stable p99,
# small enough that memory stays flat however many calls run.
_SAMPLES = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class TimingSummary:
    """A summary of durations, in seconds.

    ``mean`` and ``max`` cover every call; ``p50`` and ``p99`` the most recent 4096.
    All are 0.0 before the first call.
    """

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStats:
    """A snapshot of one pool, across the event loops it serves.

    Gauges (now): ``max_workers``, ``workers`` (live worker threads or processes), ``busy``
    (calls running, abandoned ones included), ``pending`` (calls waiting for a worker),
    ``abandoned`` (threads still running for a caller that is gone).

    Counters (since the pool was made): ``submitted`` (calls handed to a worker);
    ``rejected`` (calls refused with :exc:`~offload.Overloaded`, never submitted); and the
    outcomes, each finished call counted once, from the caller's view, when the call ends for
    it: ``completed`` (returned), ``failed`` (raised), ``cancelled``, ``timed_out``,
    ``crashed`` (its worker process died).

    ``wait_time`` is the time from the call to the start on a worker, ``run_time`` the time on
    the worker.
    """

    name: str
    max_workers: int
    workers: int = 0
    busy: int = 0
    pending: int = 0
    abandoned: int = 0
    submitted: int = 0
    rejected: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    crashed: int = 0
    wait_time: TimingSummary = TimingSummary()
    run_time: TimingSummary = TimingSummary()


class _Timing:
    __slots__ = ("count", "max", "recent", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.recent: deque[float] = deque(maxlen=_SAMPLES)

    def merge(self, other: _Timing) -> None:
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        self.recent.extend(other.recent)

    @staticmethod
    def summary(timings: Iterable[_Timing]) -> TimingSummary:
        count = 0
        total = 0.0
        biggest = 0.0
        samples: list[float] = []
        for timing in timings:
            count += timing.count
            total += timing.total
            biggest = max(biggest, timing.max)
            samples.extend(timing.recent)

        if not count:
            return TimingSummary()

        samples.sort()
        last = len(samples) - 1
        return TimingSummary(
            count=count,
            mean=total / count,
            p50=samples[round(last * 0.50)],
            p99=samples[round(last * 0.99)],
            max=biggest,
        )


class Counters:
    """Counters of one pool in one event loop; only that loop's thread changes them."""

    __slots__ = (
        "cancelled",
        "completed",
        "crashed",
        "failed",
        "rejected",
        "run_time",
        "submitted",
        "timed_out",
        "wait_time",
    )

    def __init__(self) -> None:
        self.submitted = 0
        self.rejected = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.crashed = 0
        self.wait_time = _Timing()
        self.run_time = _Timing()

    _COUNTS = ("submitted", "rejected", "completed", "failed", "cancelled", "timed_out", "crashed")

    def merge(self, other: Counters) -> None:
        """Add ``other``'s counts into these (a loop's run ended)."""
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

        self.wait_time.merge(other.wait_time)
        self.run_time.merge(other.run_time)

    @classmethod
    def totals(cls, counters: list[Counters]) -> dict[str, object]:
        """Add up several loops' counters into ``PoolStats`` fields."""
        totals: dict[str, object] = {
            name: sum(getattr(c, name) for c in counters) for name in cls._COUNTS
        }
        totals["wait_time"] = _Timing.summary(c.wait_time for c in counters)
        totals["run_time"] = _Timing.summary(c.run_time for c in counters)
        return totals
