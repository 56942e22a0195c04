"""The watchdog side of a stall: samples of the loop thread, grouped into steps and sites."""

from __future__ import annotations

import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any, Final

from ._clocks import native_thread_clock, runnable_now, system_cpu
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
    by_instruction: dict[int, float] = field(default_factory=dict[int, float])
    instruction: int = -1  # the site frame's instruction at the latest sample

    def merge(self, other: SiteTime) -> None:
        for lasti, spent in other.by_instruction.items():
            self.by_instruction[lasti] = self.by_instruction.get(lasti, 0.0) + spent

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
        # Another thread's frames are read while that thread runs: CPython 3.11 was seen to
        # hand back a code object as ``f_back`` (once, under heavy load). The chain stops
        # there rather than kill the watchdog.
        while isinstance(frame, types.FrameType):
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

    __slots__ = ("cpu", "last_site", "root", "sites", "start", "starved", "step", "time")

    def __init__(self, root: types.FrameType | None, step: bool, start: float) -> None:
        self.root = root
        self.step = step
        self.start = start
        self.time = 0.0
        self.cpu = 0.0
        self.starved = 0.0
        self.sites: dict[tuple[types.CodeType, int | None], SiteTime] = {}
        self.last_site: SiteTime | None = None

    def add(self, sample: Sample, dt: float, share: float, moved: bool) -> None:
        acc: SiteTime | None = None
        if sample.site_key is not None:
            acc = self.sites.get(sample.site_key)
            if acc is None:
                acc = self.sites[sample.site_key] = SiteTime(sample.frames, sample.site)

            acc.instruction = sample.frames[sample.site].lasti

        self.last_site = acc
        self.add_time(dt, share, moved)

    def add_time(self, dt: float, share: float, moved: bool) -> None:
        # The leaf moved but the thread was not on a CPU all along: it ran Python, slowed
        # by other threads (the GIL) or processes; that part is neither blocking nor its own CPU.
        low = (1.0 - share) * dt if moved else 0.0
        self.time += dt
        self.cpu += share * dt
        self.starved += low
        site = self.last_site
        if site is not None:
            at = site.instruction
            site.by_instruction[at] = site.by_instruction.get(at, 0.0) + dt
            site.time += dt
            site.cpu += share * dt
            site.starved += low
            if not moved and share >= 0.2:
                # A kernel wait uses next to no CPU: a stable leaf that computed in part was
                # computing, and waited for a CPU the rest of the time if others kept them busy.
                site.contended += (1.0 - share) * dt
            if dt <= _GIL_FREE_GAP:
                # The watchdog took the GIL again within a switch interval while the loop
                # thread computed: the computation does not hold the GIL.
                site.free_cpu += share * dt

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
        "first_cpu",
        "first_cpu_at",
        "last_cpu",
        "last_cpu_at",
        "looks",
        "moves",
        "name",
        "native_id",
        "previous_leaf",
        "runnable_looks",
        "sites",
    )

    def __init__(self, ident: int, thread: threading.Thread | None, now: float) -> None:
        self.name = thread.name if thread is not None else str(ident)
        self.native_id = thread.native_id if thread is not None else None
        # By kernel id: the thread may exit while the watchdog looks at it.
        self.clock = native_thread_clock(self.native_id)
        self.first_cpu = self.last_cpu = self._cpu()
        self.first_cpu_at = self.last_cpu_at = now
        self.looks = self.moves = self.runnable_looks = 0
        self.previous_leaf: tuple[int, int] | None = None
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
            self.last_cpu, self.last_cpu_at = cpu, now

    def look(self, leaf: types.FrameType, now: float) -> None:
        self.read_clock(now)

        key = (id(leaf.f_code), leaf.f_lasti)
        self.moves += self.previous_leaf is not None and key != self.previous_leaf
        if self.native_id is not None:
            self.runnable_looks += runnable_now(self.native_id) is True
        self.previous_leaf = key
        self.looks += 1
        places = get_places()
        frame: types.FrameType | None = leaf
        while isinstance(frame, types.FrameType) and places(frame) != USER:
            frame = frame.f_back  # not a frame on a rare race: see Sample

        if isinstance(frame, types.FrameType):
            record = FrameLook(frame, frame.f_lineno, frame.f_lasti)
            seen = self.sites.setdefault((frame.f_code, frame.f_lineno), [0, record])
            seen[0] += 1

    def timed(self) -> bool:
        """Whether it was watched long enough for its CPU clock to tell its share."""
        return (
            self.first_cpu is not None
            and self.last_cpu is not None
            and self.last_cpu_at - self.first_cpu_at >= 0.02
        )

    def share(self) -> float:
        """The share of the time it was watched that it spent on a CPU."""
        first, last = self.first_cpu, self.last_cpu
        span = self.last_cpu_at - self.first_cpu_at
        if first is not None and last is not None and span > 0:
            return min(max((last - first) / span, 0.0), 1.0)

        return self.moves / (self.looks - 1) if self.looks > 1 else 0.0

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
        self.last_beat = last_beat
        self.start = last_beat + watch.interval / 2  # when the loop stopped turning (estimated)
        # The loop thread's CPU clock, and when it was read: each sample's share of CPU.
        self.loop_cpu: float | None = watch.last_cpu if watch.beats == beats else None
        self.cpu_read_at = last_beat
        # A gap between two samples this long means the loop thread held the GIL in C.
        self.gil_held_gap = 4 * sys.getswitchinterval()
        self.proc_readable = sys.platform == "linux"  # /proc tells a runnable thread
        self.accounted_until = self.start  # the time up to which samples were attributed
        self.previous_leaf: tuple[int, int] | None = None
        self.segment: Segment | None = None  # the step being sampled
        self.long_steps: list[Segment] = []  # steps that alone ran past the threshold
        self.rest = Segment(None, step=False, start=self.start)  # short steps, the loop's code
        self.detected_after: float | None = None
        self.hang_reported = False
        self.sample_count = 0
        # Clocks at the first sample: whether others kept the CPUs busy meanwhile.
        self.sampling_began = 0.0
        self.process_cpu_at_start = self.own_cpu_at_start = 0.0
        self.system_cpu_at_start: tuple[int, int] | None = None
        self.loop_cpu_at_start: float | None = None
        self.other_threads: dict[int, OtherThread] = {}
        self.others_looked_at = -1.0

    def sample(self) -> Sample:
        """Look at the loop thread now: its clock, its CPU clock and its stack, together."""
        watch = self.watch
        now = time.perf_counter()
        cpu = watch.read_cpu()
        frames = sys._current_frames()
        sample = Sample(frames.get(watch.thread_id), watch.prefix)
        sample.locate()
        if now - self.others_looked_at >= _OTHERS_EVERY:
            self.others_looked_at = now
            self._look_at_others(frames, now)

        if self.sample_count == 0:
            self._begin(now, cpu)

        gap = now - self.cpu_read_at
        share = self._share(now, cpu)
        dt = max(now - self.accounted_until, 0.0)
        # Python ran on between the two looks (the leaf moved), or the loop thread held the
        # GIL all along, in C (a blocking call lets go of it): either way it was not blocked.
        moved = (self.previous_leaf is not None and sample.leaf_key != self.previous_leaf) or (
            gap > self.gil_held_gap and share >= 0.2
        )
        if not moved and share < 0.2 and self.proc_readable:
            # Off the CPU without moving: a kernel wait, unless the thread is runnable and
            # only waits for a CPU that other processes keep busy.
            runnable = runnable_now(watch.native_id)
            if runnable is None:
                self.proc_readable = False
            else:
                moved = runnable
        key = sample.root if sample.step else None
        current = self.segment
        if (
            self.sample_count
            and gap > self.gil_held_gap
            and share >= 0.2
            and current is not None
            and current.root is key
            and current.step == sample.step
        ):
            # The loop thread held the GIL since the last look: a C call that began after it,
            # at the last look's site. This look lands wherever the call returned to, in the
            # same step. (Between two steps, the gap is the watchdog's own wait for the GIL
            # while short steps computed: giving it to the last step would make one of them
            # look long, and blame a line for saturation.)
            current.add_time(dt, share, moved=True)
            self.accounted_until, dt = now, 0.0

        if current is None or current.root is not key or current.step != sample.step:
            if current is not None:
                self._close(current)

            current = self.segment = Segment(key, sample.step, self.accounted_until)

        current.add(sample, dt, share, moved)
        self.accounted_until = now
        self.previous_leaf = sample.leaf_key
        self.sample_count += 1
        if self.detected_after is None and now - self.start >= self.threshold:
            self.detected_after = now - self.start

        return sample

    def _look_at_others(self, frames: dict[int, types.FrameType], now: float) -> None:
        """Note where the other threads are and their CPU clocks: they may be starving us."""
        skip = (self.watch.thread_id, threading.get_ident())
        threads: dict[int | None, threading.Thread] | None = None
        for ident, leaf in frames.items():
            if ident in skip:
                continue

            other = self.other_threads.get(ident)
            if other is None:
                if threads is None:
                    threads = {thread.ident: thread for thread in threading.enumerate()}

                other = self.other_threads[ident] = OtherThread(ident, threads.get(ident), now)

            other.look(leaf, now)

    def busy_threads(self) -> list[tuple[OtherThread, float]]:
        """The other threads that were on a CPU for 2% of the stall or more, busiest first."""
        now = time.perf_counter()
        for other in self.other_threads.values():
            other.read_clock(now)  # the stall just ended: its clock now closes the interval

        others = list(self.other_threads.values())
        if others and not any(other.timed() for other in others):
            # Starved of the GIL itself, the watchdog saw the others only as the stall ended:
            # too briefly to time them. Those running then shared the GIL with the loop.
            running = [other for other in others if other.runnable_looks]
            return [(other, 1 / (len(running) + 1)) for other in running][:MAX_SPLIT]

        busy = [(other, other.share()) for other in others]
        busy = [(other, share) for other, share in busy if share >= 0.02]
        busy.sort(key=lambda pair: pair[1], reverse=True)
        return busy[:MAX_SPLIT]

    def _begin(self, now: float, cpu: float | None) -> None:
        """Estimate when the loop stopped turning, at the first sample."""
        watch = self.watch
        self.sampling_began = now
        self.loop_cpu_at_start = cpu if watch.clock is not None else None
        self.process_cpu_at_start = time.process_time()
        self.own_cpu_at_start = time.thread_time()
        self.system_cpu_at_start = system_cpu()
        # The loop beat at t0 and would have beaten at t0 + interval had it been free: it
        # stopped in between, and any computing it did since came after. A step that computed
        # all along started when its computing did; otherwise take the middle of what is left.
        t0 = self.last_beat
        latest = t0 + watch.interval
        start = t0 + watch.interval / 2
        if self.loop_cpu_at_start is not None and cpu is not None and self.loop_cpu is not None:
            used = max(cpu - self.loop_cpu, 0.0)
            if used >= 0.9 * (now - latest):
                start = max(t0, now - used)
            else:
                start = (t0 + max(t0, min(latest, now - used))) / 2

        self.start = self.accounted_until = self.rest.start = start

    def _share(self, now: float, cpu: float | None) -> float:
        span = now - self.cpu_read_at
        share = 0.0
        if cpu is not None and self.loop_cpu is not None and span > 0:
            share = min(max((cpu - self.loop_cpu) / span, 0.0), 1.0)

        if cpu is not None:
            self.loop_cpu = cpu
            self.cpu_read_at = now

        return share

    def _close(self, segment: Segment) -> None:
        if segment.step and segment.time >= self.threshold:
            self.long_steps.append(segment)
        else:
            self.rest.merge(segment)

    def finish(self, end: float, end_cpu: float | None) -> None:
        """Close the stall at ``end``: the time since the last sample goes to its site."""
        dt = end - self.accounted_until
        if self.segment is not None:
            if dt > 0:
                self.segment.add_time(dt, self._share(end, end_cpu), moved=False)

            self._close(self.segment)
            self.segment = None

    def others_busy(self) -> bool:
        """Whether other threads or processes kept the CPUs busy during the stall."""
        wall = time.perf_counter() - self.sampling_began
        if wall <= 0:
            return False

        process = time.process_time() - self.process_cpu_at_start
        own = time.thread_time() - self.own_cpu_at_start
        loop = 0.0
        if self.loop_cpu_at_start is not None:
            cpu = self.watch.read_cpu()
            if cpu is not None:
                loop = cpu - self.loop_cpu_at_start

        if (process - own - loop) / wall >= 0.5:
            return True

        system0 = self.system_cpu_at_start
        system1 = system_cpu()
        if system0 is None or system1 is None or system1[1] <= system0[1]:
            return False

        return (system1[0] - system0[0]) / (system1[1] - system0[1]) >= 0.9
