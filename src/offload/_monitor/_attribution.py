"""Turn a finished stall into events: blame a site, name the kind, and say how to fix it."""

from __future__ import annotations

import linecache
import sys
import traceback
from collections.abc import Sequence
from typing import Final

from ._events import MAX_SPLIT, BlockingEvent, BlockingKind, SiteKind, SiteShare, ThreadShare
from ._fixes import advice, busy_advice, positions
from ._places import LOOP, USER, get_places
from ._sampling import FrameLook, Segment, SiteTime, Stall

__all__ = ("EventBuilder", "summary")

_SATURATION_FIX: Final = (
    "no single line to blame: too many short steps run per loop turn. Bound the concurrency "
    "(anyio.CapacityLimiter), batch small steps, or move CPU-heavy steps to @offload.process"
)
_STARVATION_FIX: Final = (
    "no line on the loop to blame: CPU-bound work in other threads (@offload.thread, "
    "to_thread, plain threads) holds the GIL or the CPUs; run it with @offload.process instead"
)
_NO_STACK: Final = traceback.StackSummary()


if sys.version_info >= (3, 11):

    def summary(record: FrameLook) -> traceback.FrameSummary:
        frame = record.frame
        code = frame.f_code
        linecache.lazycache(code.co_filename, frame.f_globals)
        end_lineno, colno, end_colno = positions(code, record.lasti)
        return traceback.FrameSummary(
            code.co_filename,
            record.lineno,
            code.co_name,
            end_lineno=end_lineno,
            colno=colno,
            end_colno=end_colno,
        )

else:

    def summary(record: FrameLook) -> traceback.FrameSummary:
        frame = record.frame
        code = frame.f_code
        linecache.lazycache(code.co_filename, frame.f_globals)
        return traceback.FrameSummary(code.co_filename, record.lineno, code.co_name)


