"""The worker layer on its own, without a pool: workers run each submitted job and hand it to
their delivery callback (here a queue), as trio's tests drive its thread cache. Thread workers
need no event loop; process workers are driven by one (the loop reads their pipes)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from queue import SimpleQueue
from time import perf_counter
from typing import Any

import anyio
import pytest

import offload
from _support import WAIT, spin_until, until
from offload._backends import current_key, current_loop
from offload._exceptions import WorkerCrashed
from offload._job import Job
from offload._options import Options
from offload._processes import ProcessWorkers
from offload._settings import ProcessSettings, ThreadSettings, default_start_method
from offload._threads import ThreadWorkers


def new_job(fn: Any, *args: Any, options: Options | None = None) -> Job:
    """Return a job as the runtime makes one, without a waiter (nobody awaits here)."""
    return Job(fn, args, {}, None, None, None, perf_counter(), options)  # type: ignore[arg-type]


def next_delivered(delivered: SimpleQueue[Job]) -> Job:
    return delivered.get(timeout=WAIT)


class TestThreadWorkers:
    """Worker threads run jobs first in, first out, within their capacity and bound."""

    def test_a_job_runs_on_a_worker_thread_and_is_delivered(self) -> None:
        """A submitted job runs on a thread of the pool and reaches the callback, done."""
        delivered: SimpleQueue[Job] = SimpleQueue()
        workers = ThreadWorkers("w", delivered.put, 2, 60.0)
        job = new_job(lambda: threading.current_thread().name)
        assert workers.submit(job, None)
        assert next_delivered(delivered) is job
        assert job.ok
        assert job.error is None
        assert str(job.value).startswith("offload-w-")
        assert 0 < job.started <= job.ended
        assert workers.shutdown() == []

    def test_an_error_is_delivered_as_the_outcome(self) -> None:
        """What the function raised is the job's error, and the job is still delivered."""
        delivered: SimpleQueue[Job] = SimpleQueue()
        workers = ThreadWorkers("w", delivered.put, 1, 60.0)
        job = new_job(int, "not a number")
        workers.submit(job, None)
        assert next_delivered(delivered) is job
        assert isinstance(job.error, ValueError)
        assert not job.ok
        workers.shutdown()

    def test_jobs_beyond_capacity_wait_in_order(self) -> None:
        """With every thread busy, further jobs wait and then run first in, first out."""
        delivered: SimpleQueue[Job] = SimpleQueue()
        workers = ThreadWorkers("w", delivered.put, 2, 60.0)
        gate = threading.Event()
        order: list[int] = []
        blockers = [new_job(gate.wait, WAIT) for _ in range(2)]
        waiting = [new_job(order.append, i) for i in range(3)]
        for job in blockers + waiting:
            assert workers.submit(job, None)

        spin_until(lambda: workers.gauges()[1] == 2, "both threads to be busy")
        assert workers.gauges() == (2, 2, 3, 0)
        gate.set()
        done = {next_delivered(delivered) for _ in range(5)}
        assert done == set(blockers + waiting)
        assert order == [0, 1, 2]
        workers.shutdown()

    def test_the_pending_bound_refuses_a_job_that_would_wait_past_it(self) -> None:
        """With the thread busy and ``max_pending`` jobs waiting, one more is refused."""
        delivered: SimpleQueue[Job] = SimpleQueue()
        workers = ThreadWorkers("w", delivered.put, 1, 60.0)
        gate = threading.Event()
        running = new_job(gate.wait, WAIT)
        assert workers.submit(running, 1)
        spin_until(lambda: workers.gauges()[1] == 1, "the thread to be busy")
        assert workers.submit(new_job(int), 1)
        assert not workers.submit(new_job(int), 1)
        assert not workers.submit(new_job(int), 2, 1)  # one more waits for a limit
        assert workers.pending == 1
        gate.set()
        for _ in range(2):
            next_delivered(delivered)

        workers.shutdown()

    def test_a_withdrawn_job_never_runs(self) -> None:
        """A job taken back before a thread started it is neither run nor delivered."""
        delivered: SimpleQueue[Job] = SimpleQueue()
        workers = ThreadWorkers("w", delivered.put, 1, 60.0)
        gate = threading.Event()
        ran: list[int] = []
        blocker = new_job(gate.wait, WAIT)
        queued = new_job(ran.append, 1)
        workers.submit(blocker, None)
        workers.submit(queued, None)
        assert workers.withdraw(queued)
        assert not workers.withdraw(queued)
        gate.set()
        assert next_delivered(delivered) is blocker
        workers.shutdown()
        assert ran == []
        assert delivered.empty()

    def test_a_job_whose_caller_is_gone_is_delivered_without_running(self) -> None:
        """A job whose caller left before a thread took it comes back unrun."""
        delivered: SimpleQueue[Job] = SimpleQueue()
        workers = ThreadWorkers("w", delivered.put, 1, 60.0)
        ran: list[int] = []
        job = new_job(ran.append, 1)
        job.caller_gone = True
        workers.submit(job, None)
        assert next_delivered(delivered) is job
        assert ran == []
        assert not job.ok
        assert job.started == 0
        workers.shutdown()

    def test_offload_cancelled_reads_the_running_jobs_flag(self) -> None:
        """Inside a job, ``offload.cancelled()`` turns True once its caller is gone."""
        delivered: SimpleQueue[Job] = SimpleQueue()
        workers = ThreadWorkers("w", delivered.put, 1, 60.0)
        inside = threading.Event()

        def loop_until_cancelled() -> str:
            inside.set()
            spin_until(offload.cancelled, "offload.cancelled() to turn True")
            return "stopped"

        job = new_job(loop_until_cancelled)
        workers.submit(job, None)
        assert inside.wait(WAIT)
        job.caller_gone = True
        assert next_delivered(delivered).value == "stopped"
        workers.shutdown()

    def test_shutdown_joins_idle_threads_and_returns_busy_ones(self) -> None:
        """Shutdown joins the idle threads and hands back those still inside a job."""
        delivered: SimpleQueue[Job] = SimpleQueue()
        workers = ThreadWorkers("w", delivered.put, 2, 60.0)
        gate = threading.Event()
        workers.submit(new_job(int), None)
        next_delivered(delivered)
        workers.submit(new_job(gate.wait, WAIT), None)
        spin_until(lambda: workers.gauges()[1] == 1, "a thread to be busy")
        busy = workers.shutdown()
        assert len(busy) == 1
        assert busy[0].is_alive()
        gate.set()
        next_delivered(delivered)
        busy[0].join(WAIT)
        assert workers.workers == 0

    def test_a_thread_leaving_a_shrunk_pool_is_joined_until_it_has_delivered(self) -> None:
        """A thread made extra by a smaller max_workers stays among the pool's threads while it
        hands back its last job, so a shutdown at that moment joins it."""
        delivering = threading.Event()
        release = threading.Event()
        delivered: SimpleQueue[Job] = SimpleQueue()

        def deliver(job: Job) -> None:
            if job.value == "held":
                delivering.set()
                release.wait(WAIT)
            delivered.put(job)

        workers = ThreadWorkers("w", deliver, 2, 60.0)
        gates = threading.Event(), threading.Event()
        held = new_job(lambda: gates[0].wait(WAIT) and "held")
        other = new_job(gates[1].wait, WAIT)
        workers.submit(held, None)
        workers.submit(other, None)
        spin_until(lambda: workers.gauges()[1] == 2, "both threads to be busy")
        workers.reconfigure(ThreadSettings(max_workers=1))
        gates[0].set()  # its thread finds itself extra, and leaves once it has delivered
        assert delivering.wait(WAIT)
        assert workers.workers == 2  # both threads are alive, and both are counted
        gates[1].set()
        next_delivered(delivered)
        stopper = threading.Thread(target=workers.shutdown)
        stopper.start()
        release.set()
        stopper.join(WAIT)
        assert next_delivered(delivered) is held
        assert workers.workers == 0
        assert not any(t.name.startswith("offload-w-") for t in threading.enumerate())


