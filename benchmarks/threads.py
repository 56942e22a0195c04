"""Thread offloading: offload against its peers on asyncio, asyncio+uvloop and trio.

Four workloads (DESIGN.md section 9), each measured for every contender in every round:

(a) 5,000 sequential no-op calls: microseconds per call (round trip).
(b) 20,000 no-op calls from 100 concurrent tasks: calls per second (throughput).
(c) heartbeat lag p99 while 200 ``time.sleep(0.01)`` calls run on 40 threads: a heartbeat task
    sleeps 1 ms in a loop and records how late each wake-up is (loop responsiveness).
(d) heartbeat lag p99 (and the longest gap between beats) while two CPU-bound calls run at
    once (a pure-Python loop of 5 M iterations each): a heartbeat task sleeps 10 ms in a loop.
    Measured twice: on a cold pool (the two calls are the first the process makes: each
    measurement runs in a fresh subprocess, so no thread, import or first use is paid in
    advance) and on a warm one (the same fresh subprocess, after two overlapping calls that
    start both threads). CPU-bound threads hold the GIL, so whatever makes the loop thread
    wait for it (a lock, a file read by an import) costs the loop a switch interval or more.

Fairness:

* One run, interleaved: for each round, for each backend, for each workload, every contender
  is measured once, and the order of the contenders rotates from round to round. The tables
  show medians across rounds, the min-max spread, and ratios against ``asyncio.to_thread``
  (asyncio, uvloop) or ``anyio.to_thread.run_sync`` (trio), oriented so that >1 is better.
* Every single measurement (one backend, workload, contender and round) runs in an event loop
  of its own: a fresh ``asyncio.Runner`` (the loop factory is the only difference between
  asyncio and uvloop; the event loop policy is never touched) or ``trio.run``. The threads
  alive before and after each run are compared; any that outlive their run are reported.
* Each contender is warmed up inside that same run before the clock starts, so thread
  start-up (and offload's per-loop pool start) is never timed in (a) and (b). Before the first
  round, an unrecorded pass runs every contender once, small, so that lazy imports and other
  first-in-the-process costs land in nobody's numbers.
* (a), (b) and (d) use each contender's default configuration, as users get it; the
  ``threads`` column shows how many threads that allows. (c) gives every contender 40 threads.
* The garbage collector stays on (allocation is part of a call's cost), after a
  ``gc.collect()`` just before the clock starts.

Run ``python benchmarks/threads.py --help`` for the options; benchmarks/README.md has more.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from _common import load_average, offload_source, run_asyncio, versions

import offload

# Whose versions the report names.
DISTRIBUTIONS = ("offload", "anyio", "trio", "uvloop", "asyncer", "starlette", "asgiref")

T = TypeVar("T")

Fn = Callable[[], object]
Caller = Callable[[], Awaitable[object]]
Job = Callable[[], Coroutine[Any, Any, None]]

HEARTBEAT = 0.001  # seconds the heartbeat task asks to sleep
CPU_HEARTBEAT = 0.01  # ... in (d)
SPIN = 5_000_000  # iterations of each CPU-bound call in (d)
JOIN_WAIT = 2.0  # seconds to wait for a run's threads to exit before calling them leaked


# -- the work ----------------------------------------------------------------------------------


def noop() -> None:
    return None


def sleep_10ms() -> None:
    time.sleep(0.01)


def sleep_50ms() -> None:
    # Warm-up for (c) and (d): long enough that all the calls overlap, so all threads start.
    time.sleep(0.05)


def spin() -> int:
    # (d): pure Python, holds the GIL but for the interpreter's forced switches.
    total = 0
    for i in range(SPIN):
        total += i

    return total


# -- backends ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backend:
    key: str
    title: str
    family: str  # "asyncio" or "trio": which contenders apply
    baseline: str  # the contender ratios are taken against
    module: str | None  # must be importable, or the backend is skipped


BACKENDS = (
    Backend("asyncio", "asyncio (stdlib event loop)", "asyncio", "to_thread", None),
    Backend("uvloop", "asyncio + uvloop", "asyncio", "to_thread", "uvloop"),
    Backend("trio", "trio", "trio", "anyio", "trio"),
)


def run(backend: Backend, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` in a new event loop of ``backend`` and return its result."""
    if backend.key == "asyncio":
        return run_asyncio(main)

    if backend.key == "uvloop":
        import uvloop

        return run_asyncio(main, uvloop.new_event_loop)

    import trio

    return trio.run(main)


