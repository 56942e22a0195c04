"""Process offloading: offload's ProcessPool against its peers, on asyncio (and trio).

Three workloads (DESIGN.md section 9), each measured for every contender in every round, on
2 worker processes for everyone:

(a) 1,000 calls of ``tiny(x) = x + 1`` with 8 in flight (8 tasks pulling from one counter):
    microseconds per call, wall time / 1,000 (small-call overhead).
(b) four pure-Python CPU calls of about 0.5 s each (a busy loop calibrated once at the start,
    the same iteration count for everyone): wall time, ideally 1.0 s on 2 cores.
(c) cancel a running call (a busy loop that would run for 30 s) by cancelling the task that
    awaits it: time from ``task.cancel()`` until the awaiter has control back, and time until
    the CPU is free (the worker process is dead, or it finished the call). Peers that cannot
    kill a running call keep a worker busy until the call ends; for them the loop is capped
    at 3 s so the benchmark finishes, and the table says so.
(d) the first call on a cold pool: from making the pool (no worker process started yet) to
    the first result of ``tiny(1)``, in this process, where the forkserver (and every
    library's imports) are up since the warm-up pass.
(e) the same in a fresh interpreter (``python processes.py --cold-child KEY``) where no
    forkserver runs yet: the libraries are imported first (not timed), then the clock runs
    from making the pool to the first result, forkserver's and resource tracker's start
    included.
(f) the next call after a kill: cancel a running call as in (c), and time the next
    ``tiny(1)`` made as soon as the awaiter has control back (a pool that kills must start
    a worker; one that cannot kill has its second worker free).
(g), (h) a 100 MB round trip, ``echo(payload)`` with ``bytes`` and a NumPy float64 array
    (skipped without NumPy): wall time, and the peak memory that the round trip added to
    this process and to the busiest worker process; and the peak memory of a call that
    only receives the payload (``size_of(payload)``), made just before. (Linux: each
    process's peak RSS, ``VmHWM``, is reset through ``/proc/<pid>/clear_refs`` before the
    call, and read after it; shared-memory pages count in each process that touches them.
    glibc's malloc is told to give big blocks back at once, ``M_MMAP_THRESHOLD`` = 128 KiB,
    in this process and, through ``MALLOC_MMAP_THRESHOLD_``, in every worker: else a block
    freed by an earlier measurement would hide the next one's copies from the peak.)

Contenders: offload (``ProcessPool``), ``loop.run_in_executor(ProcessPoolExecutor)`` (the
baseline), ``anyio.to_process.run_sync``, loky, pebble and aiomultiprocess, all on the stdlib
asyncio loop; offload on trio is an extra row for (a). A peer that is not installed is skipped
with a note.

Fairness:

* One run, interleaved: for each round, for each workload, every contender is measured once,
  and the order of the contenders rotates from round to round. Tables show medians across
  rounds, the min-max spread, and ratios against ``ProcessPoolExecutor``, oriented so that >1
  is better (faster).
* Every single measurement runs in an event loop of its own, with a pool made for it: the
  pool is warmed up (both worker processes started, then a few small calls) before the clock
  starts, so worker start-up is never timed, and it is shut down when the measurement ends.
  Then the script checks that no process is left: ``multiprocessing.active_children()`` and
  every descendant process (on Linux, from ``/proc``), except the helpers that libraries keep
  for the whole program (multiprocessing's forkserver and resource tracker, loky's resource
  tracker, aiomultiprocess's ``SyncManager``), which the report lists apart.
* Where a library lets you choose the start method, it gets offload's default, forkserver, so
  that the comparison is about the calls and not about ``fork`` in a process with threads.
  loky uses its own ``loky`` start method and anyio its own ``python -m`` subprocesses.
* Before the first round an unrecorded pass runs every contender once, small, so that lazy
  imports and the forkserver's start land in nobody's numbers.

Two peers may write to stderr during a run, harmlessly: asyncio's child watcher logs "Unknown
child process pid N" when anyio's worker processes are reaped at the end of a loop's run, and
pebble's replacement for a killed worker can print a ``FileNotFoundError`` traceback (a
``SemLock``) when the pool closes while that replacement is still starting. Neither leaves a
process behind: the process check runs after every measurement.

Run ``python benchmarks/processes.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import functools
import gc
import importlib
import importlib.metadata
import itertools
import json
import math
import multiprocessing
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from _common import load_average, offload_source, run_asyncio, versions

import offload

# Whose versions the report names.
DISTRIBUTIONS = ("offload", "anyio", "trio", "loky", "pebble", "aiomultiprocess")

T = TypeVar("T")

Call = Callable[..., Awaitable[Any]]  # call(fn, *args) -> awaitable result of fn(*args)
Job = Callable[[], Coroutine[Any, Any, None]]

WORKERS = 2  # worker processes, for every contender
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
KILL_SPIN = 30.0  # seconds the call to cancel would run (contenders that can kill it)
TARGET_BACK_MS = 50.0  # (c): the awaiter should have control back within this
LEAK_WAIT = 5.0  # seconds to wait for a measurement's processes to exit before calling them left


# -- the work: module-level, as worker processes import this module --------------------------


def tiny(x: int) -> int:
    return x + 1


def pause(seconds: float) -> int:
    """Sleep, and say which worker process ran the call (warm-up: start every worker)."""
    time.sleep(seconds)
    return os.getpid()


def spin(n: int) -> int:
    """A pure-Python busy loop of ``n`` iterations."""
    total = 0
    for i in range(n):
        total += i & 7

    return total


def spin_timed(n: int) -> float:
    """``spin(n)``, returning how long it took in the worker, in seconds."""
    start = time.perf_counter()
    spin(n)
    return time.perf_counter() - start


def echo(value: T) -> T:
    return value


def size_of(value: Any) -> int:
    """The payload's size in bytes: a call that only receives it."""
    return len(value) if isinstance(value, bytes) else int(value.nbytes)


def spin_until(path: str, seconds: float) -> int:
    """Write this worker's pid to ``path``, spin for ``seconds``, then touch ``path.done``."""
    pid = os.getpid()
    with open(path + ".tmp", "w", encoding="ascii") as file:
        file.write(str(pid))

    os.replace(path + ".tmp", path)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass

    with open(path + ".done", "w", encoding="ascii") as file:
        file.write(str(pid))

    return pid


