"""The watchdog thread: it sleeps until a loop's beat is late, then samples the stall."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Final

from . import _alarm
from ._attribution import EventBuilder, summary
from ._events import BlockingEvent, code_text, format_stack, where
from ._sampling import Sample, Stall
from ._watches import Watch

__all__ = ("Watchdog",)

_logger = logging.getLogger("offload")

_SAMPLE_INTERVAL: Final = 0.001
_PAUSED_POLL: Final = 0.1


class Watchdog:
    """A thread that watches the loops of one monitor, and reports through callbacks.

    Each loop's beat re-arms its watch's alarm, and the thread sleeps in `_alarm.TheWaiter`
    until an alarm rings (a beat is late) or `wake`. Where alarms never ring (no timerfd) it
    looks on a schedule: when the next beat is due, but not more often than every half
    threshold. Once a loop is late it samples the loop thread every millisecond until the
    loop beats again, then hands the stall's events to ``on_events``. A stall that lasts
    ``hang_after`` seconds goes to ``on_hang`` while it lasts.

    ``sleeps``, ``timed_sleeps`` and ``wakes`` count how the thread slept: every sleep while
    no stall was in progress, those of them with a timeout, and the times `wake` ended one.
    """

    def __init__(
        self,
        threshold: float,
        on_events: Callable[[list[BlockingEvent]], None],
        on_hang: Callable[[str, float, str], None] | None = None,
    ) -> None:
        self._threshold = threshold
        self._on_events = on_events
        self._on_hang = on_hang
        self._check_every = threshold / 2
        self._woke = 0.0
        self._hang_after = max(5.0, 10 * threshold)
        self._lock = threading.Lock()  # guards _watches and _closing
        self._waiter = _alarm.TheWaiter()
        self._watches: list[Watch] = []
        self._stalls: dict[Watch, Stall] = {}
        # Watches whose alarm rang a hair before their beat was late by our clock, with the
        # beat count then: the alarm rings only once, so look again on a timer.
        self._early: dict[Watch, int] = {}
        self._closing = False
        self.sleeps = 0
        self.timed_sleeps = 0
        self.wakes = 0
        self._thread = threading.Thread(target=self._run, name="offload.monitor", daemon=True)
        self._thread.start()

    def new_alarm(self) -> _alarm.AnyAlarm:
        """A disarmed alarm for a new watch, of the kind this watchdog sleeps on."""
        return self._waiter.new_alarm()

    def add(self, watch: Watch) -> None:
        with self._lock:
            if self._closing:  # a loop started as the monitor stopped: nothing to watch
                watch.stop()
                self._drop(watch)
                return

            self._watches.append(watch)
            if self._waiter.add(watch.alarm):
                return  # its alarm wakes the thread when the loop is late

        self.wake()

    def resumed(self, watch: Watch) -> None:
        """A paused loop runs again: its alarm is armed, else look at it now."""
        if not watch.alarm.usable:
            self.wake()

    def _drop(self, watch: Watch) -> None:
        """Forget a watch whose loop is gone and close its alarm (under ``_lock``)."""
        self._early.pop(watch, None)
        self._waiter.remove(watch.alarm)
        watch.alarm.close()

    def watches(self) -> list[Watch]:
        with self._lock:
            return list(self._watches)

    def wake(self) -> None:
        self._waiter.wake()

    def close(self) -> None:
        """Finish every stall in progress, then stop the thread and wait for it."""
        with self._lock:
            self._closing = True

        self.wake()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except Exception:  # pragma: no cover - a bug; say so rather than die in silence
            _logger.exception("offload.monitor stopped watching after an internal error")
        finally:
            with self._lock:
                for watch in self._watches:
                    self._drop(watch)
                self._watches = []
            self._waiter.close()

    def _timeout(self, watches: list[Watch], now: float) -> float | None:
        timeout: float | None = None
        for watch in watches:
            if watch in self._stalls:
                wait: float | None = _SAMPLE_INTERVAL
            elif watch.beats == 0:
                wait = watch.interval
            elif not watch.running():
                wait = _PAUSED_POLL
            elif watch.alarm.usable:
                if self._early.get(watch) == watch.beats:
                    wait = max(watch.last_beat + watch.late - now, _SAMPLE_INTERVAL / 4)
                else:
                    wait = None  # its alarm wakes the thread when a beat is late
            else:
                # Look again when the next beat is overdue, but not more often than every
                # half threshold while the loop is well: each wake costs CPU.
                wait = max(watch.last_beat + watch.late, self._woke + self._check_every) - now

            if wait is not None and (timeout is None or wait < timeout):
                timeout = wait

        return timeout

    def _wait(self, timeout: float | None) -> list[_alarm.AnyAlarm]:
        """Sleep until ``timeout`` (seconds), `wake` or an alarm; return the alarms that rang.

        The alarms and the wake-up are consumed later, in `_clear`: that lets go of the GIL,
        and a loop thread that holds the GIL in a long C call would take it back and run on
        before the stall is on record.
        """
        if not self._stalls and not self._early:
            self.sleeps += 1
            self.timed_sleeps += timeout is not None

        rang, woken = self._waiter.wait(timeout)
        self.wakes += woken
        return rang

    def _clear(self, rang: list[Watch]) -> None:
        """Consume what woke the thread, after the stalls are on record."""
        self._waiter.drain()
        for watch in rang:
            watch.alarm.clear()
            if watch not in self._stalls:
                # It rang, yet the beat was not late by our clock (or it beat since): the
                # alarm will not ring again until the next beat, so look again on a timer.
                # ``beats`` is read after the clear, so a beat since then re-armed it.
                self._early[watch] = watch.beats

    def _step(self) -> bool:
        rang: list[_alarm.AnyAlarm] = []
        if not self._closing:
            timeout = self._timeout(self.watches(), time.perf_counter())
            rang = self._wait(timeout)

        self._woke = time.perf_counter()
        with self._lock:
            closing = self._closing
            kept: list[Watch] = []
            for watch in self._watches:
                if watch in self._stalls or not watch.gone():
                    kept.append(watch)
                else:
                    self._drop(watch)
            self._watches = kept
            watches = list(kept)

        for watch in watches:
            stall = self._stalls.get(watch)
            beats = watch.beats
            if stall is not None:
                if beats != stall.beats:
                    self._finish(stall, watch.last_beat, watch.last_cpu)
                elif closing or not watch.running():
                    self._finish(stall, time.perf_counter(), watch.read_cpu())
                else:
                    sample = stall.sample()
                    if (
                        not stall.hang_reported
                        and stall.accounted_until - stall.start >= self._hang_after
                    ):
                        stall.hang_reported = True
                        self._report_hang(stall, sample)

                continue

            last_beat = watch.last_beat
            if closing or beats == 0 or not watch.running():
                continue

            if self._early.get(watch, beats) != beats:
                del self._early[watch]  # it beat since: its alarm is armed again

            if time.perf_counter() - last_beat > watch.late:
                self._early.pop(watch, None)
                stall = Stall(watch, self._threshold, beats, last_beat)
                self._stalls[watch] = stall
                stall.sample()

        self._clear([watch for watch in watches if any(watch.alarm is alarm for alarm in rang)])
        return not closing

    def _finish(self, stall: Stall, end: float, end_cpu: float | None) -> None:
        del self._stalls[stall.watch]
        stall.finish(end, end_cpu)
        if not stall.long_steps and stall.rest.time < self._threshold:
            return

        builder = EventBuilder(stall, stall.others_busy(), time.time() - time.perf_counter())
        self._on_events(builder.events())

    def _report_hang(self, stall: Stall, sample: Sample) -> None:
        if self._on_hang is None:
            return

        where_text = ""
        if sample.step and sample.site >= 0:
            summaries = [summary(look) for look in sample.frames]
            site = summaries[sample.site]
            where_text = (
                f" at {where(site)}\n    {code_text(site)}\nStack (most recent call last):\n"
                + format_stack(traceback.StackSummary.from_list(summaries))
            )

        self._on_hang(stall.watch.name, time.perf_counter() - stall.start, where_text)
