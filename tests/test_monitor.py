from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import os
import queue
import socket
import sys
import textwrap
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import trio
import uvloop

import offload
from _support import new_pool, spin_until, until
from offload._monitor import Report, ReportRow, SiteShare, _alarm, _clocks, _places

THRESHOLD = 0.1
BLOCK = 0.3


def next_line() -> int:
    """Return the number of the caller's next line."""
    return sys._getframe(1).f_lineno + 1


def spin(seconds: float) -> None:
    """Compute in Python for ``seconds``."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def recv_for(sock: socket.socket, seconds: float) -> bytes:
    """Wait in ``recv`` for ``seconds``: nothing ever arrives."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1)
    except TimeoutError:
        return b""


needs_alarms = pytest.mark.skipif(
    not _alarm.available(),
    reason="alarms need Linux timerfd; elsewhere the watchdog looks on a schedule, tested as well",
)


@pytest.fixture(params=["alarms", "schedule"])
def wakeups(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the watchdog woken by alarms (Linux) and by its fallback schedule."""
    if request.param == "alarms":
        if not _alarm.available():
            pytest.skip("alarms need Linux timerfd; elsewhere the watchdog looks on a schedule")
    else:
        monkeypatch.setattr(_alarm, "TheWaiter", _alarm.ScheduleWaiter)
    return str(request.param)


@pytest.fixture
def sockets() -> Iterator[socket.socket]:
    left, right = socket.socketpair()
    with left, right:
        yield left


def only_event(monitor: offload.Monitor) -> offload.BlockingEvent:
    """Return the one event the test caused (ignoring hiccups of a busy machine)."""
    events = [event for event in monitor.events if event.duration >= BLOCK / 3]
    assert len(events) == 1, [str(event) for event in monitor.events]
    return events[0]


def long_events(monitor: offload.Monitor) -> list[offload.BlockingEvent]:
    """Return the events that last as long as the test's blocks."""
    return [event for event in monitor.events if event.duration >= BLOCK / 3]


class TestBlockingCall:
    @pytest.mark.usefixtures("wakeups")
    async def test_blamed_on_its_line(self, anyio_backend: tuple[str, object]) -> None:
        """A blocking call in a step is one event, of kind blocking, at that line."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            line = next_line()
            time.sleep(BLOCK)  # noqa: ASYNC251

        event = only_event(monitor)
        assert event.kind == "blocking"
        assert event.site is not None
        assert (event.site.filename, event.site.lineno) == (__file__, line)
        assert event.site.name == "test_blamed_on_its_line"
        assert event.fix == f"await {anyio_backend[0]}.sleep(BLOCK)"
        assert event.cpu is not None
        assert event.cpu < 0.5

    async def test_duration_is_the_block(self) -> None:
        """The reported duration is the time the call blocked, not a multiple of a period."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            time.sleep(BLOCK)  # noqa: ASYNC251

        event = only_event(monitor)
        assert BLOCK - 0.05 <= event.duration <= BLOCK + 0.5
        assert THRESHOLD <= event.detected_after <= event.duration

    async def test_site_is_the_innermost_user_frame(self, sockets: socket.socket) -> None:
        """Through a helper, the site is the helper's line and the stack leads to it."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            caller = next_line()
            recv_for(sockets, BLOCK)

        event = only_event(monitor)
        assert event.kind == "blocking"
        assert event.site is not None
        assert event.site.name == "recv_for"
        assert event.site.line == "return sock.recv(1)"
        assert [(frame.name, frame.lineno) for frame in event.stack][-2:] == [
            ("test_site_is_the_innermost_user_frame", caller),
            ("recv_for", event.site.lineno),
        ]
        assert event.fix == "decorate recv_for() with @offload.thread and await it"

    async def test_standard_library_frames_are_not_the_site(self) -> None:
        """A wait inside the standard library is blamed on the user line that called it."""
        waiting: queue.Queue[None] = queue.Queue()
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            line = next_line()
            with pytest.raises(queue.Empty):
                waiting.get(timeout=BLOCK)

        event = only_event(monitor)
        assert event.site is not None
        assert (event.site.filename, event.site.lineno) == (__file__, line + 1)
        assert event.leaf is not None
        assert os.path.basename(event.leaf.filename) == "threading.py"
        assert event.stack[-1] == event.leaf

    async def test_offloaded_call_does_not_block(self) -> None:
        """The same call through offload.call leaves the loop turning: no event."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await offload.call(time.sleep, BLOCK)

        assert long_events(monitor) == []

    async def test_idle_loop_has_no_event(self) -> None:
        """A loop that waits without blocking records nothing."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.sleep(2 * BLOCK)

        assert long_events(monitor) == []


class TestCpuBound:
    @pytest.mark.usefixtures("wakeups")
    async def test_python_computation(self) -> None:
        """Computing in Python on the loop is kind cpu, with offload.process as the fix."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            spin(BLOCK)

        event = only_event(monitor)
        assert event.kind == "cpu"
        assert event.site is not None
        assert event.site.name == "spin"
        assert event.site.line == "while time.perf_counter() < deadline:"
        assert event.fix == "decorate spin() with @offload.process and await it"

    @pytest.mark.usefixtures("wakeups")
    async def test_c_call_holding_the_gil(self) -> None:
        """A C call that holds the GIL is seen when it returns, and blamed on its line."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            line = next_line()
            sum(range(30_000_000))

        event = only_event(monitor)
        assert event.kind == "cpu"
        assert event.site is not None
        assert (event.site.filename, event.site.lineno) == (__file__, line)
        assert event.fix == "await offload.process.call(sum, range(30000000))"


class TestMixedStep:
    async def test_time_splits_between_sites(self, sockets: socket.socket) -> None:
        """One step that blocks at three sites is one event split between them, in order."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            first = next_line()
            time.sleep(BLOCK)  # noqa: ASYNC251
            spin(BLOCK)
            recv_for(sockets, BLOCK)

        event = only_event(monitor)
        assert [(share.site.name, share.kind) for share in event.split] == [
            ("test_time_splits_between_sites", "blocking"),
            ("spin", "cpu"),
            ("recv_for", "blocking"),
        ]
        assert event.split[0].site.lineno == first
        for share in event.split:
            assert 0.2 < share.share < 0.5

        assert event.kind == "blocking"
        assert sum(share.duration for share in event.split) == pytest.approx(
            event.duration, abs=0.05
        )


async def short_steps(until: float) -> None:
    while time.perf_counter() < until:
        spin(0.002)
        await anyio.lowlevel.checkpoint()


def hog(stop: threading.Event) -> None:
    while not stop.is_set():
        pass


class TestNoLineToBlame:
    async def test_saturation(self) -> None:
        """Many tasks of short steps make saturation, with no site, stack or split."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            wall, cpu = time.perf_counter(), time.thread_time()
            until = time.perf_counter() + 2 * BLOCK
            async with anyio.create_task_group() as tasks:
                for _ in range(100):
                    tasks.start_soon(short_steps, until)

            # The loop thread wanted the CPU all along: what share of it did it get?
            share = (time.thread_time() - cpu) / (time.perf_counter() - wall)

        events = monitor.events
        assert all(event.site is None for event in events), [str(event) for event in events]
        if share < 0.8:
            # Other processes held the CPUs (a loaded machine): that is starvation, and the
            # monitor may say so. Either way, no line is to blame.
            assert {event.kind for event in events} <= {"saturation", "starvation"}, [
                str(event) for event in events
            ]
            return

        saturated = [event for event in events if event.kind == "saturation"]
        assert saturated, [str(event) for event in events]
        for event in saturated:
            assert (event.site, event.leaf, event.split) == (None, None, ())
            assert not event.stack
            assert "CapacityLimiter" in event.fix

        # Telling one long step from many short ones is a judgement from samples: on a
        # loaded machine a stretch can be misread, but most of the stall must be seen as
        # what it is.
        total = sum(event.duration for event in events)
        assert sum(event.duration for event in saturated) >= 0.5 * total

    async def test_starvation(self) -> None:
        """Threads that hog the GIL starve the loop: starvation, with no site."""
        stop = threading.Event()
        threads = [threading.Thread(target=hog, args=(stop,)) for _ in range(6)]
        for thread in threads:
            thread.start()

        try:
            with offload.monitor(0.05, log=False) as monitor:
                until = time.perf_counter() + 3 * BLOCK
                while time.perf_counter() < until:
                    await anyio.sleep(0.005)
        finally:
            stop.set()
            for thread in threads:
                thread.join()

        events = monitor.events
        assert any(event.kind == "starvation" for event in events)
        for event in events:
            if event.kind == "starvation":
                assert (event.site, event.split) == (None, ())
                assert "@offload.process" in event.fix


class TestWatchdogWakeups:
    @needs_alarms
    async def test_healthy_loop_does_not_wake_the_watchdog(self) -> None:
        """With alarms, the watchdog sleeps without a timeout while the loop beats on time.

        A thread that wakes on a schedule costs a busy loop a GIL handover per wake (about
        18% of its throughput at 20 wakes a second): that is what the alarms avoid.
        """
        with offload.monitor(0.2, log=False) as monitor:
            watch, watchdog = monitor._watch, monitor._watchdog
            assert watch is not None
            assert watchdog is not None
            assert watch.alarm is not None
            beats = watch.beats
            while watch.beats < beats + 5:  # a busy loop that turns all the time
                await anyio.lowlevel.checkpoint()

        assert watch.alarm.fileno() == -1, "the watchdog closes the alarm it waited on"
        # A stall in progress, or an alarm that rang early, rightly waits on a timer: the
        # counters leave those sleeps out.
        assert watchdog.sleeps > 0
        assert watchdog.timed_sleeps == 0
        assert watchdog.wakes == 1, "woken once, to close: watching a loop does not wake it"

    async def test_without_alarms_it_looks_on_a_schedule(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Where there is no timerfd, the watchdog wakes on a timer, and still finds stalls."""
        monkeypatch.setattr(_alarm, "TheWaiter", _alarm.ScheduleWaiter)
        with offload.monitor(THRESHOLD, log=False) as monitor:
            assert monitor._watchdog is not None
            assert isinstance(monitor._watchdog._waiter, _alarm.ScheduleWaiter)
            await anyio.lowlevel.checkpoint()
            time.sleep(BLOCK)  # noqa: ASYNC251

        assert only_event(monitor).kind == "blocking"


class TestContextManager:
    async def test_async_with(self) -> None:
        """``async with`` watches the running loop as ``with`` does."""
        async with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            time.sleep(BLOCK)  # noqa: ASYNC251

        assert [event.kind for event in long_events(monitor)] == ["blocking"]

    async def test_blocked_exit_ends_the_event(self) -> None:
        """A block that lasts until the with block ends is recorded when it ends."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            time.sleep(BLOCK)  # noqa: ASYNC251

        assert [event.kind for event in long_events(monitor)] == ["blocking"]

    async def test_enter_twice(self) -> None:
        """A monitor already watching refuses to be entered again."""
        watcher = offload.monitor(THRESHOLD, log=False)
        with watcher, pytest.raises(RuntimeError, match="already watching"):
            watcher.__enter__()

    async def test_uninstall_in_with_block(self) -> None:
        """``uninstall()`` is for installed monitors, not ``with`` blocks."""
        with (
            offload.monitor(THRESHOLD, log=False) as watcher,
            pytest.raises(RuntimeError, match="stops when the block ends"),
        ):
            watcher.uninstall()

    async def test_reuse(self) -> None:
        """A monitor can watch again after its block ends, and keeps its events."""
        watcher = offload.monitor(THRESHOLD, log=False)
        for _ in range(2):
            with watcher:
                await anyio.lowlevel.checkpoint()
                time.sleep(BLOCK)  # noqa: ASYNC251

        assert len(long_events(watcher)) == 2

    def test_threshold_must_be_positive(self) -> None:
        """A threshold of zero or less is refused."""
        with pytest.raises(ValueError, match="positive"):
            offload.monitor(0)


async def blocking_main() -> None:
    await asyncio.sleep(0.01)
    time.sleep(BLOCK)  # noqa: ASYNC251
    await asyncio.sleep(0.01)


async def trio_main() -> None:
    await trio.sleep(0.01)
    time.sleep(BLOCK)  # noqa: ASYNC251
    await trio.sleep(0.01)


BLOCKING_LINE = blocking_main.__code__.co_firstlineno + 2
TRIO_LINE = trio_main.__code__.co_firstlineno + 2


class TestInstall:
    def test_watches_every_loop_that_runs(self) -> None:
        """An installed monitor watches asyncio, uvloop, trio and loops in other threads."""
        watcher = offload.monitor.install(THRESHOLD, log=False)
        try:
            asyncio.run(blocking_main())
            uvloop.run(blocking_main())
            trio.run(trio_main)
            thread = threading.Thread(target=asyncio.run, args=(blocking_main(),))
            thread.start()
            thread.join()
        finally:
            watcher.uninstall()

        events = long_events(watcher)
        assert [(event.kind, event.site and event.site.lineno) for event in events] == [
            ("blocking", BLOCKING_LINE),
            ("blocking", BLOCKING_LINE),
            ("blocking", TRIO_LINE),
            ("blocking", BLOCKING_LINE),
        ]
        assert [event.loop.split()[0] for event in events] == [
            "asyncio",
            "uvloop",
            "trio",
            "asyncio",
        ]

    def test_stopped_loop_is_not_blocked(self) -> None:
        """Time between two runs of one loop is not a stall."""
        watcher = offload.monitor.install(THRESHOLD, log=False)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(asyncio.sleep(0.01))
            time.sleep(BLOCK)
            loop.run_until_complete(asyncio.sleep(0.01))
        finally:
            loop.close()
            watcher.uninstall()

        assert long_events(watcher) == []

    def test_uninstall_restores_and_stops(self) -> None:
        """After ``uninstall()`` the hooks are gone and new loops are not watched."""
        set_hooks, trio_run = sys.set_asyncgen_hooks, trio.run
        watcher = offload.monitor.install(THRESHOLD, log=False)
        assert (sys.set_asyncgen_hooks, trio.run) != (set_hooks, trio_run)
        watcher.uninstall()
        watcher.uninstall()
        assert (sys.set_asyncgen_hooks, trio.run) == (set_hooks, trio_run)
        asyncio.run(blocking_main())
        assert long_events(watcher) == []

    def test_with_outside_a_loop(self) -> None:
        """``with`` outside any loop watches the loops that run inside the block."""
        with offload.monitor(THRESHOLD, log=False) as watcher:
            asyncio.run(blocking_main())

        asyncio.run(blocking_main())
        assert [event.kind for event in long_events(watcher)] == ["blocking"]

    async def test_install_inside_a_loop(self) -> None:
        """Installed inside a running loop, the monitor watches that loop at once."""
        watcher = offload.monitor.install(THRESHOLD, log=False)
        try:
            await anyio.lowlevel.checkpoint()
            time.sleep(BLOCK)  # noqa: ASYNC251
            await anyio.lowlevel.checkpoint()
        finally:
            watcher.uninstall()

        assert [event.kind for event in long_events(watcher)] == ["blocking"]


class TestLogging:
    async def test_each_event_is_a_warning(self, caplog: pytest.LogCaptureFixture) -> None:
        """Each event is a warning on the offload logger, with its site and stack."""
        caplog.set_level(logging.WARNING, logger="offload")
        with offload.monitor(THRESHOLD) as monitor:
            await anyio.lowlevel.checkpoint()
            time.sleep(BLOCK)  # noqa: ASYNC251

        event = only_event(monitor)
        records = [record for record in caplog.records if record.name == "offload"]
        assert {record.levelno for record in records} == {logging.WARNING}
        assert len(records) == len(monitor.events)
        message = records[monitor.events.index(event)].getMessage()
        assert message == str(event)
        assert f"test_monitor.py:{event.site and event.site.lineno}" in message
        assert "Stack (most recent call last):" in message

    async def test_log_false(self, caplog: pytest.LogCaptureFixture) -> None:
        """``log=False`` keeps the events and logs nothing."""
        caplog.set_level(logging.WARNING, logger="offload")
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            time.sleep(BLOCK)  # noqa: ASYNC251

        assert len(long_events(monitor)) == 1
        assert not [record for record in caplog.records if record.name == "offload"]


def block_twice() -> None:
    time.sleep(BLOCK / 2)


class TestReport:
    async def test_aggregates_by_site(self) -> None:
        """The report has one row per site: count, total, max, kind and fix."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            for _ in range(2):
                await anyio.sleep(THRESHOLD)
                block_twice()

            await anyio.sleep(THRESHOLD)
            spin(BLOCK)

        events = long_events(monitor)
        assert len(events) == 3
        report = monitor.report()
        assert isinstance(report, Report)
        assert report.events == len(monitor.events)
        rows = {row.site.name: row for row in report.rows if row.site is not None}
        # A loaded machine can add a short stall of the test's own (its loop slowed down):
        # the rows of the two blocking functions are what the report must get right.
        assert {name: (rows[name].count, rows[name].kind) for name in ("spin", "block_twice")} == {
            "spin": (1, "cpu"),
            "block_twice": (2, "blocking"),
        }
        row = rows["block_twice"]
        assert isinstance(row, ReportRow)
        assert row.total == pytest.approx(sum(e.duration for e in events[:2]), abs=0.01)
        assert row.max == pytest.approx(max(e.duration for e in events[:2]), abs=0.01)
        assert row.fix == "decorate block_twice() with @offload.thread and await it"
        text = str(report)
        assert "test_monitor.py" in text
        assert "time.sleep(BLOCK / 2)" in text
        assert "fix: decorate block_twice() with @offload.thread and await it" in text

    def test_empty_report(self) -> None:
        """With no events the report says so."""
        report = offload.monitor(THRESHOLD).report()
        assert report.rows == ()
        assert str(report) == "offload.monitor: the event loop never blocked past 0.1 s."


class TestRecords:
    def test_frozen_slotted_keyword_only(self) -> None:
        """The records are frozen, slotted and keyword-only dataclasses."""
        site = traceback.FrameSummary("app.py", 1, "main", line="x()")
        share = SiteShare(site=site, duration=1.0, share=1.0, kind="blocking", fix="")
        event = offload.BlockingEvent(
            duration=1.0,
            kind="blocking",
            site=site,
            leaf=site,
            stack=traceback.StackSummary.from_list([site]),
            split=(share,),
            fix="await offload.call(x)",
            threshold=0.1,
            detected_after=0.1,
            cpu=0.0,
            loop="asyncio loop in thread 'MainThread'",
            started=0.0,
        )
        for record in (
            share,
            event,
            ReportRow(kind="cpu", site=None, count=1, total=1.0, max=1.0, fix=""),
        ):
            assert dataclasses.fields(record)
            assert not hasattr(record, "__dict__")
            with pytest.raises(dataclasses.FrozenInstanceError):
                record.fix = "other"  # type: ignore[misc]

        with pytest.raises(TypeError):
            SiteShare(site, 1.0, 1.0, "cpu", "")  # type: ignore[call-arg]

        assert "app.py:1 in main" in str(event)


def first_step_sleep_and_spin() -> None:
    """Block as the blog posts' examples do: compute, then sleep, in the first step."""
    spin(BLOCK)
    time.sleep(BLOCK / 3)


async def asyncio_first_step() -> None:
    first_step_sleep_and_spin()
    await asyncio.sleep(0.01)


async def trio_first_step() -> None:
    first_step_sleep_and_spin()
    await trio.sleep(0.01)


async def trio_tasks_at_launch() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio_first_step)
        nursery.start_soon(trio.sleep, 0.01)