async def gather(family: str, jobs: Sequence[Job]) -> None:
    """Run ``jobs`` concurrently in the running loop and wait for them all."""
    if family == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job)
    else:
        await asyncio.gather(*(job() for job in jobs))


async def sleep(family: str, seconds: float) -> None:
    if family == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


# -- contenders --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """A contender made ready inside a running loop: how to offload a function, and with how
    many threads at most."""

    wrap: Callable[[Fn], Caller]
    threads: int
    how: str


@dataclasses.dataclass(frozen=True)
class Contender:
    key: str
    label: str
    family: str  # "asyncio", "trio" or "any"
    module: str | None  # must be importable, or the contender is skipped
    setup: Callable[[int | None], Setup]  # threads: None = the contender's default


def _default_executor_threads() -> int:
    # What ThreadPoolExecutor() (the loop's lazily created default executor) allows.
    process_cpu_count: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    cpus = process_cpu_count() if process_cpu_count is not None else os.cpu_count()
    return min(32, (cpus or 1) + 4)


def _default_executor(threads: int | None) -> tuple[int, str]:
    """Give the running asyncio loop a default executor of ``threads`` threads, if set."""
    if threads is None:
        return _default_executor_threads(), "the loop's default executor"

    executor = ThreadPoolExecutor(threads, thread_name_prefix="bench-executor")
    asyncio.get_running_loop().set_default_executor(executor)  # shut down by the runner
    return threads, f"loop.set_default_executor(ThreadPoolExecutor({threads}))"


_pools: dict[int, offload.ThreadPool] = {}


def _offload(threads: int | None) -> Setup:
    if threads is None:
        return Setup(
            lambda fn: functools.partial(offload.call, fn),
            offload.thread.settings().max_workers,
            "offload.call (the default pool)",
        )

    pool = _pools.get(threads)
    if pool is None:  # a name is usable by one pool per process: make it once
        pool = _pools[threads] = offload.ThreadPool(f"bench{threads}", max_workers=threads)

    return Setup(
        lambda fn: functools.partial(pool.call, fn),
        threads,
        f'offload.ThreadPool("bench{threads}", max_workers={threads}).call',
    )


def _to_thread(threads: int | None) -> Setup:
    count, how = _default_executor(threads)
    return Setup(lambda fn: functools.partial(asyncio.to_thread, fn), count, how)


def _run_in_executor(threads: int | None) -> Setup:
    count, how = _default_executor(threads)
    loop = asyncio.get_running_loop()
    return Setup(lambda fn: functools.partial(loop.run_in_executor, None, fn), count, how)


def _anyio_limiter(threads: int | None) -> tuple[Any, int, str]:
    import anyio
    import anyio.to_thread

    if threads is None:
        default = anyio.to_thread.current_default_thread_limiter()
        return None, int(default.total_tokens), "anyio's default limiter"

    return anyio.CapacityLimiter(threads), threads, f"limiter=anyio.CapacityLimiter({threads})"


def _anyio(threads: int | None) -> Setup:
    import anyio.to_thread

    limiter, count, how = _anyio_limiter(threads)
    return Setup(
        lambda fn: functools.partial(anyio.to_thread.run_sync, fn, limiter=limiter), count, how
    )


def _asyncer(threads: int | None) -> Setup:
    from asyncer import asyncify

    limiter, count, how = _anyio_limiter(threads)
    return Setup(lambda fn: asyncify(fn, limiter=limiter), count, how)


def _starlette(threads: int | None) -> Setup:
    import anyio.to_thread
    from starlette.concurrency import run_in_threadpool

    # run_in_threadpool takes no limiter: it always uses anyio's default one (per event loop).
    default = anyio.to_thread.current_default_thread_limiter()
    how = "anyio's default limiter (run_in_threadpool takes no limiter)"
    if threads is not None:
        default.total_tokens = threads
        how = f"anyio's default limiter, total_tokens set to {threads} (no limiter argument)"

    return Setup(
        lambda fn: functools.partial(run_in_threadpool, fn), int(default.total_tokens), how
    )


def _asgiref(threads: int | None) -> Setup:
    from asgiref.sync import sync_to_async

    # thread_sensitive=False runs in the loop's default executor.
    count, how = _default_executor(threads)
    return Setup(lambda fn: sync_to_async(fn, thread_sensitive=False), count, how)


def _trio(threads: int | None) -> Setup:
    import trio
    import trio.to_thread

    if threads is None:
        limiter = trio.to_thread.current_default_thread_limiter()
        how = "trio's default limiter"
    else:
        limiter = trio.CapacityLimiter(threads)
        how = f"limiter=trio.CapacityLimiter({threads})"

    return Setup(
        lambda fn: functools.partial(trio.to_thread.run_sync, fn, limiter=limiter),
        int(limiter.total_tokens),
        how,
    )


# Row order of the tables: offload, the baseline(s), then the other peers.
CONTENDERS = (
    Contender("offload", "offload", "any", None, _offload),
    Contender("to_thread", "asyncio.to_thread", "asyncio", None, _to_thread),
    Contender("anyio", "anyio.to_thread.run_sync", "any", "anyio", _anyio),
    Contender("run_in_executor", "loop.run_in_executor(None)", "asyncio", None, _run_in_executor),
    Contender("trio", "trio.to_thread.run_sync", "trio", "trio", _trio),
    Contender("asyncer", "asyncer.asyncify", "any", "asyncer", _asyncer),
    Contender(
        "starlette", "starlette run_in_threadpool", "asyncio", "starlette.concurrency", _starlette
    ),
    Contender(
        "asgiref", "asgiref sync_to_async(thread_sensitive=False)", "asyncio", "asgiref", _asgiref
    ),
)
LABELS = {contender.key: contender.label for contender in CONTENDERS}


def _missing(module: str | None) -> str | None:
    """Return why ``module`` cannot be imported, or None if it can."""
    if module is None:
        return None

    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc})"

    return None


# -- workloads ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str  # "a", "b", "c", "d-cold", "d-warm"
    title: str
    unit: str
    higher_is_better: bool
    threads: int | None  # threads every contender gets; None: each its own default
    calls: int
    tasks: int  # concurrent tasks that make the calls
    fresh_process: bool = False  # each measurement in a new interpreter (a really cold pool)
    warm: bool = False  # (d): start the threads before the clock starts


@dataclasses.dataclass
class Measurement:
    value: float
    threads: int
    how: str
    extra: dict[str, float]
    raw: list[float] = dataclasses.field(default_factory=list)


def _percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile, nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def _sequential(setup: Setup, workload: Workload, warmup: int) -> Measurement:
    call = setup.wrap(noop)
    for _ in range(warmup):
        await call()

    n = workload.calls
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        await call()

    elapsed = time.perf_counter() - start
    return Measurement(elapsed / n * 1e6, setup.threads, setup.how, {"seconds": elapsed})


async def _concurrent(family: str, setup: Setup, workload: Workload, warmup: int) -> Measurement:
    call = setup.wrap(noop)

    def task(calls: int) -> Job:
        async def job() -> None:
            for _ in range(calls):
                await call()

        return job

    await gather(family, [task(warmup)] * workload.tasks)
    per_task, left = divmod(workload.calls, workload.tasks)
    jobs = [task(per_task + (1 if i < left else 0)) for i in range(workload.tasks)]
    gc.collect()
    start = time.perf_counter()
    await gather(family, jobs)
    elapsed = time.perf_counter() - start
    return Measurement(workload.calls / elapsed, setup.threads, setup.how, {"seconds": elapsed})


async def _warm(family: str, setup: Setup, threads: int) -> None:
    """Start ``threads`` threads of the contender, so that none starts during a measurement."""
    warm = setup.wrap(sleep_50ms)

    async def warm_one() -> None:
        await warm()

    await gather(family, [warm_one] * threads)


async def _beats_while(
    family: str, setup: Setup, work: Callable[[], Any], calls: int, beat: float
) -> Measurement:
    """Measure a heartbeat that asks for ``beat`` s sleeps while ``calls`` calls of ``work``
    run through the contender: its lags' p99, p50 and max, in milliseconds."""
    call = setup.wrap(work)

    async def one() -> None:
        await call()

    lags: list[float] = []
    done = False
    wall = 0.0

    async def heartbeat() -> None:
        clock = time.perf_counter
        while not done:
            start = clock()
            await sleep(family, beat)
            lags.append(clock() - start - beat)

    async def load() -> None:
        nonlocal done, wall
        start = time.perf_counter()
        await gather(family, [one] * calls)
        wall = time.perf_counter() - start
        done = True

    gc.collect()
    await gather(family, [heartbeat, load])
    return Measurement(
        _percentile(lags, 99) * 1e3,
        setup.threads,
        setup.how,
        {
            "p50_ms": _percentile(lags, 50) * 1e3,
            "max_ms": max(lags) * 1e3,
            "max_gap_ms": (max(lags) + beat) * 1e3,
            "beats": float(len(lags)),
            "wall_ms": wall * 1e3,
        },
        [lag * 1e3 for lag in lags],
    )


