"""How well does ``offload.monitor`` find blocking code, and what does it cost?

A corpus of scenarios with known lines runs on asyncio, uvloop and trio, under three tools in
the same run: offload's monitor, pyleak's ``no_event_loop_blocking`` and asyncio's debug mode
(``slow_callback_duration``; asyncio and uvloop only). Per scenario it prints:

* line: in how many runs the tool named the right first-party line (for the mixed step: all
  three lines; for starvation by offloaded threads: the busy function's line, among the
  starving threads); for saturation and starvation, in how many runs it blamed a line on the
  loop (it must not);
  for the idle loop, in how many runs it reported anything (it must not);
* kind: in how many runs offload gave the right kind;
* latency: how long after the block started the tool knew (median);
* duration: reported duration over the true one (median);
* shares: the mixed step's time split between its three sites (truth: a third each).

Two scenarios are about how people first meet the monitor: a block in the first step of a
fresh loop (the tool watches from before the run: offload's ``install()``, asyncio's debug
mode from the start; pyleak cannot), and offloaded threads that starve the loop of the GIL.

Then the loop's throughput cost at the defaults (interleaved runs, medians) and the CPU an idle
loop costs under each tool.

Run: ``python benchmarks/monitor.py`` (about 5 minutes) or ``--quick`` (under a minute).
Needs ``pyleak`` for the comparison (skipped with a note when it is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
from _common import yielding_rate

import offload

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop does not build on Windows
    uvloop = None  # type: ignore[assignment]

try:
    import pyleak
except ImportError:  # pragma: no cover - optional peer
    pyleak = None  # type: ignore[assignment]

T = TypeVar("T")
HERE = os.path.abspath(__file__)
THRESHOLD = 0.1  # the monitor's default
QUIET = logging.getLogger("bench.quiet")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


def _site_lines() -> dict[str, int]:
    lines: dict[str, int] = {}
    with open(HERE, encoding="utf-8") as source:
        for number, line in enumerate(source, 1):
            match = re.search(r"# site: (\w[\w-]*)$", line)
            if match:
                lines[match.group(1)] = number

    return lines


LINES = _site_lines()


# ------------------------------------------------------------------------------------------
# The scenarios
# ------------------------------------------------------------------------------------------


@dataclass
class Truth:
    """What really happened in one run: when each site started and how long it took."""

    starts: list[float] = field(default_factory=list)  # time.time() of each site's start
    durations: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def site(self, name: str) -> Iterator[None]:
        self.starts.append(time.time())
        start = time.perf_counter()
        yield
        self.durations[name] = self.durations.get(name, 0.0) + time.perf_counter() - start


def crunch(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:  # site: cpu
        pass


def recv_from(sock: socket.socket) -> bytes:
    return sock.recv(1)  # site: recv


def read_file(path: str) -> bytes:
    with open(path, "rb") as file:  # site: file
        return file.read()


class Scenario:
    """A scenario: set up outside the tool's watch, run the body under it, tear down."""

    name = ""
    kind: str | None = None  # the right kind; None: nothing to blame
    sites: tuple[str, ...] = ()
    fresh = False  # the body is the run's first step: the tool must watch before the loop
    busy = False  # the sites are in other threads, named as busy threads

    def __init__(self, block: float) -> None:
        self.block = block

    def setup(self) -> None:
        pass

    async def body(self, truth: Truth) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        pass


class Sleep(Scenario):
    name, kind, sites = "time.sleep", "blocking", ("sleep",)

    async def body(self, truth: Truth) -> None:
        await anyio.sleep(0.02)
        with truth.site("sleep"):
            time.sleep(self.block)  # noqa: ASYNC251  # site: sleep

        await anyio.sleep(0.02)


