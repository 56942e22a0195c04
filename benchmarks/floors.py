"""What a second thread costs a busy event loop, and the floor for a tiny process call.

Two measurements that explain offload's design and show where it can still go:

1. **Wake-ups.** A busy asyncio loop (50 tasks yielding) beside a thread that wakes every
   ``p`` seconds and goes back to sleep. Each wake must take the GIL from a loop that lets go
   of it and takes it back around every ``epoll(0)``, and the handover drags on: this is why
   ``offload.monitor``'s watchdog sleeps on a kernel timer instead of waking on a schedule.
   A separate process that wakes as often is shown for comparison (it costs nothing).

2. **Tiny process calls** (``x + 1``, 2 forkserver workers, 8 calls in flight):
   two plain threads driving the pipes (no event loop), the same beside a thread that
   churns the GIL like a busy loop, a 40-line loop-native prototype (the loop owns the pipes
   through ``add_reader``), and ``offload.ProcessPool``. Wall time and parent CPU per call.

Usage: ``python benchmarks/floors.py [--rounds N]``. Rounds are interleaved; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import multiprocessing.connection
import pickle
import select
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from _common import yielding_rate

import offload

Conn = multiprocessing.connection.Connection
_POOL = offload.ProcessPool("floors", max_workers=2)

# -- 1. wake-ups ------------------------------------------------------------------------------


def loop_rate(seconds: float = 0.5) -> float:
    """Steps per second of 50 tasks that yield to an asyncio loop in a loop."""
    return asyncio.run(yielding_rate(seconds))


def with_waking_thread(period: float) -> float:
    stop = threading.Event()

    def wake() -> None:
        lock = threading.Lock()
        lock.acquire()
        while not stop.is_set():
            lock.acquire(timeout=period)

    thread = threading.Thread(target=wake)
    thread.start()
    try:
        return loop_rate()
    finally:
        stop.set()
        thread.join()


def with_waking_process(period: float) -> float:
    code = f"import time\nwhile True: time.sleep({period})"
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.1)
        return loop_rate()
    finally:
        process.kill()
        process.wait()


def wakeups(rounds: int) -> None:
    variants: dict[str, Callable[[], float]] = {
        "no other thread": loop_rate,
        "a thread waking every 50 ms": lambda: with_waking_thread(0.05),
        "a thread waking every 200 ms": lambda: with_waking_thread(0.2),
        "a thread waking every 1 s": lambda: with_waking_thread(1.0),
        "a process waking every 50 ms": lambda: with_waking_process(0.05),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            rates[name].append(run())

    base = statistics.median(rates["no other thread"])
    print("1. A busy asyncio loop (50 tasks yielding) beside something that wakes: steps/s")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"   {name:<30} {rate:>11,.0f}   cost {(1 - rate / base) * 100:5.1f}%")


# -- 2. tiny process calls --------------------------------------------------------------------


def tiny(x: int) -> int:
    return x + 1


def child(conn: Conn) -> None:
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            return
        fn, arg = pickle.loads(message)
        conn.send_bytes(pickle.dumps(fn(arg)))


def plain_threads(conns: list[Conn], calls: int) -> None:
    def drive(conn: Conn, count: int) -> None:
        for i in range(count):
            conn.send_bytes(pickle.dumps((tiny, i)))
            pickle.loads(conn.recv_bytes())

    threads = [threading.Thread(target=drive, args=(c, calls // len(conns))) for c in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def churn(stop: threading.Event) -> None:
    """Hold the GIL and let go of it often, as a busy loop does around ``epoll(0)``."""
    while not stop.is_set():
        for _ in range(200):
            pass
        select.select([], [], [], 0)


def plain_threads_beside_churn(conns: list[Conn], calls: int) -> None:
    stop = threading.Event()
    churner = threading.Thread(target=churn, args=(stop,))
    churner.start()
    try:
        plain_threads(conns, calls)
    finally:
        stop.set()
        churner.join()


class _LoopNative:
    """The prototype: the loop sends, and reads each worker's pipe through ``add_reader``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conns: list[Conn]) -> None:
        self.loop = loop
        self.idle = list(conns)
        self.queue: collections.deque[tuple[bytes, asyncio.Future[int]]] = collections.deque()
        self.busy: dict[Conn, asyncio.Future[int]] = {}
        for conn in conns:
            loop.add_reader(conn.fileno(), self._readable, conn)

    def close(self) -> None:
        for conn in list(self.idle) + list(self.busy):
            self.loop.remove_reader(conn.fileno())

    def call(self, arg: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = self.loop.create_future()
        message = pickle.dumps((tiny, arg))
        if self.idle:
            conn = self.idle.pop()
            self.busy[conn] = future
            conn.send_bytes(message)
        else:
            self.queue.append((message, future))
        return future

    def _readable(self, conn: Conn) -> None:
        future = self.busy.pop(conn)
        result = pickle.loads(conn.recv_bytes())
        if self.queue:
            message, following = self.queue.popleft()
            self.busy[conn] = following
            conn.send_bytes(message)
        else:
            self.idle.append(conn)
        future.set_result(result)


async def _eight_in_flight(call: Callable[[int], asyncio.Future[int]], calls: int) -> None:
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> int:
        async with gate:
            return await call(i)

    await asyncio.gather(*(one(i) for i in range(calls)))


def loop_native(conns: list[Conn], calls: int) -> None:
    async def main() -> None:
        pool = _LoopNative(asyncio.get_running_loop(), conns)
        try:
            await _eight_in_flight(pool.call, calls)
        finally:
            pool.close()

    asyncio.run(main())


def process_calls(rounds: int, calls: int) -> None:
    context = multiprocessing.get_context("forkserver")
    conns: list[Conn] = []
    processes = []
    for _ in range(2):
        parent, worker = context.Pipe()
        process = context.Process(target=child, args=(worker,), daemon=True)
        process.start()
        worker.close()
        conns.append(parent)
        processes.append(process)

    variants: dict[str, Callable[[], None]] = {
        "plain threads, no loop": lambda: plain_threads(conns, calls),
        "plain threads beside a GIL churner": lambda: plain_threads_beside_churn(conns, calls),
        "loop-native prototype (asyncio)": lambda: loop_native(conns, calls),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    results["offload.ProcessPool (asyncio)"] = []
    for _ in range(rounds):
        for name, run in variants.items():
            start, cpu = time.perf_counter(), time.process_time()
            run()
            results[name].append((time.perf_counter() - start, time.process_time() - cpu))
        results["offload.ProcessPool (asyncio)"].append(_timed_offload(calls))

    for conn in conns:
        conn.close()
    for process in processes:
        process.join()

    print(f"\n2. {calls:,} tiny process calls, 2 forkserver workers: µs per call (medians)")
    print("   (the GIL churner's own CPU counts in its row's parent CPU)")
    print(f"   {'':<38} {'wall':>7} {'parent CPU':>11}")
    for name, values in results.items():
        wall = statistics.median(w for w, _ in values) / calls * 1e6
        cpu = statistics.median(c for _, c in values) / calls * 1e6
        print(f"   {name:<38} {wall:>7.1f} {cpu:>11.1f}")


def _timed_offload(calls: int) -> tuple[float, float]:
    timing: list[tuple[float, float]] = []

    async def main() -> None:
        # The pool's workers start in each run and are gone when it ends.
        await asyncio.gather(*(_POOL.call(tiny, i) for i in range(4)))  # start both

        def call(i: int) -> asyncio.Future[int]:
            return asyncio.ensure_future(_POOL.call(tiny, i))

        start, cpu = time.perf_counter(), time.process_time()
        await _eight_in_flight(call, calls)
        timing.append((time.perf_counter() - start, time.process_time() - cpu))

    asyncio.run(main())
    return timing[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--calls", type=int, default=4000, help="process calls per measurement")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {args.rounds} interleaved rounds, medians\n")
    wakeups(args.rounds)
    process_calls(args.rounds, args.calls)


if __name__ == "__main__":
    main()