async def _heartbeat(family: str, setup: Setup, workload: Workload) -> Measurement:
    assert workload.threads is not None
    await _warm(family, setup, workload.threads)  # every thread is started
    return await _beats_while(family, setup, sleep_10ms, workload.calls, HEARTBEAT)


async def _cpu_heartbeat(family: str, setup: Setup, workload: Workload) -> Measurement:
    if workload.warm:
        await _warm(family, setup, workload.calls)  # every thread is started

    return await _beats_while(family, setup, spin, workload.calls, CPU_HEARTBEAT)


def workloads(quick: bool, warmup: bool = False) -> tuple[Workload, ...]:
    """The workloads: full size, ``--quick`` size, or the size of the warm-up pass (which
    leaves out (d): its measurements run in fresh processes, with nothing warmed up)."""
    a, b = (200, 1_000) if warmup else (500, 4_000) if quick else (5_000, 20_000)
    cpu = f"2 CPU-bound calls ({SPIN / 1e6:g} M-iteration Python loops) run"
    d = (
        ()
        if warmup
        else (
            Workload(
                "d-cold",
                f"(d) heartbeat lag p99 while {cpu} on a cold pool (a fresh process each)",
                "ms",
                False,
                None,
                2,
                2,
                fresh_process=True,
            ),
            Workload(
                "d-warm",
                f"(d) heartbeat lag p99 while {cpu} on a warm pool (a fresh process each)",
                "ms",
                False,
                None,
                2,
                2,
                fresh_process=True,
                warm=True,
            ),
        )
    )
    return (
        Workload("a", f"(a) {a:,} sequential no-op calls", "µs/call", False, None, a, 1),
        Workload(
            "b", f"(b) {b:,} no-op calls from 100 concurrent tasks", "calls/s", True, None, b, 100
        ),
        Workload(
            "c",
            "(c) heartbeat lag p99 while 200 time.sleep(0.01) calls run on 40 threads",
            "ms",
            False,
            40,
            200,
            200,
        ),
        *d,
    )