class Recv(Scenario):
    name, kind, sites = "socket recv (helper)", "blocking", ("recv",)

    def setup(self) -> None:
        self.left, self.right = socket.socketpair()
        self.timer = threading.Timer(0, self.right.send, (b"x",))

    async def body(self, truth: Truth) -> None:
        await anyio.sleep(0.02)
        self.timer.interval = self.block
        self.timer.start()
        with truth.site("recv"):
            recv_from(self.left)

        await anyio.sleep(0.02)

    def teardown(self) -> None:
        self.timer.join()
        self.left.close()
        self.right.close()


class FileRead(Scenario):
    name, kind, sites = "file read (slow writer)", "blocking", ("file",)

    def setup(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.path = os.path.join(self.directory, "fifo")
        os.mkfifo(self.path)
        self.writer = threading.Thread(target=self._write)

    def _write(self) -> None:
        time.sleep(self.block)
        with open(self.path, "wb") as file:
            file.write(b"x")

    async def body(self, truth: Truth) -> None:
        await anyio.sleep(0.02)
        self.writer.start()
        with truth.site("file"):
            read_file(self.path)

        await anyio.sleep(0.02)

    def teardown(self) -> None:
        self.writer.join()
        os.unlink(self.path)
        os.rmdir(self.directory)


SQL = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
SQL += "SELECT count(*) FROM c"
_SQL_RATE: list[float] = []


class Sqlite(Scenario):
    name, kind, sites = "sqlite query", "cpu", ("sqlite",)

    def setup(self) -> None:
        self.connection = sqlite3.connect(":memory:", check_same_thread=False)
        if not _SQL_RATE:
            start = time.perf_counter()
            self.connection.execute(SQL, (300_000,)).fetchone()
            _SQL_RATE.append(300_000 / (time.perf_counter() - start))

        self.rows = int(_SQL_RATE[0] * self.block)

    async def body(self, truth: Truth) -> None:
        await anyio.sleep(0.02)
        with truth.site("sqlite"):
            self.connection.execute(SQL, (self.rows,)).fetchone()  # site: sqlite

        await anyio.sleep(0.02)

    def teardown(self) -> None:
        self.connection.close()


class Cpu(Scenario):
    name, kind, sites = "pure-Python CPU loop", "cpu", ("cpu",)

    async def body(self, truth: Truth) -> None:
        await anyio.sleep(0.02)
        with truth.site("cpu"):
            crunch(self.block)

        await anyio.sleep(0.02)


_PAYLOAD: list[Any] = []


class Json(Scenario):
    name, kind, sites = "large json.dumps", "cpu", ("json",)

    def setup(self) -> None:
        if not _PAYLOAD:
            probe = {f"k{i}": [i, str(i) * 10, {"a": i}] for i in range(50_000)}
            start = time.perf_counter()
            json.dumps(probe)
            size = int(50_000 * self.block / (time.perf_counter() - start))
            _PAYLOAD.append({f"k{i}": [i, str(i) * 10, {"a": i}] for i in range(size)})

    async def body(self, truth: Truth) -> None:
        await anyio.sleep(0.02)
        with truth.site("json"):
            json.dumps(_PAYLOAD[0])  # site: json

        await anyio.sleep(0.02)


class Mixed(Scenario):
    name, kind, sites = "one step, three sites", "blocking", ("mixed-sleep", "cpu", "recv")

    def setup(self) -> None:
        self.left, self.right = socket.socketpair()
        self.timer = threading.Timer(0, self.right.send, (b"x",))

    async def body(self, truth: Truth) -> None:
        third = self.block / 3
        await anyio.sleep(0.02)
        with truth.site("mixed-sleep"):
            time.sleep(third)  # noqa: ASYNC251  # site: mixed-sleep

        with truth.site("cpu"):
            crunch(third)

        self.timer.interval = third
        self.timer.start()
        with truth.site("recv"):
            recv_from(self.left)

        await anyio.sleep(0.02)

    def teardown(self) -> None:
        self.timer.join()
        self.left.close()
        self.right.close()


async def _short_steps(until: float) -> None:
    while time.perf_counter() < until:
        deadline = time.perf_counter() + 0.001
        while time.perf_counter() < deadline:
            pass

        await anyio.lowlevel.checkpoint()


class Saturation(Scenario):
    name, kind, sites = "saturation (many short steps)", "saturation", ()

    async def body(self, truth: Truth) -> None:
        until = time.perf_counter() + 2 * self.block
        async with anyio.create_task_group() as tasks:
            for _ in range(150):
                tasks.start_soon(_short_steps, until)


def _hog(stop: threading.Event) -> None:
    while not stop.is_set():
        pass


class Starvation(Scenario):
    name, kind, sites = "starvation (CPU in threads)", "starvation", ()

    def setup(self) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=_hog, args=(self.stop,)) for _ in range(6)]
        for thread in self.threads:
            thread.start()

    async def body(self, truth: Truth) -> None:
        until = time.perf_counter() + 2 * self.block
        while time.perf_counter() < until:  # noqa: ASYNC110 - the loop's light own work
            await anyio.sleep(0.005)

    def teardown(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


class FirstStep(Scenario):
    """The blog posts' example: the program blocks before its first await.

    The tool must watch before the loop starts: offload under ``install()``, asyncio's debug
    mode from the run's start (``debug=True``); pyleak cannot, it starts inside the loop.
    """

    name, kind, sites = "first step of a fresh loop", "cpu", ("cpu",)
    fresh = True

    async def body(self, truth: Truth) -> None:
        with truth.site("cpu"):
            crunch(self.block)

        await anyio.sleep(0.02)


_POOL_NAMES = itertools.count()


def _offloaded_hog(stop: threading.Event) -> None:
    while not stop.is_set():  # site: hog
        pass


class OffloadedStarvation(Scenario):
    """Offloaded CPU-bound functions hold the GIL: the tool must name the busy function."""

    name, kind, sites = "starvation by offloaded threads", "starvation", ("hog",)
    busy = True

    def setup(self) -> None:
        self.stop = threading.Event()

    async def body(self, truth: Truth) -> None:
        pool = offload.ThreadPool(f"bench-hogs-{next(_POOL_NAMES)}", max_workers=6)
        async with pool, anyio.create_task_group() as tasks:
            for _ in range(6):
                tasks.start_soon(pool.call, _offloaded_hog, self.stop)

            truth.starts.append(time.time())
            until = time.perf_counter() + 2 * self.block
            while time.perf_counter() < until:  # noqa: ASYNC110 - the loop's light own work
                await anyio.sleep(0.005)

            self.stop.set()

    def teardown(self) -> None:
        self.stop.set()


class Idle(Scenario):
    name, kind, sites = "idle loop", None, ()

    async def body(self, truth: Truth) -> None:
        await anyio.sleep(2 * self.block)


SCENARIOS: list[type[Scenario]] = [
    Sleep,
    Recv,
    FileRead,
    Sqlite,
    Cpu,
    Json,
    Mixed,
    Saturation,
    Starvation,
    FirstStep,
    OffloadedStarvation,
    Idle,
]


# ------------------------------------------------------------------------------------------
# The tools, and what each reported, in one shape
# ------------------------------------------------------------------------------------------


@dataclass
class Report:
    """One event as a tool reported it."""

    kind: str | None
    line: int | None  # first-party line named, if any
    duration: float
    known_at: float  # time.time() when the tool knew
    shares: dict[int, float] = field(default_factory=dict)  # line -> seconds
    busy: set[int] = field(default_factory=set)  # first-party lines of busy threads


def _ours(filename: str) -> bool:
    return os.path.abspath(filename) == HERE


def _first_party(frames: list[traceback.FrameSummary]) -> int | None:
    for frame in reversed(frames):
        if _ours(frame.filename):
            return frame.lineno

    return None


@contextlib.asynccontextmanager
async def watch_offload(reports: list[Report]) -> AsyncIterator[None]:
    with offload.monitor(THRESHOLD, log=False) as monitor:
        yield

    offload_reports(monitor, reports)


def offload_reports(monitor: offload.Monitor, reports: list[Report]) -> None:
    for event in monitor.events:
        shares: dict[int, float] = {}
        for share in event.split:
            if _ours(share.site.filename) and share.site.lineno is not None:
                shares[share.site.lineno] = shares.get(share.site.lineno, 0.0) + share.duration

        line = event.site.lineno if event.site and _ours(event.site.filename) else None
        busy = {
            thread.site.lineno
            for thread in event.busy_threads
            if thread.site is not None and _ours(thread.site.filename) and thread.site.lineno
        }
        reports.append(
            Report(
                event.kind,
                line,
                event.duration,
                event.started + event.detected_after,
                shares,
                busy,
            )
        )


@contextlib.asynccontextmanager
async def watch_pyleak(reports: list[Report]) -> AsyncIterator[None]:
    assert pyleak is not None
    from pyleak.eventloop import _EventLoopBlockDetector

    known: dict[int, float] = {}
    original = _EventLoopBlockDetector._add_block

    def add_block(self: Any, duration: float, blocking_stack: Any = None) -> None:
        before = len(self.detected_blocks)
        original(self, duration, blocking_stack)
        if len(self.detected_blocks) > before:
            known[id(self.detected_blocks[-1])] = time.time()

    _EventLoopBlockDetector._add_block = add_block  # type: ignore[method-assign]
    context = pyleak.no_event_loop_blocking(action="log", logger=QUIET, threshold=THRESHOLD)
    try:
        async with context:
            yield
    finally:
        _EventLoopBlockDetector._add_block = original  # type: ignore[method-assign]

    shares: dict[int, float] = {}
    for block in context.detector.detected_blocks:
        line = _first_party(block.blocking_stack or [])
        if line is not None:
            shares[line] = shares.get(line, 0.0) + block.duration

        reports.append(Report(None, line, block.duration, known.get(id(block), time.time())))

    if reports:
        reports[0].shares = shares


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[logging.LogRecord, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record, time.time()))