class EventBuilder:
    """Turn a finished stall into events."""

    def __init__(self, stall: Stall, others_busy: bool, wall_offset: float) -> None:
        self._stall = stall
        self._others_busy = others_busy
        self._wall_offset = wall_offset

    def events(self) -> list[BlockingEvent]:
        stall = self._stall
        threshold = stall.threshold
        events = [self._step(segment) for segment in stall.long_steps]
        if stall.rest.time >= threshold:
            events.append(self._rest(stall.rest))

        return events

    def _detected(self, duration: float) -> float:
        detected = self._stall.detected_after
        return duration if detected is None else min(detected, duration)

    def _busy(self) -> tuple[tuple[ThreadShare, ...], str]:
        """The threads that starved the loop, and the fix for the busiest."""
        busy = self._stall.busy_threads()
        shares = tuple(
            ThreadShare(
                name=other.name,
                site=summary(record) if (record := other.site()) is not None else None,
                share=share,
            )
            for other, share in busy
        )
        if not busy:
            return shares, _STARVATION_FIX

        # The busiest thread in user code: one caught in offload's own code (starting the
        # next worker thread, say) has no function to name.
        top = next((other for other, _ in busy if other.site() is not None), busy[0][0])
        record = top.site()
        return shares, busy_advice(record.frame if record else None, top.name)

    def _event(
        self,
        segment: Segment,
        kind: BlockingKind,
        shares: Sequence[tuple[SiteTime, SiteKind]] = (),
        fix: str = "",
    ) -> BlockingEvent:
        stall = self._stall
        busy_threads: tuple[ThreadShare, ...] = ()
        if kind == "starvation":
            busy_threads, fix = self._busy()
        elif kind == "saturation" and self._others_busy:
            # Too much work per turn, slowed further by other threads: name them too.
            busy_threads, busy_fix = self._busy()
            if busy_threads:
                fix = f"{fix}; other threads slowed it down: {busy_fix}"

        duration = segment.time
        cpu = segment.cpu / duration if duration > 0 else 0.0
        places = get_places()
        site = leaf = None
        stack = _NO_STACK
        split: list[SiteShare] = []
        if shares:
            # The site is where the step spent the most time, whatever its kind.
            main = max(shares, key=lambda pair: pair[0].time)
            backend = stall.watch.name.split(" ", 1)[0]
            for acc, site_kind in shares:
                if acc.time < max(0.001, 0.01 * duration) and acc is not main[0]:
                    continue

                record = acc.stack[acc.site]
                if acc.by_instruction:  # the instruction of this line that took the most time
                    lasti = max(acc.by_instruction, key=lambda at: acc.by_instruction[at])
                    record = FrameLook(record.frame, record.lineno, lasti)

                inner = acc.stack[acc.site + 1] if acc.site + 1 < len(acc.stack) else None
                split.append(
                    SiteShare(
                        site=summary(record),
                        duration=acc.time,
                        share=min(acc.time / duration, 1.0) if duration > 0 else 1.0,
                        kind=site_kind,
                        fix=advice(
                            site_kind,
                            record.frame,
                            record.lineno,
                            record.lasti,
                            user=places(record.frame) == USER,
                            gil_free=acc.free_cpu >= acc.cpu / 2 > 0,
                            callee=inner.frame.f_code if inner is not None else None,
                            backend=backend,
                        ),
                    )
                )
                if acc is main[0]:
                    # The stack starts at the step's first frame outside the loop's own code.
                    first = 0
                    while first < acc.site and places(acc.stack[first].frame) == LOOP:
                        first += 1

                    summaries = [summary(r) for r in acc.stack[first:]]
                    stack = traceback.StackSummary.from_list(summaries)
                    site = summaries[acc.site - first]
                    leaf = summaries[-1]
                    fix = split[-1].fix

            if len(split) > MAX_SPLIT:
                kept = sorted(split, key=lambda share: share.duration, reverse=True)[:MAX_SPLIT]
                split = [share for share in split if share in kept]

        return BlockingEvent(
            duration=duration,
            kind=kind,
            site=site,
            leaf=leaf,
            stack=stack,
            split=tuple(split),
            fix=fix,
            threshold=stall.threshold,
            detected_after=self._detected(duration),
            cpu=cpu if stall.watch.clock is not None else None,
            loop=stall.watch.name,
            started=segment.start + self._wall_offset,
            busy_threads=busy_threads,
        )

    def _site_kind(self, acc: SiteTime) -> SiteKind:
        # Time where Python ran on (the leaf moved) counts as computing, even when other
        # threads or processes kept the CPU from it.
        busy = acc.cpu + acc.starved + (acc.contended if self._others_busy else 0.0)
        return "cpu" if busy >= acc.time - busy else "blocking"

    def _step(self, segment: Segment) -> BlockingEvent:
        duration = segment.time
        starved = segment.starved
        if starved >= duration / 2 and duration - starved < self._stall.threshold:
            # A step that would not have blocked alone: other threads kept it from running.
            return self._event(segment, "starvation", fix=_STARVATION_FIX)

        shares: list[tuple[SiteTime, SiteKind]]
        shares = [(acc, self._site_kind(acc)) for acc in segment.sites.values()]
        cpu_time = sum(acc.time for acc, kind in shares if kind == "cpu")
        blocked_time = sum(acc.time for acc, kind in shares if kind == "blocking")
        kind: SiteKind = "cpu" if cpu_time > blocked_time else "blocking"
        return self._event(segment, kind, shares)

    def _rest(self, rest: Segment) -> BlockingEvent:
        duration = rest.time
        if rest.cpu >= min(duration / 2, self._stall.threshold):
            # The loop's own work in this turn, alone, took past the threshold (or most of
            # the time): too much work per turn, even if others slowed it down further.
            return self._event(rest, "saturation", fix=_SATURATION_FIX)

        if not self._others_busy:
            # Nobody else used the CPUs: the loop thread waited, in short blocking steps.
            shares: list[tuple[SiteTime, SiteKind]]
            shares = [(acc, self._site_kind(acc)) for acc in rest.sites.values()]
            blocked = sum(
                acc.time - acc.cpu - acc.starved for acc, kind in shares if kind == "blocking"
            )
            if shares and blocked >= duration / 2:
                return self._event(rest, "blocking", shares)

        return self._event(rest, "starvation", fix=_STARVATION_FIX)
