"""The kernel timer that lets the monitor's watchdog sleep while the loop beats on time."""

from __future__ import annotations

import os
import select
import sys
import threading

import pytest

from _support import WAIT
from offload._monitor import _alarm

pytestmark = pytest.mark.skipif(
    not _alarm.available(),
    reason="alarms need Linux timerfd; elsewhere the watchdog looks on a schedule, tested as well",
)


def rings(alarm: _alarm.Alarm, within: float) -> bool:
    """Wait up to ``within`` seconds for the alarm's descriptor to turn readable."""
    readable, _, _ = select.select([alarm.fileno()], [], [], within)
    return bool(readable)


@pytest.fixture
def alarm() -> _alarm.Alarm:
    made = _alarm.new_alarm()
    assert made is not None
    return made


def test_a_new_alarm_is_quiet(alarm: _alarm.Alarm) -> None:
    assert not rings(alarm, 0)
    assert not alarm.clear()
    alarm.close()


def test_rings_once_armed_and_clears(alarm: _alarm.Alarm) -> None:
    alarm.arm(0.01)
    assert rings(alarm, WAIT)
    assert alarm.clear()
    assert not rings(alarm, 0), "one-shot: cleared, it stays quiet"
    assert not alarm.clear()
    alarm.close()


def test_rearming_pushes_the_deadline_back(alarm: _alarm.Alarm) -> None:
    """What the loop's beat does: each arm replaces the previous deadline."""
    alarm.arm(0.01)
    alarm.arm(WAIT * 10)
    assert not rings(alarm, 0.2)
    alarm.arm(0.01)
    assert rings(alarm, WAIT)
    alarm.close()


def test_disarm(alarm: _alarm.Alarm) -> None:
    alarm.arm(0.05)
    alarm.disarm()
    assert not rings(alarm, 0.3)
    alarm.close()


def test_closed_alarm_ignores_every_call(alarm: _alarm.Alarm) -> None:
    """The loop may still beat after the watchdog closed the alarm: nothing touches the fd."""
    alarm.close()
    assert alarm.fileno() == -1
    alarm.arm(0.01)
    alarm.disarm()
    assert not alarm.clear()
    alarm.close()


def test_arm_from_one_thread_wait_in_another(alarm: _alarm.Alarm) -> None:
    armed = threading.Event()

    def beat() -> None:
        alarm.arm(0.01)
        armed.set()

    thread = threading.Thread(target=beat)
    thread.start()
    assert armed.wait(WAIT)
    assert rings(alarm, WAIT)
    thread.join()
    alarm.close()


def test_unavailable_without_timerfd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel has no timerfd, there are no alarms and the watchdog uses a timer."""
    monkeypatch.setattr(_alarm, "_looked", False)
    monkeypatch.setattr(_alarm, "_timerfd", None)  # what it finds is put back after the test
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not _alarm.available()
    assert _alarm.new_alarm() is None


def test_a_refused_setting_makes_the_alarm_unusable_not_an_error() -> None:
    """The loop's beat arms the alarm: a kernel error must not reach the loop."""

    def refuse(fd: int, delay: float) -> None:
        raise OSError(22, "Invalid argument")

    made = _alarm.new_alarm()
    assert made is not None
    alarm = _alarm.Alarm(os.dup(made.fileno()), refuse)
    made.close()
    before = alarm.usable
    alarm.arm(0.01)
    alarm.disarm()
    assert (before, alarm.usable) == (True, False), "the watchdog must stop relying on it"
    alarm.close()