@contextlib.asynccontextmanager
async def watch_asyncio_debug(reports: list[Report]) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    with _asyncio_debug_log(reports):
        loop.set_debug(True)
        loop.slow_callback_duration = THRESHOLD
        try:
            yield
        finally:
            loop.set_debug(False)


@contextlib.contextmanager
def _asyncio_debug_log(reports: list[Report]) -> Iterator[None]:
    """Collect asyncio's slow-callback warnings (its default threshold is ours, 0.1 s)."""
    handler = _Collect()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate

    for record, when in handler.records:
        message = record.getMessage()
        match = re.search(r"took ([\d.]+) seconds", message)
        if not match:
            continue

        line = None
        for filename, number in re.findall(r"running at ([^:>]+):(\d+)", message):
            if _ours(filename):
                line = int(number)

        reports.append(Report(None, line, float(match.group(1)), when))


TOOLS: dict[str, Callable[[list[Report]], contextlib.AbstractAsyncContextManager[None]]] = {
    "offload": watch_offload,
    "pyleak": watch_pyleak,
    "asyncio debug": watch_asyncio_debug,
}


def backends() -> dict[str, tuple[str, dict[str, Any]]]:
    found: dict[str, tuple[str, dict[str, Any]]] = {"asyncio": ("asyncio", {})}
    if uvloop is not None:
        found["uvloop"] = ("asyncio", {"loop_factory": uvloop.new_event_loop})

    try:
        import trio  # noqa: F401
    except ImportError:  # pragma: no cover - trio is in the bench group
        pass
    else:
        found["trio"] = ("trio", {})

    return found