SPIN_LINE = spin.__code__.co_firstlineno + 3
FIRST_STEP_RUNS = [
    pytest.param(lambda: asyncio.run(asyncio_first_step()), id="asyncio"),
    pytest.param(lambda: uvloop.run(asyncio_first_step()), id="asyncio+uvloop"),
    pytest.param(lambda: trio.run(trio_first_step), id="trio"),
    pytest.param(lambda: trio.run(trio_tasks_at_launch), id="trio-tasks-at-launch"),
]


class TestFirstStep:
    """A loop is watched from its first step, before anything is awaited."""

    @pytest.mark.usefixtures("wakeups")
    @pytest.mark.parametrize("run", FIRST_STEP_RUNS)
    def test_install_before_run(self, run: Callable[[], object]) -> None:
        """Under install(), a block before the first await of the run is reported."""
        watcher = offload.monitor.install(THRESHOLD, log=False)
        try:
            run()
        finally:
            watcher.uninstall()

        event = only_event(watcher)
        assert event.site is not None
        assert (event.site.name, event.site.lineno) == ("spin", SPIN_LINE)
        assert event.kind == "cpu"
        assert [share.site.name for share in event.split] == ["spin", "first_step_sleep_and_spin"]
        assert event.stack[0].name in ("asyncio_first_step", "trio_first_step")

    @pytest.mark.parametrize("run", FIRST_STEP_RUNS[:3])
    def test_the_second_run_too(self, run: Callable[[], object]) -> None:
        """Every run under one install() is watched from its first step."""
        watcher = offload.monitor.install(THRESHOLD, log=False)
        try:
            run()
            run()
        finally:
            watcher.uninstall()

        assert [event.site and event.site.name for event in long_events(watcher)] == [
            "spin",
            "spin",
        ]