# -- functions the worker processes run (module level: they import them by name) -------------


def pid() -> int:
    return os.getpid()


def announce_then_sleep(path: str) -> None:
    Path(path).touch()
    while True:
        time.sleep(0.01)


def announce_then_wait_for_cancel(path: str) -> str:
    Path(path).touch()
    while not offload.cancelled():
        time.sleep(0.001)

    return "stopped"


def crash_once(path: str) -> str:
    if not os.path.exists(path):
        Path(path).touch()
        os._exit(3)

    return "ran again"


class Delivered:
    """The delivery callback of loop-driven workers: keeps each job, and wakes the test."""

    def __init__(self) -> None:
        self.jobs: deque[Job] = deque()
        self._event = anyio.Event()

    def put(self, job: Job) -> None:
        self.jobs.append(job)
        self._event.set()

    async def next(self) -> Job:
        """Wait in the loop for the next delivered job."""
        with anyio.fail_after(WAIT):
            while not self.jobs:
                await self._event.wait()
                self._event = anyio.Event()

        return self.jobs.popleft()


def new_process_workers(
    delivered: Delivered, max_workers: int = 1, **settings: Any
) -> ProcessWorkers:
    """Return process workers driven by the running loop, as a pool's runtime makes them."""
    loop = current_loop(current_key())
    return ProcessWorkers(
        "p",
        delivered.put,
        loop,
        ProcessSettings(max_workers=max_workers, start_method=default_start_method(), **settings),
    )