def applies(tool: str, backend: str, scenario_type: type[Scenario] | None = None) -> bool:
    if tool == "pyleak":
        return pyleak is not None and not (scenario_type and scenario_type.fresh)

    if tool == "asyncio debug":
        return backend != "trio"

    return True


# ------------------------------------------------------------------------------------------
# Accuracy
# ------------------------------------------------------------------------------------------


@dataclass
class Run:
    truth: Truth
    reports: list[Report]


def run_once(scenario_type: type[Scenario], block: float, tool: str, backend: str) -> Run:
    scenario = scenario_type(block)
    name, options = backends()[backend]
    truth = Truth()
    reports: list[Report] = []

    async def main() -> None:
        async with TOOLS[tool](reports):
            await scenario.body(truth)

    async def fresh() -> None:
        await scenario.body(truth)

    scenario.setup()
    try:
        if not scenario.fresh:
            anyio.run(main, backend=name, backend_options=options)
        elif tool == "offload":
            watcher = offload.monitor.install(THRESHOLD, log=False)
            try:
                anyio.run(fresh, backend=name, backend_options=options)
            finally:
                watcher.uninstall()

            offload_reports(watcher, reports)
        else:  # asyncio debug, on from the run's start
            with _asyncio_debug_log(reports):
                anyio.run(fresh, backend=name, backend_options={**options, "debug": True})
    finally:
        scenario.teardown()

    return Run(truth, reports)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _percent(hits: int, total: int) -> str:
    return f"{100 * hits / total:3.0f}%" if total else "  - "