# -- one measurement ---------------------------------------------------------------------------


def _trio_cache(thread: threading.Thread) -> bool:
    # trio.to_thread (and anyio on trio) park idle threads in a process-wide cache for 10 s.
    return thread.name.startswith("Trio thread")


@dataclasses.dataclass
class Sample:
    backend: str
    workload: str
    contender: str
    round: int
    value: float
    threads: int
    how: str
    extra: dict[str, float]
    raw: list[float]  # (c): every heartbeat's lag, ms
    active_before: int
    active_after: int
    started: int  # threads started during the run and alive when the measurement ended
    leaked: list[str]  # threads started during the run and still alive JOIN_WAIT s after it
    parked: int  # ... of which were idle in trio's thread cache (not counted as leaked)


def measure(
    backend: Backend, workload: Workload, contender: Contender, round_: int, quick: bool
) -> Sample:
    before = set(threading.enumerate())
    active_before = threading.active_count()
    started = 0

    async def main() -> Measurement:
        nonlocal started
        setup = contender.setup(workload.threads)
        if workload.key == "a":
            result = await _sequential(setup, workload, 100 if quick else 500)
        elif workload.key == "b":
            result = await _concurrent(backend.family, setup, workload, 5 if quick else 20)
        elif workload.key == "c":
            result = await _heartbeat(backend.family, setup, workload)
        else:
            result = await _cpu_heartbeat(backend.family, setup, workload)

        started = len(set(threading.enumerate()) - before)
        return result

    result = run(backend, main)

    deadline = time.monotonic() + JOIN_WAIT
    while True:
        new = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        left = [t for t in new if not _trio_cache(t)]
        if not left or time.monotonic() > deadline:
            break

        time.sleep(0.005)

    return Sample(
        backend=backend.key,
        workload=workload.key,
        contender=contender.key,
        round=round_,
        value=result.value,
        threads=result.threads,
        how=result.how,
        extra=result.extra,
        raw=result.raw,
        active_before=active_before,
        active_after=threading.active_count(),
        started=started,
        leaked=[t.name for t in left],
        parked=len(new) - len(left),
    )