def spin_then_sleep_around(short: float) -> None:
    time.sleep(short)
    spin(2 * short)
    time.sleep(short)


class TestSiteIsWhereTheTimeWent:
    """The site is the site of the step that took the most time, whatever its kind."""

    async def test_longest_site_wins_over_the_kind_of_most_time(self) -> None:
        """Sleep, compute twice as long, sleep: the site is the computation, and so is the fix."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            spin_then_sleep_around(BLOCK / 2)

        event = only_event(monitor)
        assert [share.site.name for share in event.split] == ["spin_then_sleep_around", "spin"] + [
            "spin_then_sleep_around"
        ]
        assert event.site is not None
        assert event.site.name == "spin"
        main = max(event.split, key=lambda share: share.duration)
        assert (main.site, main.kind) == (event.site, "cpu")
        assert event.fix == "decorate spin() with @offload.process and await it"


def make_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> types.ModuleType:
    """Install a module as a third-party package would be: found in site-packages."""
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    (site_dir / "blocklib.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(site_dir))  # pyright: ignore[reportUnknownMemberType]
    places = _places.Places()
    places._site.insert(0, os.path.normcase(os.path.realpath(site_dir)) + os.sep)
    monkeypatch.setattr(_places, "_places", places)
    monkeypatch.delitem(sys.modules, "blocklib", raising=False)
    return importlib.import_module("blocklib")


LIBRARY = """
    import threading
    import time


    def spin(seconds):
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            pass


    async def get(url):
        time.sleep(0.3)
        return url


    class Client:
        def __init__(self, seconds):
            self._lock = threading.Lock()
            spin(seconds)

        def crunch(self, seconds):
            spin(seconds)