def summarize(scenario_type: type[Scenario], runs: list[Run], tool: str) -> dict[str, Any]:
    lines = [LINES[site] for site in scenario_type.sites]
    right = kind_ok = blamed = noisy = silent = 0
    latencies: list[float] = []
    ratios: list[float] = []
    shares: list[list[float]] = []
    for run in runs:
        reports = run.reports
        named = {report.line for report in reports} | {
            line for report in reports for line in report.shares
        }
        if scenario_type.busy:  # the line is a busy thread's, named by starvation events
            named = {line for report in reports for line in report.busy}

        if scenario_type.sites:
            if all(line in named for line in lines):
                right += 1

            main = [
                r
                for r in reports
                if r.line in lines or set(r.shares) & set(lines) or r.busy & set(lines)
            ]
            if any(report.kind == scenario_type.kind for report in main):
                kind_ok += 1

            if main and run.truth.starts:
                latencies.append(min(r.known_at for r in main) - run.truth.starts[0])
                true_total = sum(run.truth.durations.values())
                if true_total:  # a starvation has no true duration of its own
                    ratios.append(sum(r.duration for r in main) / true_total)

            if len(lines) > 1 and main:
                seconds = [0.0] * len(lines)
                for report in main:
                    source = report.shares or (
                        {report.line: report.duration} if report.line else {}
                    )
                    for line, value in source.items():
                        if line in lines:
                            seconds[lines.index(line)] += value

                total = sum(seconds)
                if total:
                    shares.append([value / total for value in seconds])
        elif scenario_type.kind is None:
            noisy += bool(reports)
        else:
            blamed += any(report.line is not None for report in reports)
            kind_ok += any(report.kind == scenario_type.kind for report in reports)
            silent += not reports  # the loop never lagged past the threshold that run

    return {
        "runs": len(runs),
        "right": right,
        "kind_ok": kind_ok,
        "blamed": blamed,
        "noisy": noisy,
        "silent": silent,
        "latency": _median(latencies),
        "ratio": _median(ratios),
        "shares": [statistics.median(column) for column in zip(*shares, strict=True)]
        if shares
        else None,
    }