def measure_fresh(
    backend: Backend, workload: Workload, contender: Contender, round_: int, quick: bool
) -> Sample:
    """:func:`measure` in a new interpreter (this script with ``--child``), so that nothing
    was started, imported or used before the measurement but what the script imports."""
    spec = f"{backend.key},{workload.key},{contender.key}"
    command = [sys.executable, os.path.abspath(__file__), "--child", spec]
    done = subprocess.run(
        [*command, "--quick"] if quick else command, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"the measurement {spec} failed:\n{done.stderr}")

    sample = Sample(**json.loads(done.stdout.strip().splitlines()[-1]))
    sample.round = round_
    return sample


def measure_any(
    backend: Backend, workload: Workload, contender: Contender, round_: int, quick: bool
) -> Sample:
    """One measurement, in this process or in a fresh one, as the workload asks."""
    run_one = measure_fresh if workload.fresh_process else measure
    return run_one(backend, workload, contender, round_, quick)


def child(spec: str, quick: bool) -> int:
    """``--child``: one measurement in this (fresh) process; print its sample as JSON."""
    backend_key, workload_key, contender_key = spec.split(",")
    backend = next(b for b in BACKENDS if b.key == backend_key)
    workload = next(w for w in workloads(quick) if w.key == workload_key)
    contender = next(c for c in CONTENDERS if c.key == contender_key)
    sample = measure(backend, workload, contender, 0, quick)
    print(json.dumps(dataclasses.asdict(sample)))
    return 0


# -- report ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    contender: str
    values: list[float]
    threads: int
    how: str
    extra: dict[str, list[float]]
    raw: list[float]  # every round's raw samples together

    @property
    def median(self) -> float:
        return statistics.median(self.values)


def _better(workload: Workload, value: float, baseline: float) -> float:
    """How much better ``value`` is than ``baseline``: >1 is better, whichever the unit."""
    if workload.higher_is_better:
        return value / baseline if baseline else math.inf

    return baseline / value if value else math.inf