# aiomultiprocess runs coroutine functions in its workers: the same work, wrapped.


async def tiny_async(x: int) -> int:
    return tiny(x)


async def pause_async(seconds: float) -> int:
    return pause(seconds)


async def spin_async(n: int) -> int:
    return spin(n)


async def spin_timed_async(n: int) -> float:
    return spin_timed(n)


async def spin_until_async(path: str, seconds: float) -> int:
    return spin_until(path, seconds)


async def echo_async(value: T) -> T:
    return value


async def size_of_async(value: Any) -> int:
    return size_of(value)


ASYNC_VERSIONS: dict[Callable[..., Any], Callable[..., Coroutine[Any, Any, Any]]] = {
    tiny: tiny_async,
    pause: pause_async,
    spin: spin_async,
    spin_timed: spin_timed_async,
    spin_until: spin_until_async,
    echo: echo_async,
    size_of: size_of_async,
}


# -- event loops -------------------------------------------------------------------------------


def run(family: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` in a new event loop of ``family`` ("asyncio" or "trio")."""
    if family == "trio":
        import trio

        return trio.run(main)

    return run_asyncio(main)


async def gather(family: str, jobs: Sequence[Job]) -> None:
    """Run ``jobs`` concurrently in the running loop and wait for them all."""
    if family == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job)
    else:
        await asyncio.gather(*(job() for job in jobs))


# -- processes ---------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """Return ``(state, parent pid)`` of ``pid`` from ``/proc``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            text = file.read()
    except OSError:
        return None

    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _descendants() -> list[tuple[int, str, str]]:
    """Every process below this one: ``(pid, state, command line)`` (Linux; else empty)."""
    if not os.path.isdir("/proc"):
        return []

    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue

        stat = _proc_stat(int(name))
        if stat is not None:
            states[int(name)] = stat[0]
            children.setdefault(stat[1], []).append(int(name))

    found: list[tuple[int, str, str]] = []
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        found.append((pid, states.get(pid, "?"), _cmdline(pid)))
        todo.extend(children.get(pid, []))

    return found


def _helpers() -> dict[int, str]:
    """The helper processes that libraries keep for the whole program, which are not
    workers: multiprocessing's forkserver and resource tracker, loky's resource tracker,
    aiomultiprocess's ``SyncManager``."""
    found: dict[int, str] = {}
    probes = (
        ("multiprocessing.forkserver", ("_forkserver", "_forkserver_pid"), "forkserver"),
        (
            "multiprocessing.resource_tracker",
            ("_resource_tracker", "_pid"),
            "multiprocessing resource tracker",
        ),
        ("loky.backend.resource_tracker", ("_resource_tracker", "_pid"), "loky resource tracker"),
        (
            "aiomultiprocess.core",
            ("_manager", "_process", "pid"),
            "aiomultiprocess SyncManager (process-wide, never stopped by aiomultiprocess)",
        ),
    )
    for module_name, path, what in probes:
        value: Any = sys.modules.get(module_name)
        for name in path:
            value = getattr(value, name, None)

        if isinstance(value, int) and value > 0:
            found[value] = what

    return found


def _left_processes() -> list[str]:
    """Worker processes still alive (or not reaped): mp children and other descendants,
    without the helpers."""
    helpers = _helpers()
    children = [p for p in multiprocessing.active_children() if p.pid not in helpers]
    left = [f"{p.name} pid {p.pid}" for p in children]
    known = {p.pid for p in children} | set(helpers)
    left += [
        f"pid {pid} ({state}): {cmd[:80]}"
        for pid, state, cmd in _descendants()
        if pid not in known
    ]
    return left


def _wait_no_processes(timeout: float) -> list[str]:
    """Wait up to ``timeout`` for every worker process to be gone; return those left."""
    deadline = time.monotonic() + timeout
    while True:
        left = _left_processes()
        if not left or time.monotonic() > deadline:
            return left

        time.sleep(0.01)


def _worker_pid(path: str) -> int | None:
    """The pid a worker wrote to ``path`` once the call started, or None (a tiny local file:
    reading it does not hold up the loop)."""
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read())
    except FileNotFoundError:
        return None


def _finished(path: str) -> bool:
    """True once the call that wrote ``path`` ran to its end."""
    return os.path.exists(path + ".done")


def _dead(pid: int) -> bool:
    """True once ``pid`` uses no CPU any more: gone, or a zombie waiting to be reaped."""
    if os.path.isdir("/proc"):
        stat = _proc_stat(pid)
        return stat is None or stat[0] in ("Z", "X")

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False

    return False


# -- contenders --------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    """A contender made ready inside a running loop, with ``WORKERS`` worker processes."""

    call: Call
    close: Callable[[], Awaitable[None]]
    how: str
    kills: bool  # cancelling the awaiter of a running call kills the worker process
    stats: Callable[[], dict[str, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class Contender:
    key: str
    label: str
    family: str  # "asyncio" or "trio"
    module: str | None  # must be importable, or the contender is skipped
    setup: Callable[[], Awaitable[Setup]]
    workloads: str = "abcdefgh"


async def _noop() -> None:
    return None


_pools: dict[str, offload.ProcessPool] = {}


def _offload_pool() -> offload.ProcessPool:
    # A name is usable by one pool per process: make it once, use it in every event loop
    # (its workers are per loop, and each measurement's loop closes them).
    pool = _pools.get("bench")
    if pool is None:
        pool = _pools["bench"] = offload.ProcessPool("bench", max_workers=WORKERS)

    return pool


async def _offload() -> Setup:
    pool = _offload_pool()

    def stats() -> dict[str, Any]:
        return dataclasses.asdict(pool.stats())

    return Setup(
        pool.call,
        pool.aclose,
        f'offload.ProcessPool("bench", max_workers={WORKERS}).call(fn, *args); '
        f"{pool.settings().start_method}",
        True,
        stats,
    )


async def _process_pool_executor() -> Setup:
    executor = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context(START_METHOD))
    loop = asyncio.get_running_loop()

    async def close() -> None:
        executor.shutdown(wait=True)

    return Setup(
        functools.partial(loop.run_in_executor, executor),
        close,
        f"loop.run_in_executor(ProcessPoolExecutor({WORKERS}), fn, *args); {START_METHOD}",
        False,
    )


async def _anyio() -> Setup:
    import anyio
    import anyio.to_process

    limiter = anyio.CapacityLimiter(WORKERS)

    def call(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return anyio.to_process.run_sync(fn, *args, limiter=limiter, cancellable=True)

    # anyio has no public way to stop its workers: it kills them when the loop's run ends,
    # which is right after the measurement; the process check runs after that.
    return Setup(
        call,
        _noop,
        f"anyio.to_process.run_sync(fn, *args, limiter=CapacityLimiter({WORKERS}), "
        "cancellable=True); python -m subprocesses, killed at the end of the loop's run",
        True,
    )


async def _loky() -> Setup:
    import loky

    executor = loky.get_reusable_executor(max_workers=WORKERS)
    loop = asyncio.get_running_loop()

    async def close() -> None:
        executor.shutdown(wait=True)

    return Setup(
        functools.partial(loop.run_in_executor, executor),
        close,
        f"loop.run_in_executor(loky.get_reusable_executor(max_workers={WORKERS}), fn, *args); "
        "loky start method",
        False,
    )


async def _pebble() -> Setup:
    import pebble

    pool = pebble.ProcessPool(
        max_workers=WORKERS, context=multiprocessing.get_context(START_METHOD)
    )

    def call(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return asyncio.wrap_future(pool.schedule(fn, args=args))

    async def close() -> None:
        pool.close()
        pool.join()

    return Setup(
        call,
        close,
        f"asyncio.wrap_future(pebble.ProcessPool(max_workers={WORKERS}).schedule(fn, args)); "
        f"{START_METHOD}",
        True,
    )


async def _aiomultiprocess() -> Setup:
    import aiomultiprocess

    aiomultiprocess.set_start_method(START_METHOD)
    # childconcurrency=1: each worker takes one call at a time. With the default (16), one
    # worker grabs several queued CPU-bound calls and runs them one after the other on its
    # own loop while the other worker idles.
    pool = aiomultiprocess.Pool(processes=WORKERS, childconcurrency=1)

    def call(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return pool.apply(ASYNC_VERSIONS[fn], args)

    async def close() -> None:
        pool.close()
        await pool.join()

    return Setup(
        call,
        close,
        f"aiomultiprocess.Pool(processes={WORKERS}, childconcurrency=1).apply(async_fn, args); "
        f"{START_METHOD}; the function is wrapped in an async def (it runs coroutines)",
        False,
    )


class _Floor:
    """The bare floor of (a): forked workers on pipes that the loop reads with ``add_reader``,
    and nothing else (no queue bound, no cancellation, no crash handling)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context(START_METHOD)
        self.loop = asyncio.get_running_loop()
        self.idle: list[Any] = []
        self.busy: dict[Any, asyncio.Future[Any]] = {}
        self.queue: collections.deque[tuple[bytes, asyncio.Future[Any]]] = collections.deque()
        self.processes = []
        for _ in range(WORKERS):
            parent, child = context.Pipe()
            process = context.Process(target=_floor_child, args=(child,), daemon=True)
            process.start()
            child.close()
            self.processes.append(process)
            self.idle.append(parent)
            self.loop.add_reader(parent.fileno(), self._readable, parent)

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        message = pickle.dumps((fn, args))
        if self.idle:
            conn = self.idle.pop()
            self.busy[conn] = future
            conn.send_bytes(message)
        else:
            self.queue.append((message, future))

        return future

    def _readable(self, conn: Any) -> None:
        future = self.busy.pop(conn, None)
        try:
            result = pickle.loads(conn.recv_bytes())
        except EOFError:  # the worker died (the floor does not replace it)
            self.loop.remove_reader(conn.fileno())
            if future is not None:
                future.set_exception(RuntimeError("a floor worker died"))

            return

        assert future is not None
        if self.queue:
            message, following = self.queue.popleft()
            self.busy[conn] = following
            conn.send_bytes(message)
        else:
            self.idle.append(conn)

        future.set_result(result)

    async def close(self) -> None:
        for conn in [*self.idle, *self.busy]:
            self.loop.remove_reader(conn.fileno())
            conn.close()

        self.idle.clear()
        self.busy.clear()

        for process in self.processes:
            process.join()


def _floor_child(conn: Any) -> None:
    while True:
        try:
            fn, args = pickle.loads(conn.recv_bytes())
        except EOFError:
            return

        conn.send_bytes(pickle.dumps(fn(*args)))


async def _floor() -> Setup:
    floor = _Floor()
    how = f"{WORKERS} {START_METHOD} workers on pipes the loop reads with add_reader"
    return Setup(floor.call, floor.close, how, False)


BASELINE = "executor"
CONTENDERS = (
    Contender("offload", "offload ProcessPool", "asyncio", None, _offload),
    Contender(
        "executor", "run_in_executor(ProcessPoolExecutor)", "asyncio", None, _process_pool_executor
    ),
    Contender("anyio", "anyio.to_process.run_sync", "asyncio", "anyio.to_process", _anyio),
    Contender("loky", "loky (run_in_executor)", "asyncio", "loky", _loky),
    Contender("pebble", "pebble ProcessPool", "asyncio", "pebble", _pebble),
    Contender(
        "aiomultiprocess", "aiomultiprocess Pool", "asyncio", "aiomultiprocess", _aiomultiprocess
    ),
    Contender("offload_trio", "offload ProcessPool, on trio", "trio", "trio", _offload, "a"),
    Contender("floor", "bare floor (add_reader)", "asyncio", None, _floor, "a"),
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
class Config:
    calls: int  # (a)
    in_flight: int  # (a)
    warmup_calls: int  # small calls after the workers are up, before the clock starts
    cpu_calls: int  # (b)
    cpu_seconds: float  # (b): target length of one call
    spin_n: int  # (b): iterations of spin() for about cpu_seconds, calibrated at the start
    cap: float  # (c): seconds the call spins for contenders that cannot kill it
    tmpdir: str  # (c): where workers write their pid
    big_mb: int = 100  # (g), (h): the payload's size in MB (10**6 bytes)


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    title: str
    unit: str


def workloads(config: Config) -> tuple[Workload, ...]:
    return (
        Workload(
            "a",
            f"(a) {config.calls:,} calls of tiny(x) = x + 1, {config.in_flight} in flight, "
            f"{WORKERS} worker processes",
            "µs/call",
        ),
        Workload(
            "b",
            f"(b) {config.cpu_calls} pure-Python CPU calls of ~{config.cpu_seconds:g} s "
            f"({config.spin_n:,} iterations each) on {WORKERS} worker processes: wall time",
            "s",
        ),
        Workload(
            "c",
            f"(c) cancel a running call (a busy loop of {KILL_SPIN:g} s) by cancelling its "
            "awaiting task",
            "ms",
        ),
        Workload(
            "d",
            "(d) the first call on a cold pool (no worker started; forkserver already up): "
            "from making the pool to the first result",
            "ms",
        ),
        Workload(
            "e",
            "(e) the first call on a cold pool in a fresh interpreter (no forkserver yet; "
            "imports done): from making the pool to the first result",
            "ms",
        ),
        Workload(
            "f",
            "(f) the next call after a kill: tiny(1) made as soon as a cancelled call's "
            "awaiter has control back",
            "ms",
        ),
        Workload(
            "g",
            f"(g) a {config.big_mb} MB round trip, echo(bytes): wall time",
            "ms",
        ),
        Workload(
            "h",
            f"(h) a {config.big_mb} MB round trip, echo(numpy float64 array): wall time",
            "ms",
        ),
    )


@dataclasses.dataclass
class Measurement:
    value: float  # (a) µs/call, (b) s, (c) ms until the awaiter has control back
    extra: dict[str, Any]


async def _warm(family: str, setup: Setup, config: Config) -> int:
    """Start every worker process, then make a few small calls; return the workers seen."""
    pids: set[int] = set()

    async def one() -> None:
        pids.add(await setup.call(pause, 0.1))

    for _ in range(3):  # a library may start its workers one at a time: try again
        await gather(family, [one] * WORKERS)
        if len(pids) >= WORKERS:
            break

    await _drive(family, setup, config.warmup_calls, config.in_flight)
    return len(pids)


async def _drive(family: str, setup: Setup, calls: int, in_flight: int) -> None:
    """Make ``calls`` calls of ``tiny``, ``in_flight`` at a time (tasks pulling from a
    counter)."""
    counter = itertools.count()
    call = setup.call

    async def puller() -> None:
        while True:
            i = next(counter)
            if i >= calls:
                return

            result = await call(tiny, i)
            if result != i + 1:
                raise AssertionError(f"tiny({i}) returned {result!r}")

    await gather(family, [puller] * in_flight)


async def _small_calls(family: str, setup: Setup, config: Config) -> Measurement:
    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    await _drive(family, setup, config.calls, config.in_flight)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return Measurement(
        elapsed / config.calls * 1e6,
        {
            "seconds": elapsed,
            "parent_cpu_s": cpu,
            "parent_cpu_us_per_call": cpu / config.calls * 1e6,
        },
    )


async def _cpu_calls(family: str, setup: Setup, config: Config) -> Measurement:
    call = setup.call
    in_worker: list[float] = []

    async def one() -> None:
        in_worker.append(await call(spin_timed, config.spin_n))

    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    await gather(family, [one] * config.cpu_calls)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if len(in_worker) != config.cpu_calls:
        raise AssertionError(f"{len(in_worker)} of {config.cpu_calls} CPU calls returned")

    return Measurement(
        elapsed, {"ideal_s": _ideal(config), "in_worker_s": in_worker, "parent_cpu_s": cpu}
    )


def _ideal(config: Config) -> float:
    return math.ceil(config.cpu_calls / WORKERS) * config.cpu_seconds


async def _cancel(setup: Setup, config: Config, name: str, then_call: bool = False) -> Measurement:
    """Cancel a running call; time control back and CPU free (``then_call``: and the next
    call, made as soon as control is back)."""
    path = os.path.join(config.tmpdir, f"{name}.pid")
    seconds = KILL_SPIN if setup.kills else config.cap
    back = 0.0

    async def awaiter() -> None:
        nonlocal back
        try:
            await setup.call(spin_until, path, seconds)
        except asyncio.CancelledError:
            back = time.perf_counter()
            raise

    task = asyncio.create_task(awaiter())
    deadline = time.monotonic() + 30.0
    pid = _worker_pid(path)
    while pid is None:  # the call runs once the worker has written its pid
        if time.monotonic() > deadline or task.done():
            task.cancel()
            raise RuntimeError("the call to cancel never started")

        await asyncio.sleep(0.001)
        pid = _worker_pid(path)

    await asyncio.sleep(0.05)  # let it spin for a while
    gc.collect()
    cancelled = time.perf_counter()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

    if not back:
        raise RuntimeError("the awaiter was not cancelled (the call finished first?)")

    next_ms = 0.0
    if then_call:
        start = time.perf_counter()
        if await setup.call(tiny, 1) != 2:
            raise AssertionError("the pool gave a wrong answer after the cancellation")

        next_ms = (time.perf_counter() - start) * 1e3

    # The CPU is free when the worker is dead (gone, or a zombie) or has finished the call.
    deadline = time.monotonic() + seconds + 10.0
    while not (_dead(pid) or _finished(path)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker pid {pid} still runs the cancelled call")

        await asyncio.sleep(0.001)

    free = time.perf_counter()
    killed = not _finished(path)
    # The pool still works after the cancellation (not timed).
    if await setup.call(tiny, 1) != 2:
        raise AssertionError("the pool gave a wrong answer after the cancellation")

    return Measurement(
        next_ms if then_call else (back - cancelled) * 1e3,
        {
            "back_ms": (back - cancelled) * 1e3,
            "cpu_free_ms": (free - cancelled) * 1e3,
            "killed": killed,
            "spin_s": seconds,
            "can_kill": setup.kills,
        },
    )


def _status_kb(pid: int, field: str) -> int | None:
    """A ``/proc/<pid>/status`` field in kB (``VmHWM``, ``VmRSS``), or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None

    return None


def _reset_peak(pid: int) -> bool:
    """Reset ``pid``'s peak RSS to its current RSS (Linux 4.0+); False where it cannot."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as file:
            file.write("5")
    except OSError:
        return False

    return True


def _workers() -> list[int]:
    helpers = _helpers()
    return [pid for pid, state, _ in _descendants() if pid not in helpers and state != "Z"]


def _return_big_blocks() -> None:
    """Make glibc's malloc unmap big blocks when freed, here and in the workers to come."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD; a fixed value stops its growth
    except (OSError, AttributeError):
        pass  # not glibc: peaks may hide copies that reuse freed memory


def _payload(kind: str, config: Config) -> Any:
    size = config.big_mb * 1_000_000
    if kind == "bytes":
        return b"\x01" * size  # written, so its pages count before the clock starts

    import numpy

    return numpy.ones(size // 8)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False

    if isinstance(a, bytes):
        return a == b

    return bool(a.shape == b.shape and a.dtype == b.dtype and (a == b).all())


async def _peaks(
    setup: Setup, fn: Callable[..., Any], payload: Any
) -> tuple[Any, float, dict[str, Any]]:
    """Call ``fn(payload)``; return its result, the wall time, and the peak memory it added."""
    gc.collect()
    pids = [os.getpid(), *_workers()]
    baseline = {pid: _status_kb(pid, "VmRSS") for pid in pids}
    peaks_reset = all(_reset_peak(pid) for pid in pids)
    start = time.perf_counter()
    result = await setup.call(fn, payload)
    elapsed = time.perf_counter() - start
    added: dict[int, float] = {}
    for pid in pids:
        before, peak = baseline[pid], _status_kb(pid, "VmHWM")
        if before is not None and peak is not None:
            added[pid] = (peak - before) / 1e3  # MB (10**3 kB)

    workers = [mb for pid, mb in added.items() if pid != os.getpid()]
    return (
        result,
        elapsed,
        {
            "parent_peak_mb": added.get(os.getpid()),
            "worker_peak_mb": max(workers) if workers else None,
            "peaks_reset": peaks_reset,
        },
    )


async def _round_trip(setup: Setup, config: Config, kind: str) -> Measurement:
    """Send a big payload to a worker (and back); time it and the peak memory it added.

    First the argument alone (``size_of(payload)``), then the round trip (``echo``).
    """
    payload = _payload(kind, config)
    size, _, argument = await _peaks(setup, size_of, payload)
    if size != config.big_mb * 1_000_000:
        raise AssertionError(f"the worker saw {size} bytes")

    back, elapsed, trip = await _peaks(setup, echo, payload)
    if not _same(payload, back):
        raise AssertionError(f"the {kind} payload came back different")

    return Measurement(
        elapsed * 1e3,
        {
            **trip,
            "argument_parent_peak_mb": argument["parent_peak_mb"],
            "argument_worker_peak_mb": argument["worker_peak_mb"],
            "payload_mb": config.big_mb,
        },
    )


async def _first_call(contender: Contender) -> tuple[Measurement, Setup]:
    """Make the contender's pool and time it up to the first result of ``tiny(1)``."""
    gc.collect()
    start = time.perf_counter()
    setup = await contender.setup()
    if await setup.call(tiny, 1) != 2:
        raise AssertionError("tiny(1) returned a wrong answer")

    return Measurement((time.perf_counter() - start) * 1e3, {}), setup


def _fresh_interpreter(contender: Contender) -> Measurement:
    """(e): run ``--cold-child`` in a new interpreter and read its figure."""
    import subprocess

    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--cold-child", contender.key],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"--cold-child {contender.key} failed: {done.stderr[-500:]}")

    data = json.loads(lines[-1])
    return Measurement(data["ms"], {"left_in_child": data["left"]})


def cold_child(key: str) -> int:
    """(e), in the fresh interpreter: the first call, with no forkserver running yet."""
    contender = next(c for c in CONTENDERS if c.key == key)
    if contender.module is not None:
        importlib.import_module(contender.module)  # imports are not what (e) times

    async def main() -> float:
        result, setup = await _first_call(contender)
        await setup.close()
        return result.value

    ms = run(contender.family, main)
    print(json.dumps({"ms": ms, "left": _wait_no_processes(LEAK_WAIT)}))
    return 0


# -- one measurement ---------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    workload: str
    contender: str
    round: int
    value: float
    extra: dict[str, Any]
    how: str
    kills: bool
    workers_seen: int  # distinct worker pids in the warm-up
    stats: dict[str, Any] | None  # offload's pool.stats() before closing
    left: list[str]  # processes still alive LEAK_WAIT s after the measurement


_counter = itertools.count()


def measure(workload: Workload, contender: Contender, round_: int, config: Config) -> Sample:
    family = contender.family

    async def main() -> tuple[Measurement, Setup, int, dict[str, Any] | None]:
        if workload.key == "d":
            result, setup = await _first_call(contender)
            try:
                stats = setup.stats() if setup.stats is not None else None
            finally:
                await setup.close()

            return result, setup, WORKERS, stats

        setup = await contender.setup()
        try:
            seen = await _warm(family, setup, config)
            if workload.key == "a":
                result = await _small_calls(family, setup, config)
            elif workload.key == "b":
                result = await _cpu_calls(family, setup, config)
            elif workload.key in "cf":
                name = f"{contender.key}-{round_}-{next(_counter)}"
                result = await _cancel(setup, config, name, then_call=workload.key == "f")
            else:
                result = await _round_trip(
                    setup, config, "bytes" if workload.key == "g" else "numpy"
                )

            stats = setup.stats() if setup.stats is not None else None
        finally:
            await setup.close()

        return result, setup, seen, stats

    if workload.key == "e":
        result = _fresh_interpreter(contender)
        return Sample(
            workload=workload.key,
            contender=contender.key,
            round=round_,
            value=result.value,
            extra=result.extra,
            how="a fresh interpreter: python processes.py --cold-child " + contender.key,
            kills=False,
            workers_seen=WORKERS,
            stats=None,
            left=result.extra["left_in_child"] + _wait_no_processes(LEAK_WAIT),
        )

    result, setup, seen, stats = run(family, main)
    return Sample(
        workload=workload.key,
        contender=contender.key,
        round=round_,
        value=result.value,
        extra=result.extra,
        how=setup.how,
        kills=setup.kills,
        workers_seen=seen,
        stats=stats,
        left=_wait_no_processes(LEAK_WAIT),
    )


# -- report ------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _ratio(baseline: float, value: float) -> float:
    """How many times faster than the baseline: >1 is better (all figures are times)."""
    return baseline / value if value else math.inf


def _samples(samples: Sequence[Sample], workload: str, contender: str) -> list[Sample]:
    return [s for s in samples if s.workload == workload and s.contender == contender]


def _paired(samples: Sequence[Sample], workload: str, key: str) -> float | None:
    """Median over rounds of each round's own ratio of the baseline to ``key``."""
    by_round: dict[int, dict[str, float]] = {}
    for s in samples:
        if s.workload == workload:
            by_round.setdefault(s.round, {})[s.contender] = s.value

    ratios = [_ratio(r[BASELINE], r[key]) for r in by_round.values() if key in r and BASELINE in r]
    return statistics.median(ratios) if ratios else None


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        print("  " + "  ".join(cells).rstrip())


def _fmt(unit: str, value: float) -> str:
    if unit == "s":
        return f"{value:.3f}"

    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"

    return f"{value:,.1f}"


def print_table(
    samples: Sequence[Sample], workload: Workload, order: Sequence[str], config: Config
) -> None:
    keys = [key for key in order if _samples(samples, workload.key, key)]
    if not keys:
        return

    base = _samples(samples, workload.key, BASELINE)
    base_label = LABELS[BASELINE]
    print(f"\n{workload.title}: {workload.unit}")
    print(
        f"  (lower is better; ratio = {base_label} / contender, so >1 means faster than "
        f"{base_label};"
    )
    print("   ratio: of the medians; paired: the median over rounds of each round's own ratio)")
    if workload.key == "c":
        _cancel_table(samples, keys, base, config)
        return

    header = ["contender", f"median {workload.unit}", "min - max", "ratio", "paired"]
    if workload.key == "a":
        header.append("parent CPU µs/call")
        print(
            "   parent CPU: CPU time this process (all its threads) spent per call, median: "
            "on 2 cores it competes with the workers"
        )

    if workload.key == "f":
        header.append("kills")
        print(
            "   kills: the cancelled call's worker was killed (a pool that cannot kill runs "
            "the next call on its other worker)"
        )

    if workload.key in "gh":
        header += ["parent +MB", "worker +MB", "arg only: parent", "worker"]
        print(
            "   +MB: the peak RSS (VmHWM) that the round trip added, median, to this process "
            "and to the busiest worker; the payload itself existed before. arg only: the same "
            "for a call that only receives the payload (size_of(payload))"
        )

    if workload.key == "b":
        header += ["x ideal", "s/call in worker", "workers busy", "parent CPU ms"]
        print(
            f"   ideal: {_ideal(config):g} s ({config.cpu_calls} calls on {WORKERS} cores); "
            "s/call in worker: the median time one call took inside its worker (above "
            f"{config.cpu_seconds:g} s when the machine was busy with something else);"
        )
        print(
            "   workers busy: the time spent inside calls / (workers x wall time), median; "
            "1.00 = no gap between calls, whatever the machine's speed"
        )

    rows: list[list[str]] = []
    for key in keys:
        mine = _samples(samples, workload.key, key)
        values = [s.value for s in mine]
        ratio = paired = "-"
        if base:
            ratio = f"{_ratio(_median([s.value for s in base]), _median(values)):.2f}x"
            by_round = _paired(samples, workload.key, key)
            paired = "-" if by_round is None else f"{by_round:.2f}x"

        line = [
            LABELS[key] + (" (baseline)" if key == BASELINE else ""),
            _fmt(workload.unit, _median(values)),
            f"{_fmt(workload.unit, min(values))} - {_fmt(workload.unit, max(values))}",
            ratio,
            paired,
        ]
        if workload.key == "a":
            line.append(f"{_median([s.extra['parent_cpu_us_per_call'] for s in mine]):.1f}")

        if workload.key == "f":
            killed = sum(1 for s in mine if s.extra["killed"])
            line.append("yes" if killed == len(mine) else f"{killed}/{len(mine)}")

        if workload.key in "gh":
            for field in (
                "parent_peak_mb",
                "worker_peak_mb",
                "argument_parent_peak_mb",
                "argument_worker_peak_mb",
            ):
                got = [s.extra[field] for s in mine if s.extra[field] is not None]
                line.append(f"{_median(got):,.0f}" if got else "-")

        if workload.key == "b":
            per_call = [t for s in mine for t in s.extra["in_worker_s"]]
            parent = _median([s.extra["parent_cpu_s"] for s in mine]) * 1e3
            busy = _median([sum(s.extra["in_worker_s"]) / (WORKERS * s.value) for s in mine])
            line += [
                f"{_median(values) / _ideal(config):.2f}",
                f"{_median(per_call):.3f}",
                f"{busy:.2f}",
                f"{parent:.1f}",
            ]

        rows.append(line)

    _table(header, rows)


def _cancel_table(
    samples: Sequence[Sample], keys: Sequence[str], base: Sequence[Sample], config: Config
) -> None:
    print(
        "   back: from task.cancel() until the awaiter has control back; CPU free: until the "
        "worker process is dead (gone or a zombie) or has finished the call."
    )
    print(
        f"   Contenders that cannot kill a running call spin {config.cap:g} s instead of "
        f"{KILL_SPIN:g} s, so the benchmark finishes: their CPU-free time is set by that cap "
        "(uncapped it would be the whole call), and a CPU-free ratio against such a baseline "
        "is a lower bound (shown with >=)."
    )
    header = [
        "contender",
        "kills",
        "back ms",
        "min - max",
        "ratio",
        "CPU free ms",
        "min - max",
        "ratio",
    ]
    base_back = _median([s.value for s in base]) if base else None
    base_free = _median([s.extra["cpu_free_ms"] for s in base]) if base else None
    base_kills = bool(base) and all(s.extra["killed"] for s in base)
    rows: list[list[str]] = []
    notes: list[str] = []
    for key in keys:
        mine = _samples(samples, "c", key)
        back = [s.value for s in mine]
        free = [s.extra["cpu_free_ms"] for s in mine]
        killed = all(s.extra["killed"] for s in mine)
        ran = sum(1 for s in mine if not s.extra["killed"])
        kills = "yes" if killed else "no" if ran == len(mine) else f"{len(mine) - ran}/{len(mine)}"
        back_ratio = free_ratio = "-"
        if base_back is not None and base_free is not None:
            back_ratio = f"{_ratio(base_back, _median(back)):.2f}x"
            bound = "" if base_kills or key == BASELINE else ">="
            free_ratio = f"{bound}{_ratio(base_free, _median(free)):.2f}x"

        rows.append(
            [
                LABELS[key] + (" (baseline)" if key == BASELINE else ""),
                kills,
                _fmt("ms", _median(back)),
                f"{_fmt('ms', min(back))} - {_fmt('ms', max(back))}",
                back_ratio,
                _fmt("ms", _median(free)),
                f"{_fmt('ms', min(free))} - {_fmt('ms', max(free))}",
                free_ratio,
            ]
        )
        if ran:
            notes.append(
                f"{LABELS[key]}: cannot kill: CPU busy until the call ends (here the "
                f"{mine[0].extra['spin_s']:g} s cap; a real {KILL_SPIN:g} s call keeps a worker "
                f"busy {KILL_SPIN:g} s after the cancel)"
            )

    _table(header, rows)
    for note in notes:
        print(f"  {note}")


def summary(samples: Sequence[Sample], loads: Sequence[Workload]) -> dict[str, Any]:
    """Offload's figures, its ratios against the baseline, and where a peer beats it."""
    result: dict[str, Any] = {}
    parts: list[str] = []
    losses: list[str] = []
    for workload in loads:
        mine = _samples(samples, workload.key, "offload")
        base = _samples(samples, workload.key, BASELINE)
        if not mine:
            continue

        value = _median([s.value for s in mine])
        entry: dict[str, Any] = {"median": value}
        text = f"({workload.key}) {_fmt(workload.unit, value)} {workload.unit}"
        if workload.key == "c":
            free = _median([s.extra["cpu_free_ms"] for s in mine])
            entry["cpu_free_ms"] = free
            target = "within" if value < TARGET_BACK_MS else "OVER"
            text = (
                f"(c) control back {value:.2f} ms ({target} the {TARGET_BACK_MS:g} ms target), "
                f"CPU free {free:.1f} ms"
            )

        if base:
            ratio = _ratio(_median([s.value for s in base]), value)
            entry["vs_baseline"] = ratio
            entry["vs_baseline_paired"] = _paired(samples, workload.key, "offload")
            text += f", {ratio:.2f}x vs ProcessPoolExecutor"

        parts.append(text)
        result[workload.key] = entry
        for key in LABELS:
            if key in ("offload", "offload_trio"):
                continue

            peer = _samples(samples, workload.key, key)
            if not peer:
                continue

            if workload.key == "c":
                pairs = [
                    ("CPU free", free, _median([s.extra["cpu_free_ms"] for s in peer])),
                    ("control back", value, _median([s.value for s in peer])),
                ]
            else:
                pairs = [("", value, _median([s.value for s in peer]))]

            for what, own, theirs in pairs:
                if theirs < own:
                    unit = "ms" if workload.key == "c" else workload.unit
                    losses.append(
                        f"({workload.key}{' ' + what if what else ''}) {LABELS[key]} "
                        f"by {own / theirs:.2f}x ({_fmt(unit, theirs)} vs "
                        f"{_fmt(unit, own)} {unit})"
                    )

    print("\nsummary: offload, >1 = faster than ProcessPoolExecutor: " + "; ".join(parts))
    trio_rows = _samples(samples, "a", "offload_trio")
    if trio_rows:
        value = _median([s.value for s in trio_rows])
        print(f"summary: offload on trio (a) {value:,.1f} µs/call")
        result["a_trio"] = value

    print("summary: offload loses to: " + ("; ".join(losses) if losses else "nobody, anywhere"))
    result["losses"] = losses
    return result


# -- main --------------------------------------------------------------------------------------


def calibrate(seconds: float) -> tuple[int, float]:
    """Return the iterations of ``spin`` that take about ``seconds`` on this machine, and how
    long one run of them took here.

    The rate comes from the fastest of 15 short runs: the machine is shared, and a run that
    lost the CPU to another process for a while says nothing about the CPU's speed.
    """
    n = 100_000
    while True:
        start = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - start
        if elapsed > 0.02:
            break

        n *= 2

    chunk = max(1_000, round(n * 0.05 / elapsed))
    times: list[float] = []
    for _ in range(15):
        start = time.perf_counter()
        spin(chunk)
        times.append(time.perf_counter() - start)

    n = max(1_000, round(chunk * seconds / min(times) / 1_000) * 1_000)
    start = time.perf_counter()
    spin(n)
    return n, time.perf_counter() - start


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark offload's process pool against its peers (interleaved rounds, "
        "medians, ratios against loop.run_in_executor(ProcessPoolExecutor))."
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds (default 5, or 2 with --quick)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="300 calls in (a), 0.2 s calls in (b), a 1 s cap in (c), 2 rounds: well under a "
        "minute",
    )
    parser.add_argument("--json", metavar="FILE", help="write every raw number to FILE")
    parser.add_argument(
        "--workloads",
        default="abcdefgh",
        help="which workloads to run, by letter (default abcdefgh: all)",
    )
    parser.add_argument("--cold-child", metavar="KEY", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5

    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _return_big_blocks()
    if args.cold_child:
        return cold_child(args.cold_child)

    rounds: int = args.rounds
    quick: bool = args.quick
    notes: list[str] = []

    plan: list[Contender] = []
    for contender in CONTENDERS:
        missing = _missing(contender.module)
        if missing is not None:
            notes.append(f"{contender.label} skipped: {missing}")
            continue

        plan.append(contender)

    print(
        f"offload process benchmark: Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {WORKERS} worker processes for everyone, "
        f"{rounds} rounds{' (quick)' if quick else ''}"
    )
    source = offload_source()
    load_start = load_average()
    print(
        "versions: "
        + ", ".join(
            f"{k} {v}"
            for k, v in versions(
                ("offload", "anyio", "trio", "loky", "pebble", "aiomultiprocess")
            ).items()
        )
    )
    print(f"offload under test: {source}; load average at the start: {load_start}")
    cpu_seconds = 0.2 if quick else 0.5
    spin_n, spin_time = calibrate(cpu_seconds)
    print(
        f"calibration: spin({spin_n:,}) ~ {cpu_seconds:g} s (the fastest of 15 runs of "
        f"0.05 s; one run of spin({spin_n:,}) just took {spin_time:.3f} s)"
    )
    print(
        "method: one event loop and one fresh pool per measurement, warmed up before the "
        "clock starts and shut down after it; contenders interleaved, their order rotated "
        "each round; medians across rounds"
    )
    for note in notes:
        print(f"note: {note}")

    with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmpdir:
        config = Config(
            calls=300 if quick else 1_000,
            in_flight=8,
            warmup_calls=50 if quick else 100,
            cpu_calls=4,
            cpu_seconds=cpu_seconds,
            spin_n=spin_n,
            cap=1.0 if quick else 3.0,
            tmpdir=tmpdir,
            big_mb=20 if quick else 100,
        )
        loads = tuple(w for w in workloads(config) if w.key in args.workloads)
        if "h" in args.workloads and _missing("numpy") is not None:
            notes.append("(h) skipped: numpy is not installed")
            print(f"note: {notes[-1]}")
            loads = tuple(w for w in loads if w.key != "h")

        samples: list[Sample] = []
        failures: list[str] = []
        began = time.perf_counter()
        processes_start = _left_processes()

        def one(workload: Workload, contender: Contender, round_: int, cfg: Config) -> None:
            try:
                sample = measure(workload, contender, round_, cfg)
            except Exception as exc:
                failures.append(
                    f"({workload.key}) {contender.label}, round {round_ + 1}: "
                    f"{type(exc).__name__}: {exc}"
                )
                print(f"  FAILED: {failures[-1]}", file=sys.stderr, flush=True)
                return

            if round_ >= 0 or sample.left:
                samples.append(sample)

        # A warm-up pass, not recorded: every contender once, small, so that lazy imports and
        # the forkserver's start land in no contender's numbers.
        small = dataclasses.replace(config, calls=50, warmup_calls=10)
        for contender in plan:
            one(loads[0], contender, -1, small)

        print(
            f"  warm-up pass done, {time.perf_counter() - began:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        for round_ in range(rounds):
            for workload in loads:
                contenders = [c for c in plan if workload.key in c.workloads]
                shift = round_ % len(contenders)
                for contender in contenders[shift:] + contenders[:shift]:
                    one(workload, contender, round_, config)

            elapsed = time.perf_counter() - began
            print(
                f"  round {round_ + 1}/{rounds} done, {elapsed:.0f} s", file=sys.stderr, flush=True
            )

        recorded = [s for s in samples if s.round >= 0]
        order = [c.key for c in plan]
        for workload in loads:
            print_table(recorded, workload, order, config)

        print("\nhow each contender calls (2 worker processes each):")
        for contender in plan:
            hows = {s.how for s in recorded if s.contender == contender.key}
            for how in sorted(hows):
                print(f"  {contender.label}: {how}")

        short = sorted({(s.contender, s.workers_seen) for s in recorded if s.workers_seen < 2})
        for key, seen in short:
            print(f"  note: {LABELS[key]} used only {seen} worker process(es) in a warm-up")

        result = summary(recorded, loads)

    leaks = [s for s in samples if s.left]
    helpers = _helpers()
    processes_end = _left_processes()
    print(
        f"\nprocesses: {len(recorded)} measurements, {len(leaks)} left a worker process "
        f"behind (checked with multiprocessing.active_children() and the descendants of this "
        f"process, {LEAK_WAIT:g} s after each); worker processes alive now: "
        f"{len(processes_end)} (at the start: {len(processes_start)}); multiprocessing "
        f"helpers alive now (not workers): {len(helpers)}"
    )
    for s in leaks:
        when = "the warm-up pass" if s.round < 0 else f"round {s.round + 1}"
        print(f"  LEFT ({s.workload}) {LABELS[s.contender]}, {when}: {s.left}")

    for pid, what in sorted(helpers.items()):
        print(f"  helper: pid {pid}, {what}")

    for failure in failures:
        print(f"FAILED: {failure}")

    keys = {c.key for c in plan}
    if "anyio" in keys:
        print(
            "stderr: \"Unknown child process pid N\" is asyncio's child watcher, when anyio's "
            "workers are reaped at the end of a loop's run (harmless)"
        )

    if "pebble" in keys:
        print(
            "stderr: a FileNotFoundError traceback from multiprocessing/synchronize.py is "
            "pebble's replacement for a killed worker, started as its pool closes (harmless)"
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
                "workers": WORKERS,
                "start_method": START_METHOD,
                "versions": versions(
                    ("offload", "anyio", "trio", "loky", "pebble", "aiomultiprocess")
                ),
                "offload_source": source,
                "load_average": {"start": load_start, "end": load_end},
                "rounds": rounds,
                "quick": quick,
                "notes": notes,
                "failures": failures,
                "seconds": total,
                "calibration": {"spin_n": spin_n, "seconds": cpu_seconds},
                "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "tmpdir"},
                "kill_spin_s": KILL_SPIN,
            },
            "workloads": {w.key: dataclasses.asdict(w) for w in loads},
            "contenders": [c.key for c in plan],
            "baseline": BASELINE,
            "samples": [dataclasses.asdict(s) for s in recorded],
            "summary": result,
        }
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1)
            file.write("\n")

        print(f"raw numbers written to {args.json}")

    return 1 if leaks or failures or processes_end else 0


if __name__ == "__main__":
    sys.exit(main())
