"""The watchdog side of a stall: samples of the loop thread, grouped into steps and sites."""

from __future__ import annotations

import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any, Final

from ._clocks import runnable_now, system_cpu, thread_clock
from ._events import MAX_SPLIT
from ._places import LIBRARY, USER, get_places
from ._watches import Watch

__all__ = ("FrameLook", "OtherThread", "Sample", "Segment", "SiteTime", "Stall")

_OTHERS_EVERY: Final = 0.005  # how often a stall looks at the other threads too
_GIL_FREE_GAP: Final = 0.0025  # half of CPython's default switch interval


@dataclass(slots=True)
class FrameLook:
    """A frame as a sample saw it: the frame, and its line and instruction then."""

    frame: types.FrameType
    lineno: int | None
    lasti: int


@dataclass(slots=True)
class SiteTime:
    """The time one site took within a segment."""

    stack: tuple[FrameLook, ...]
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

    def merge(self, other: SiteTime) -> None:
        for lasti, spent in other.at.items():
            self.at[lasti] = self.at.get(lasti, 0.0) + spent

        self.time += other.time
        self.cpu += other.cpu
        self.starved += other.starved
        self.free_cpu += other.free_cpu
        self.contended += other.contended


class Sample:
    """One look at the loop thread: its stack, and where in it the step and the site are.

    The frames' lines and instructions are read at once, before anything that could release
    the GIL and let the loop thread move on (the first look at a file name stats the file).
    """

    __slots__ = ("frames", "leaf_key", "root", "site", "site_key", "step")

    def __init__(self, leaf: types.FrameType | None, prefix: frozenset[types.CodeType]) -> None:
        chain: list[FrameLook] = []
        frame = leaf
        while frame is not None:
            chain.append(FrameLook(frame, frame.f_lineno, frame.f_lasti))
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

        places = get_places()
        library = -1
        for index in range(len(self.frames) - 1, -1, -1):
            place = places(self.frames[index].frame)
            if place == USER:
                self.site = index
                break

            if place == LIBRARY and library < 0:
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


class Segment:
    """Consecutive samples in one step (the same outermost frame), or in the loop's own code."""

    __slots__ = ("cpu", "last", "root", "sites", "start", "starved", "step", "time")

    def __init__(self, root: types.FrameType | None, step: bool, start: float) -> None:
        self.root = root
        self.step = step
        self.start = start
        self.time = 0.0
        self.cpu = 0.0
        self.starved = 0.0
        self.sites: dict[tuple[types.CodeType, int | None], SiteTime] = {}
        self.last: SiteTime | None = None

    def add(self, sample: Sample, dt: float, share: float, moved: bool) -> None:
        acc: SiteTime | None = None
        if sample.site_key is not None:
            acc = self.sites.get(sample.site_key)
            if acc is None:
                acc = self.sites[sample.site_key] = SiteTime(sample.frames, sample.site)

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

    def merge(self, other: Segment) -> None:
        self.time += other.time
        self.cpu += other.cpu
        self.starved += other.starved
        for key, acc in other.sites.items():
            mine = self.sites.get(key)
            if mine is None:
                self.sites[key] = acc
            else:
                mine.merge(acc)


class OtherThread:
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
        self.clock = thread_clock(ident)
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
            self.runnable += runnable_now(self.native_id) is True
        self.prev = key
        self.looks += 1
        places = get_places()
        frame: types.FrameType | None = leaf
        while frame is not None and places(frame) != USER:
            frame = frame.f_back

        if frame is not None:
            record = FrameLook(frame, frame.f_lineno, frame.f_lasti)
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

    def site(self) -> FrameLook | None:
        if not self.sites:
            return None

        return max(self.sites.values(), key=lambda seen: seen[0])[1]  # type: ignore[no-any-return]


class Stall:
    """The watchdog's record of one stretch where the loop did not beat on time."""

    def __init__(self, watch: Watch, threshold: float, beats: int, last_beat: float) -> None:
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
        self.current: Segment | None = None
        self.big: list[Segment] = []
        self.rest = Segment(None, step=False, start=self.start)
        self.detected: float | None = None
        self.hang_logged = False
        self.samples = 0
        self.wall0 = 0.0
        self.process0 = self.own0 = 0.0
        self.system0: tuple[int, int] | None = None
        self.loop0: float | None = None
        self.others: dict[int, OtherThread] = {}
        self.others_t = -1.0

    def sample(self) -> Sample:
        """Look at the loop thread now: its clock, its CPU clock and its stack, together."""
        watch = self.watch
        now = time.perf_counter()
        cpu = watch.read_cpu()
        frames = sys._current_frames()
        sample = Sample(frames.get(watch.thread_id), watch.prefix)
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
            runnable = runnable_now(watch.native_id)
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

            current = self.current = Segment(key, sample.step, self.attr_t)

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

                other = self.others[ident] = OtherThread(ident, threads.get(ident), now)

            other.look(leaf, now)

    def busy_threads(self) -> list[tuple[OtherThread, float]]:
        """The other threads that were on a CPU for 2% of the stall or more, busiest first."""
        now = time.perf_counter()
        for other in self.others.values():
            other.read_clock(now)  # the stall just ended: its clock now closes the interval

        others = list(self.others.values())
        if others and not any(other.timed() for other in others):
            # Starved of the GIL itself, the watchdog saw the others only as the stall ended:
            # too briefly to time them. Those running then shared the GIL with the loop.
            running = [other for other in others if other.runnable]
            return [(other, 1 / (len(running) + 1)) for other in running][:MAX_SPLIT]

        busy = [(other, other.share()) for other in others]
        busy = [(other, share) for other, share in busy if share >= 0.02]
        busy.sort(key=lambda pair: pair[1], reverse=True)
        return busy[:MAX_SPLIT]

    def _begin(self, now: float, cpu: float | None) -> None:
        """Estimate when the loop stopped turning, at the first sample."""
        watch = self.watch
        self.wall0 = now
        self.loop0 = cpu if watch.clock is not None else None
        self.process0 = time.process_time()
        self.own0 = time.thread_time()
        self.system0 = system_cpu()
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

    def _close(self, segment: Segment) -> None:
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
        system1 = system_cpu()
        if system0 is None or system1 is None or system1[1] <= system0[1]:
            return False

        return (system1[0] - system0[0]) / (system1[1] - system0[1]) >= 0.9