def _fmt(workload: Workload, value: float) -> str:
    if workload.unit == "calls/s":
        return f"{value:,.0f}"

    if workload.unit == "ms":
        return f"{value:.3f}"

    return f"{value:.2f}"


def _rows(
    samples: Sequence[Sample], backend: Backend, workload: Workload, order: Sequence[str]
) -> list[Row]:
    rows: list[Row] = []
    for key in order:
        mine = [
            s
            for s in samples
            if s.backend == backend.key and s.workload == workload.key and s.contender == key
        ]
        if not mine:
            continue

        extra: dict[str, list[float]] = {}
        for s in mine:
            for name, value in s.extra.items():
                extra.setdefault(name, []).append(value)

        raw = [x for s in mine for x in s.raw]
        rows.append(Row(key, [s.value for s in mine], mine[0].threads, mine[0].how, extra, raw))

    return rows


def _paired(
    samples: Sequence[Sample], backend: Backend, workload: Workload, key: str, other: str
) -> float | None:
    """Median over rounds of the per-round ratio of ``key`` against ``other``."""
    by_round: dict[int, dict[str, float]] = {}
    for s in samples:
        if s.backend == backend.key and s.workload == workload.key:
            by_round.setdefault(s.round, {})[s.contender] = s.value

    ratios = [
        _better(workload, r[key], r[other]) for r in by_round.values() if key in r and other in r
    ]
    return statistics.median(ratios) if ratios else None


def print_table(
    samples: Sequence[Sample], backend: Backend, workload: Workload, order: Sequence[str]
) -> None:
    rows = _rows(samples, backend, workload, order)
    if not rows:
        return

    base = next((row for row in rows if row.contender == backend.baseline), None)
    base_label = LABELS[backend.baseline]
    if workload.higher_is_better:
        sense = f"higher is better; ratio = contender / {base_label}"
    else:
        sense = f"lower is better; ratio = {base_label} / contender"

    print(f"\n{backend.title}: {workload.title}, {workload.unit}")
    print(f"  ({sense}, so >1 means better than {base_label})")
    show_wall = workload.key != "a" and workload.key != "b"
    show_gap = workload.key.startswith("d")
    if show_wall:
        beats = statistics.median(b for row in rows for b in row.extra["beats"])
        print(
            f"  (about {beats:.0f} heartbeats per measurement, so its p99 is close to its max; "
            "pooled p99: the p99 of all rounds' heartbeats together)"
        )

    if show_gap:
        print(
            f"  (max gap: the median over rounds of the longest time between two beats; the "
            f"heartbeat asks for {CPU_HEARTBEAT * 1e3:g} ms)"
        )

    print(
        "  (ratio: of the medians; paired: the median over rounds of each round's own ratio, "
        "less sensitive to slow and fast spells of the machine)"
    )
    header = ["contender", "threads", f"median {workload.unit}", "min - max", "ratio", "paired"]
    if show_wall:
        header[2] = "p99 lag ms"
        header += ["pooled p99", "p50 lag ms", "wall ms"]

    if show_gap:
        header += ["max gap ms"]

    table: list[list[str]] = []
    for row in rows:
        ratio = paired = "-"
        if base is not None:
            ratio = f"{_better(workload, row.median, base.median):.2f}x"
            by_round = _paired(samples, backend, workload, row.contender, base.contender)
            paired = "-" if by_round is None else f"{by_round:.2f}x"

        line = [
            LABELS[row.contender] + (" (baseline)" if row is base else ""),
            str(row.threads),
            _fmt(workload, row.median),
            f"{_fmt(workload, min(row.values))} - {_fmt(workload, max(row.values))}",
            ratio,
            paired,
        ]
        if show_wall:
            line += [
                f"{_percentile(row.raw, 99):.3f}",
                f"{statistics.median(row.extra['p50_ms']):.3f}",
                f"{statistics.median(row.extra['wall_ms']):.1f}",
            ]

        if show_gap:
            line += [f"{statistics.median(row.extra['max_gap_ms']):.1f}"]

        table.append(line)

    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        print("  " + "  ".join(cells))

    if workload.threads is not None:
        print(f"  how each contender gets {workload.threads} threads:")
        for row in rows:
            print(f"    {LABELS[row.contender]}: {row.how}")