"""


class Holder:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def crunch(self) -> None:
        spin(BLOCK)


class TestFixes:
    """Every fix works when pasted in."""

    async def test_sleep_becomes_the_backends_sleep(
        self, anyio_backend: tuple[str, object]
    ) -> None:
        """``time.sleep(x)`` in a coroutine gets the running backend's own sleep."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            time.sleep(BLOCK)  # noqa: ASYNC251

        assert only_event(monitor).fix == f"await {anyio_backend[0]}.sleep(BLOCK)"

    async def test_async_library_call_is_not_offloaded(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A library coroutine that blocks inside is named, never offloaded."""
        library = make_library(tmp_path, monkeypatch, LIBRARY)
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            line = next_line()
            await library.get("https://example.org")

        event = only_event(monitor)
        assert event.site is not None
        assert event.site.lineno == line
        assert "offload.call(library.get" not in event.fix
        assert event.fix.startswith("library.get() is async and blocks the loop inside blocklib")

    async def test_class_is_not_sent_to_a_process(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Building a library's object goes to a thread: the object could not come back."""
        library = make_library(tmp_path, monkeypatch, LIBRARY)
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            library.Client(BLOCK)

        event = only_event(monitor)
        assert event.kind == "cpu"
        assert event.fix == "await offload.call(library.Client, BLOCK)"

    async def test_method_of_unpicklable_object_is_not_sent(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A library method of an object that does not pickle goes to a thread."""
        library = make_library(tmp_path, monkeypatch, LIBRARY)
        client = library.Client(0)
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            client.crunch(BLOCK)

        assert only_event(monitor).fix == "await offload.call(client.crunch, BLOCK)"

    async def test_user_method_moves_to_a_function(self) -> None:
        """A method of the user's is not decorated for a process: its object would travel."""
        holder = Holder()
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            holder.crunch()

        event = only_event(monitor)
        assert event.site is not None
        assert event.site.name == "spin"  # the innermost user frame; then its caller:
        assert "@offload.process" in event.fix

    async def test_local_function_moves_to_module_level(self) -> None:
        """A local function cannot reach a process: the fix says to move it to module level."""

        def crunch_locally() -> None:
            deadline = time.perf_counter() + BLOCK
            while time.perf_counter() < deadline:
                pass

        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            crunch_locally()

        assert only_event(monitor).fix == (
            "move crunch_locally() to module level and decorate it with @offload.process "
            "and await it"
        )

    async def test_outer_slow_call_is_named(self) -> None:
        """In ``json.dumps(list(range(n)))`` the slow call, the outer one, is offloaded."""
        # A C call that holds the GIL is seen when it returns: a busy machine can leave some,
        # or once in a while all, of its time on the next line (the with block's exit). So
        # the scenario runs until the line is seen (at most five times); its fix must hold.
        fixes: set[str] = set()
        for _ in range(5):
            with offload.monitor(THRESHOLD, log=False) as monitor:
                await anyio.lowlevel.checkpoint()
                line = next_line()
                json.dumps(list(range(3_000_000)))

            fixes = {
                share.fix
                for event in monitor.events
                for share in event.split
                if share.site.lineno == line
            }
            if fixes:
                break

        assert fixes == {"await offload.process.call(json.dumps, list(range(3000000)))"}


def lazy_import_tree(tmp_path: Path) -> None:
    """Make a package whose import imports another that blocks while it loads."""
    package = tmp_path / "lazypkg"
    package.mkdir()
    (package / "__init__.py").write_text("from . import inner\n")
    (package / "inner.py").write_text("from . import deepest\n")
    (package / "deepest.py").write_text("import time\n\ntime.sleep(0.3)\n")


class TestImportMachinery:
    """A stall inside a lazy import logs the import machinery as one line."""

    async def test_frames_are_folded(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Runs of importlib frames become one line in the log; the stack keeps them."""
        lazy_import_tree(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))  # pyright: ignore[reportUnknownMemberType]
        for name in ("lazypkg", "lazypkg.inner", "lazypkg.deepest"):
            monkeypatch.delitem(sys.modules, name, raising=False)

        caplog.set_level(logging.WARNING, logger="offload")
        with offload.monitor(THRESHOLD) as monitor:
            await anyio.lowlevel.checkpoint()
            importlib.import_module("lazypkg")

        event = only_event(monitor)
        assert any(frame.filename.startswith("<frozen importlib") for frame in event.stack)
        message = str(event)
        assert "<frozen importlib" not in message
        assert message.count("frames of Python's import machinery]") == 3
        assert 'deepest.py", line 3, in <module>' in message
        assert event.fix.startswith("importing lazypkg.deepest blocks the loop while its code")
        assert message in [record.getMessage() for record in caplog.records]


def gil_hog(stop: threading.Event) -> None:
    while not stop.is_set():
        pass


HOG_LINE = gil_hog.__code__.co_firstlineno + 1


class TestBusyThreads:
    """Starvation names the threads that held the GIL, and the function each ran."""

    async def test_offloaded_hogs_are_named(self, caplog: pytest.LogCaptureFixture) -> None:
        """Offloaded CPU-bound functions that starve the loop are its busy_threads."""
        caplog.set_level(logging.WARNING, logger="offload")
        stop = threading.Event()
        pool = new_pool(max_workers=6)
        monitor = offload.monitor(0.05)

        async def hog() -> None:
            await pool.call(gil_hog, stop)

        try:
            async with pool, anyio.create_task_group() as tasks:
                for _ in range(6):
                    tasks.start_soon(hog)

                await until(lambda: pool.stats().busy == 6)
                with monitor:
                    await until(
                        lambda: any(e.busy_threads for e in monitor.events),
                        "a starvation event that names its threads",
                    )

                stop.set()
        finally:
            stop.set()

        event = next(event for event in monitor.events if event.busy_threads)
        assert event.kind == "starvation"
        assert event.site is None
        assert isinstance(event.busy_threads[0], offload.ThreadShare)
        for busy in event.busy_threads:
            assert busy.name.startswith(f"offload-{pool.name}-")
            assert busy.site is not None
            assert busy.site.name == "gil_hog"
            assert busy.site.lineno in (HOG_LINE, HOG_LINE + 1)  # the loop's two lines
            assert 0 < busy.share <= 1

        assert event.fix.startswith(f"gil_hog() in thread 'offload-{pool.name}-")
        assert "decorate gil_hog() with @offload.process instead of a thread" in event.fix
        busiest = event.busy_threads[0].site
        assert busiest is not None
        assert f"test_monitor.py:{busiest.lineno} in gil_hog" in str(event)
        assert str(event) in [record.getMessage() for record in caplog.records]
        [row] = [row for row in monitor.report().rows if row.kind == "starvation"]
        assert row.busy_threads
        assert {busy.site.name if busy.site else "" for busy in row.busy_threads} == {"gil_hog"}
        assert "in gil_hog" in str(monitor.report())


def two_sites() -> None:
    time.sleep(BLOCK / 2)
    spin(BLOCK)


class TestOtherThreadClocks:
    """The watchdog reads other threads' CPU clocks safely, even as they exit."""

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux kernel clock")
    def test_clock_of_a_live_thread_is_its_cpu_time(self) -> None:
        """A thread's clock, made from its kernel id, reads that thread's CPU time."""
        clock = _clocks.native_thread_clock(threading.get_native_id())
        assert clock == time.pthread_getcpuclockid(threading.get_ident())

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux kernel clock")
    def test_clock_of_an_exited_thread_is_none(self) -> None:
        """A thread that has exited has no clock (asking pthread for it read freed memory and
        crashed ``python -m offload watch`` as a pool's threads exited)."""
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()  # the Python thread is done; the kernel's may linger a moment
        native_id = thread.native_id
        assert native_id is not None
        spin_until(
            lambda: not os.path.exists(f"/proc/self/task/{native_id}"), "the kernel thread ends"
        )
        assert _clocks.native_thread_clock(native_id) is None


class TestReportCounts:
    """The report's summary and its rows agree."""

    async def test_one_event_at_two_sites(self) -> None:
        """One step that blocked at two sites reads as one event at two sites, one row each."""
        with offload.monitor(THRESHOLD, log=False) as monitor:
            await anyio.lowlevel.checkpoint()
            two_sites()

        only_event(monitor)
        report = monitor.report()
        text = str(report)
        assert [row.count for row in report.rows] == [1, 1]
        first = text.splitlines()[0]
        assert first.startswith("offload.monitor: 1 event past 0.1 s, ")
        assert first.endswith(
            "s in all, at 2 sites (an event that blocked at several sites counts in each):"
        )
        assert text.splitlines()[2].split()[0] == "events"

    def test_header_counts_sites_and_kinds(self) -> None:
        """The first line counts the events, the sites, and the kinds with no line to blame."""
        site = traceback.FrameSummary("app.py", 1, "main", line="x()")
        rows = (
            ReportRow(kind="cpu", site=site, count=2, total=1.0, max=0.6, fix="f"),
            ReportRow(kind="starvation", site=None, count=1, total=0.25, max=0.25, fix="g"),
        )
        text = str(Report(threshold=0.1, events=3, rows=rows))
        assert text.splitlines()[0] == (
            "offload.monitor: 3 events past 0.1 s, 1.25 s in all, at 1 site; starvation, "
            "with no single line to blame:"
        )
        assert sum(row.count for row in rows) == 3