class TestProcessWorkers:
    """Process workers run each job in a process whose pipe the loop reads, and can stop it.

    They need a running loop (it owns the pipes), so these tests run in one, on every
    backend, and drive the workers directly, as a pool's runtime does.
    """

    async def test_a_job_runs_in_a_worker_process_and_is_delivered(self) -> None:
        """A job runs in another process; the next one reuses that process."""
        delivered = Delivered()
        workers = new_process_workers(delivered)
        first, second = new_job(pid), new_job(pid)
        workers.submit(first, None)
        workers.submit(second, None)
        assert {await delivered.next(), await delivered.next()} == {first, second}
        assert first.ok
        assert first.value != os.getpid()
        assert second.value == first.value
        assert workers.shutdown() == []

    async def test_notify_turns_offload_cancelled_true_in_the_process(
        self, tmp_path: Path
    ) -> None:
        """``notify`` makes ``offload.cancelled()`` True inside the worker process."""
        delivered = Delivered()
        workers = new_process_workers(delivered)
        started = tmp_path / "started"
        job = new_job(announce_then_wait_for_cancel, str(started))
        workers.submit(job, None)
        try:
            await until(started.exists, "the call to start in its process")
            job.caller_gone = True
            workers.notify(job)
            assert (await delivered.next()).value == "stopped"
        finally:
            workers.shutdown()

    @pytest.mark.parametrize("retries", [0, 2])
    async def test_terminate_and_kill_stop_the_call_and_never_retry_it(
        self, retries: int, tmp_path: Path
    ) -> None:
        """``terminate`` ends the call's process; the call fails with ``WorkerCrashed``,
        is not run again, and ``kill`` after it finds nothing left to stop."""
        delivered = Delivered()
        workers = new_process_workers(delivered)
        started = tmp_path / "started"
        options = Options(None, None, "kill", retries)
        job = new_job(announce_then_sleep, str(started), options=options)
        workers.submit(job, None)
        try:
            await until(started.exists, "the call to start in its process")
            started.unlink()
            job.caller_gone = True
            workers.terminate(job)
            assert await delivered.next() is job
            assert isinstance(job.error, WorkerCrashed)
            assert not started.exists()  # not run again
            workers.kill(job)  # nothing left to kill: a no-op
            assert workers.running == {}
            again = new_job(pid)
            workers.submit(again, None)
            assert (await delivered.next()).ok  # on a fresh process
        finally:
            workers.shutdown()

    @pytest.mark.parametrize("retries", [0, 1])
    async def test_a_crash_fails_the_call_or_runs_it_again(
        self, retries: int, tmp_path: Path
    ) -> None:
        """A worker process that dies fails its call with ``WorkerCrashed``, unless the
        call has a retry left: then it runs again on a fresh process."""
        delivered = Delivered()
        workers = new_process_workers(delivered)
        job = new_job(
            crash_once, str(tmp_path / "crashed"), options=Options(None, None, "kill", retries)
        )
        workers.submit(job, None)
        try:
            assert await delivered.next() is job
            if retries:
                assert job.value == "ran again"
            else:
                assert isinstance(job.error, WorkerCrashed)
                assert job.error.exitcode == 3
        finally:
            workers.shutdown()