def summary(
    samples: Sequence[Sample], backend: Backend, loads: Sequence[Workload]
) -> dict[str, Any]:
    """Offload's ratios against the baseline and the best peer, per workload."""
    result: dict[str, Any] = {}
    parts: list[str] = []
    losses: list[str] = []
    for workload in loads:
        rows = {row.contender: row for row in _rows(samples, backend, workload, list(LABELS))}
        mine = rows.get("offload")
        base = rows.get(backend.baseline)
        if mine is None or base is None:
            continue

        peers = [row for key, row in rows.items() if key != "offload"]
        best = max(peers, key=lambda row: _better(workload, row.median, base.median))
        vs_base = _better(workload, mine.median, base.median)
        vs_best = _better(workload, mine.median, best.median)
        result[workload.key] = {
            "vs_baseline": vs_base,
            "vs_baseline_paired": _paired(samples, backend, workload, "offload", base.contender),
            "best_peer": best.contender,
            "vs_best_peer": vs_best,
            "vs_best_peer_paired": _paired(samples, backend, workload, "offload", best.contender),
        }
        parts.append(
            f"({workload.key}) {vs_base:.2f}x vs baseline, {vs_best:.2f}x vs best peer "
            f"({LABELS[best.contender]})"
        )
        for row in peers:
            ratio = _better(workload, mine.median, row.median)
            if ratio < 1:
                losses.append(f"({workload.key}) {LABELS[row.contender]} by {1 / ratio:.2f}x")

    print(f"\nsummary {backend.key}: offload, >1 = better: " + "; ".join(parts))
    if losses:
        print(f"summary {backend.key}: offload loses to: " + "; ".join(losses))

    result["losses"] = losses
    return result


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark offload's thread offloading against its peers (interleaved "
        "rounds, medians, ratios against asyncio.to_thread / anyio.to_thread.run_sync)."
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds (default 7, or 3 with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer calls and rounds: about half a minute"
    )
    parser.add_argument("--backend", choices=("asyncio", "uvloop", "trio", "all"), default="all")
    parser.add_argument("--json", metavar="FILE", help="write every raw number to FILE")
    parser.add_argument(
        "--workloads",
        default="abcd",
        help="which workloads, e.g. 'ab' or 'd' (default abcd: all)",
    )
    # Internal: one measurement of a fresh-process workload, printed as JSON.
    parser.add_argument("--child", metavar="BACKEND,WORKLOAD,CONTENDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not set(args.workloads) or not set(args.workloads) <= set("abcd"):
        parser.error("--workloads takes letters among a, b, c and d (e.g. 'ab' or 'd')")

    if args.rounds is None:
        args.rounds = 3 if args.quick else 7

    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rounds: int = args.rounds
    quick: bool = args.quick
    if args.child:
        return child(args.child, quick)

    loads = tuple(w for w in workloads(quick) if w.key[0] in args.workloads)
    notes: list[str] = []

    backends: list[Backend] = []
    for backend in BACKENDS:
        if args.backend not in ("all", backend.key):
            continue

        missing = _missing(backend.module)
        if missing is not None:
            notes.append(f"backend {backend.key} skipped: {missing}")
            continue

        backends.append(backend)

    plan: dict[str, list[Contender]] = {}
    for backend in backends:
        plan[backend.key] = []
        for contender in CONTENDERS:
            if contender.family not in ("any", backend.family):
                continue

            missing = _missing(contender.module)
            if missing is not None:
                note = f"{contender.label} skipped: {missing}"
                if note not in notes:
                    notes.append(note)

                continue

            plan[backend.key].append(contender)

    print(
        f"offload thread benchmark: Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, switch interval {sys.getswitchinterval() * 1e3:g} ms, "
        f"{rounds} rounds{' (quick)' if quick else ''}"
    )
    source = offload_source()
    load_start = load_average()
    print(
        "versions: "
        + ", ".join(
            f"{k} {v}"
            for k, v in versions(
                ("offload", "anyio", "trio", "uvloop", "asyncer", "starlette", "asgiref")
            ).items()
        )
    )
    print(f"offload under test: {source}; load average at the start: {load_start}")
    print(
        "method: one event loop per measurement (fresh asyncio.Runner or trio.run), "
        "contenders interleaved and their order rotated each round; medians across rounds"
    )
    for note in notes:
        print(f"note: {note}")

    samples: list[Sample] = []
    active_start = threading.active_count()
    began = time.perf_counter()
    # A warm-up pass, not recorded: every contender once, small, so that lazy imports and
    # first-use costs of the process land in no contender's numbers.
    warmup_leaks: list[Sample] = []
    for backend in backends:
        for workload in workloads(quick, warmup=True):
            if workload.key[0] not in args.workloads:
                continue

            for contender in plan[backend.key]:
                sample = measure(backend, workload, contender, -1, True)
                if sample.leaked:
                    warmup_leaks.append(sample)

    elapsed = time.perf_counter() - began
    print(f"  warm-up pass done, {elapsed:.0f} s", file=sys.stderr, flush=True)
    for round_ in range(rounds):
        for backend in backends:
            contenders = plan[backend.key]
            for workload in loads:
                shift = round_ % len(contenders)
                samples.extend(
                    measure_any(backend, workload, contender, round_, quick)
                    for contender in contenders[shift:] + contenders[:shift]
                )

        elapsed = time.perf_counter() - began
        print(f"  round {round_ + 1}/{rounds} done, {elapsed:.0f} s", file=sys.stderr, flush=True)

    summaries: dict[str, Any] = {}
    for backend in backends:
        order = [c.key for c in plan[backend.key]]
        for workload in loads:
            print_table(samples, backend, workload, order)

        summaries[backend.key] = summary(samples, backend, loads)

    leaks = warmup_leaks + [s for s in samples if s.leaked]
    cached = sum(1 for t in threading.enumerate() if _trio_cache(t))
    print(
        f"\nthreads: {active_start} alive at the start, {threading.active_count()} at the end "
        f"({cached} of them idle in trio's process-wide thread cache, which trio.to_thread and "
        f"anyio on trio share; they exit after 10 s idle); {len(samples)} measurements, "
        f"{len(leaks)} left threads behind"
    )
    for s in leaks:
        when = "the warm-up pass" if s.round < 0 else f"round {s.round + 1}"
        print(f"  LEAK {s.backend} ({s.workload}) {LABELS[s.contender]}, {when}: {s.leaked}")

    parked = [s for s in samples if s.parked]
    if parked:
        most = max(s.parked for s in parked)
        print(
            f"  {len(parked)} trio measurements added idle threads to that cache (up to {most}); "
            "they are not counted as leaks"
        )

    total = time.perf_counter() - began
    load_end = load_average()
    print(f"total time {total:.0f} s; load average at the end: {load_end}")

    if args.json:
        data = {
            "meta": {
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "switch_interval_s": sys.getswitchinterval(),
                "versions": versions(
                    ("offload", "anyio", "trio", "uvloop", "asyncer", "starlette", "asgiref")
                ),
                "offload_source": source,
                "load_average": {"start": load_start, "end": load_end},
                "rounds": rounds,
                "quick": quick,
                "backends": [b.key for b in backends],
                "notes": notes,
                "seconds": total,
                "method": "one event loop per measurement; order rotated each round",
            },
            "workloads": {w.key: dataclasses.asdict(w) for w in loads},
            "contenders": {b: [c.key for c in cs] for b, cs in plan.items()},
            "baselines": {b.key: b.baseline for b in backends},
            "samples": [dataclasses.asdict(s) for s in samples],
            "summary": summaries,
        }
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1)
            file.write("\n")

        print(f"raw numbers written to {args.json}")

    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