def accuracy(block: float, runs: int, backend_names: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for scenario_type in SCENARIOS:
        print(
            f"\n{scenario_type.name}  (truth: {scenario_type.kind or 'no event'}"
            + (
                f", lines {', '.join(str(LINES[s]) for s in scenario_type.sites)})"
                if scenario_type.sites
                else ")"
            )
        )
        print(
            f"  {'backend':<9} {'tool':<14} {'line':>6} {'kind':>6} {'latency':>9} "
            f"{'duration':>9}  notes"
        )
        for backend in backend_names:
            for tool in TOOLS:
                if not applies(tool, backend, scenario_type):
                    continue

                collected = [run_once(scenario_type, block, tool, backend) for _ in range(runs)]
                summary = summarize(scenario_type, collected, tool)
                results[f"{scenario_type.name}|{backend}|{tool}"] = summary
                print("  " + _row(scenario_type, backend, tool, summary))

    return results


def _row(scenario_type: type[Scenario], backend: str, tool: str, s: dict[str, Any]) -> str:
    total = s["runs"]
    if scenario_type.sites:
        line = _percent(s["right"], total)
        notes = ""
        if s["shares"]:
            notes = "shares " + " / ".join(f"{value:.0%}" for value in s["shares"])
    elif scenario_type.kind is None:
        line = "  - "
        notes = f"reported something in {_percent(s['noisy'], total).strip()} of runs"
    else:
        line = "  - "
        notes = f"blamed a line in {_percent(s['blamed'], total).strip()} of runs"
        if s["silent"]:
            notes += f", no event (no lag past the threshold) in {s['silent']}"

    kind = _percent(s["kind_ok"], total) if tool == "offload" and scenario_type.kind else "  - "
    latency = f"{s['latency'] * 1000:6.0f} ms" if s["latency"] is not None else "      -  "
    ratio = f"{s['ratio']:8.2f}x" if s["ratio"] is not None else "      -  "
    return f"{backend:<9} {tool:<14} {line:>6} {kind:>6} {latency:>9} {ratio:>9}  {notes}"


# ------------------------------------------------------------------------------------------
# Cost: loop throughput and idle CPU
# ------------------------------------------------------------------------------------------


def _with_tool(
    tool: str | None, body: Callable[[], Coroutine[Any, Any, T]]
) -> Callable[[], Coroutine[Any, Any, T]]:
    async def main() -> T:
        if tool is None:
            return await body()

        reports: list[Report] = []
        async with TOOLS[tool](reports):
            return await body()

    return main


def throughput(backend: str, tool: str | None, seconds: float) -> float:
    """Steps per second of 50 tasks that each yield to the loop in a loop."""

    async def body() -> float:
        return await yielding_rate(seconds)

    name, options = backends()[backend]
    return anyio.run(_with_tool(tool, body), backend=name, backend_options=options)


def idle_cpu(backend: str, tool: str | None, seconds: float) -> float:
    """The CPU an idle loop uses, as a fraction of one core."""

    async def body() -> float:
        await anyio.sleep(0.05)
        start_cpu, start = time.process_time(), time.perf_counter()
        await anyio.sleep(seconds)
        return (time.process_time() - start_cpu) / (time.perf_counter() - start)

    name, options = backends()[backend]
    return anyio.run(_with_tool(tool, body), backend=name, backend_options=options)


def costs(
    backend_names: list[str], repeats: int, seconds: float, idle_seconds: float
) -> dict[str, Any]:
    """Throughput and idle CPU of each tool against no tool, measured in adjacent pairs.

    On a shared machine the load drifts from one second to the next: each tool run is
    compared with the no-tool runs just before and after it, and the ratios' median is kept.
    """
    results: dict[str, Any] = {}
    print(
        f"\nCost at the defaults (each run against the no-tool runs around it, {repeats} times):"
    )
    print("loop throughput of 50 tasks yielding, and the CPU an idle loop uses (% of one core):")
    print(
        f"  {'backend':<9} {'tool':<14} {'steps/s':>10} {'cost':>7} {'idle CPU':>9} {'extra':>7}"
    )
    for backend in backend_names:
        tools = [tool for tool in TOOLS if applies(tool, backend)]
        rates: dict[str, list[float]] = {tool: [] for tool in tools}
        ratios: dict[str, list[float]] = {tool: [] for tool in tools}
        base_rates: list[float] = []
        throughput(backend, None, seconds / 2)  # warm up
        for _ in range(repeats):
            order = tools[:]
            random.shuffle(order)
            before = throughput(backend, None, seconds)
            base_rates.append(before)
            for tool in order:
                rate = throughput(backend, tool, seconds)
                after = throughput(backend, None, seconds)
                base_rates.append(after)
                rates[tool].append(rate)
                ratios[tool].append(rate / ((before + after) / 2))
                before = after

        idles: dict[str | None, list[float]] = {variant: [] for variant in [None, *tools]}
        for _ in range(max(1, repeats // 3)):
            for variant in [None, *tools]:
                idles[variant].append(idle_cpu(backend, variant, idle_seconds))

        base_idle = statistics.median(idles[None])
        print(
            f"  {backend:<9} {'no tool':<14} {statistics.median(base_rates):>10,.0f} "
            f"{'':>7} {base_idle:>9.2%}"
        )
        for tool in tools:
            cost = 1 - statistics.median(ratios[tool])
            idle = statistics.median(idles[tool])
            extra = idle - base_idle
            results[f"{backend}|{tool}"] = {
                "rate": statistics.median(rates[tool]),
                "cost": cost,
                "idle": idle,
                "extra": extra,
            }
            print(
                f"  {backend:<9} {tool:<14} {statistics.median(rates[tool]):>10,.0f} "
                f"{cost:>7.1%} {idle:>9.2%} {extra:>7.2%}"
            )

    return results


def headline(
    accuracy_results: dict[str, Any], cost_results: dict[str, Any], backend_names: list[str]
) -> None:
    print("\nHeadline (all backends; offload vs the peers where they apply):")
    for tool in TOOLS:
        right = total = kind_ok = blamed = blame_total = 0
        latencies: list[float] = []
        ratios: list[float] = []
        for key, s in accuracy_results.items():
            name, _, key_tool = key.split("|")
            if key_tool != tool:
                continue

            scenario_type = next(t for t in SCENARIOS if t.name == name)
            if scenario_type.sites:
                right += s["right"]
                total += s["runs"]
                kind_ok += s["kind_ok"]
                if s["latency"] is not None:
                    latencies.append(s["latency"])

                if s["ratio"] is not None:
                    ratios.append(s["ratio"])
            elif scenario_type.kind is not None:
                blamed += s["blamed"]
                blame_total += s["runs"]

        if not total:
            continue

        costs_of_tool = [v["cost"] for k, v in cost_results.items() if k.split("|")[1] == tool]
        extras = [v["extra"] for k, v in cost_results.items() if k.split("|")[1] == tool]
        parts = [f"right line in {right / total:.0%} of runs"]
        if tool == "offload":
            parts.append(f"right kind in {kind_ok / total:.0%}")

        if latencies:
            parts.append(f"knew after {statistics.median(latencies) * 1000:.0f} ms (median)")

        if ratios:
            parts.append(f"duration x{statistics.median(ratios):.2f} of the truth")

        print(f"  {tool:<14} " + ", ".join(parts))
        parts = [f"saturation/starvation blamed on a line in {blamed}/{blame_total} runs"]
        if costs_of_tool:
            parts.append(f"throughput cost {statistics.median(costs_of_tool):.1%}")

        if extras:
            parts.append(f"idle CPU +{statistics.median(extras):.2%} of a core")

        print(f"  {'':<14} " + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (< 1 minute)")
    parser.add_argument("--runs", type=int, help="runs per scenario, backend and tool")
    parser.add_argument("--backend", action="append", help="only these backends")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 5)
    block = 0.2 if args.quick else 0.3
    names = args.backend or list(backends())
    print(
        f"offload.monitor benchmark: threshold {THRESHOLD} s, blocks of {block} s, {runs} run(s) "
        f"per scenario, backend and tool; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    if pyleak is None:
        print("(pyleak is not installed: pip install pyleak to compare)")

    logging.getLogger("offload").addHandler(logging.NullHandler())
    accuracy_results = accuracy(block, runs, names)
    cost_results = costs(
        names,
        repeats=5 if args.quick else 15,
        seconds=0.1 if args.quick else 0.25,
        idle_seconds=0.5 if args.quick else 2.0,
    )
    headline(accuracy_results, cost_results, names)


if __name__ == "__main__":
    main()
