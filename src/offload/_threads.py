"""Mechanism: the worker threads of one pool in one event loop.

The pool's capacity *is* its thread count: at most ``max_workers`` threads exist, each runs
one job at a time, and a thread whose awaiter gave up keeps running (and counting) until its
job returns. Jobs that find no free thread wait in a first-in, first-out queue on this side,
so a thread that finishes a job takes the next one at once, without a round trip through the
event loop: that is what lets a burst of small calls run at the speed of a bare queue.

Idle threads sleep on a lock of their own (the cheapest wake-up CPython has), newest first,
so the threads that stay busy stay warm and the others reach ``idle_timeout`` and exit.
A new thread starts asleep on that same lock and is woken by its starter once ``start()``
has returned there, so that no starter (the loop thread least of all) waits for the GIL
held by a thread that went straight into a CPU-bound call.

A thread pool's ``initializer`` runs on each new thread before its first job. If it raises,
that job fails with its exception and the thread exits (a thread half set up is no use to
the next job); the queue passes to another thread, and the next job starts a fresh one.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any

from ._job import Job
from ._queue import JobQueue
from ._settings import PoolSettings

__all__ = ("ThreadWorkers",)


Initializer = tuple[Callable[..., object], tuple[Any, ...]]


class _Worker(threading.Thread):
    def __init__(self, workers: ThreadWorkers, name: str, initializer: Initializer | None) -> None:
        super().__init__(name=name, daemon=True)
        self.workers = workers
        self.initializer = initializer  # to run before the first job; then None
        self.job: Job | None = None
        self.woken = False
        self.wakeup = threading.Lock()
        self.wakeup.acquire()

    def start(self) -> None:
        """Start the thread, and only then let it take a job.

        ``Thread.start()`` waits until the new thread has run its first lines. Were the new
        thread to go straight on into a CPU-bound job, it would hold the GIL when its
        starter (the loop thread, or a worker passing the word on) wakes, and the starter
        would wait a switch interval for it. Here the new thread first sleeps on its wake-up
        lock, releasing the GIL, and the starter wakes it once it is back.
        """
        super().start()
        self.wakeup.release()

    def run(self) -> None:
        self.wakeup.acquire()  # until start() has returned in the starting thread
        self.workers._work(self)

    def initialize(self, job: Job) -> bool:
        """Run the thread's initializer (once); on failure, fail ``job`` with its exception.

        Returns:
            Whether the thread is ready for ``job``.
        """
        initializer, self.initializer = self.initializer, None
        if initializer is None:
            return True

        fn, args = initializer
        try:
            fn(*args)
        except BaseException as exc:
            job.started = perf_counter()
            job.error = exc
            job.ended = perf_counter()
            return False

        return True


class ThreadWorkers:
    """The worker threads of one pool in one event loop, and the calls waiting for them.

    ``submit`` queues a job; a thread runs it and hands it to
    ``deliver``, as trio's ``start_thread_soon(fn, deliver)`` does.
    """

    def __init__(
        self,
        pool: str,
        deliver: Callable[[Job], None],
        max_workers: int,
        idle_timeout: float,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._pool = pool
        self._initializer: Initializer | None = None
        if initializer is not None:
            self._initializer = (initializer, initargs)

        self._deliver = deliver
        self.idle_timeout = idle_timeout
        self.queue = queue = JobQueue(max_workers)
        self._lock = queue.lock
        self._jobs = queue.jobs
        self.withdraw = queue.withdraw
        self.withdraw_all = queue.withdraw_all
        self._idle: list[_Worker] = []  # sleeping, newest last
        self._in_transit = 0  # woken for a job, not yet back under the lock
        # Extra threads (the pool shrank) still delivering their last job: they stay among
        # the threads, so that a shutdown meanwhile joins them, but no longer count.
        self._leaving = 0
        self._threads: set[_Worker] = set()
        self._closing = False
        self._numbers = itertools.count(1)

    @property
    def max_workers(self) -> int:
        """The most threads that may be alive."""
        return self.queue.capacity

    @property
    def workers(self) -> int:
        """How many worker threads are alive."""
        return len(self._threads)

    def gauges(self) -> tuple[int, int, int, int]:
        """Return, read together: threads alive, threads running a job (abandoned ones
        included), jobs waiting (as :attr:`JobQueue.pending`), threads running an abandoned
        job."""
        queue = self.queue
        with self._lock:
            abandoned = sum(1 for t in self._threads if t.job is not None and t.job.abandoned)
            return len(self._threads), queue.busy, queue.pending, abandoned

    @property
    def pending(self) -> int:
        """How many queued jobs wait for a worker (see :attr:`JobQueue.pending`)."""
        return self.queue.pending

    def submit(self, job: Job, max_pending: int | None, elsewhere: int = 0) -> bool:
        """Queue ``job`` and make sure a thread will run it.

        Returns:
            False if the pending bound refuses it (:meth:`JobQueue.refuses`, with
            ``elsewhere`` calls of the pool waiting for a function's limit): the job was not
            queued.
        """
        with self._lock:
            if max_pending is not None and self.queue.refuses(max_pending, elsewhere, True):
                return False

            self._jobs.append(job)
            new = None if self._in_transit else self._wake_one()

        if new is not None:
            new.start()

        return True

    def _wake_one(self) -> _Worker | None:
        """Wake an idle thread, or make a new one if there is room (under the lock).

        One thread at a time is on its way: it wakes the next when it takes a job and more
        are queued. So a burst of tiny calls is served by the few threads that keep up with
        it, not by every idle thread fighting for the GIL, while a burst of blocking calls
        still fans out to every thread, one wake-up after the other.

        Returns:
            A new thread, for the caller to start once it has released the lock.
        """
        if self._idle:
            worker = self._idle.pop()
            worker.woken = True
            self._in_transit += 1
            worker.wakeup.release()
            return None

        if len(self._threads) >= self.queue.capacity:
            return None

        name = f"offload-{self._pool}-{next(self._numbers)}"
        worker = _Worker(self, name, self._initializer)
        worker.woken = True
        self._in_transit += 1
        self._threads.add(worker)
        return worker

    def _work(self, me: _Worker) -> None:
        lock = self._lock
        queue = self.queue
        jobs = self._jobs
        deliver = self._deliver
        run = Job.run
        done: Job | None = None
        leaving = False  # extra (the pool shrank): leaves once ``done`` is delivered
        while True:
            new = None
            with lock:
                if me.woken:
                    me.woken = False
                    self._in_transit -= 1

                if me.job is not None:
                    me.job = None
                    queue.busy -= 1

                exiting = len(self._threads) - self._leaving > queue.capacity
                if jobs and not exiting:
                    job: Job | None = jobs.popleft()
                    me.job = job
                    queue.busy += 1
                    if jobs and not self._in_transit:
                        new = self._wake_one()  # more are queued: pass the word on
                elif self._closing or exiting:
                    job = None
                    exiting = True
                    if done is None or self._closing:
                        # (A closing pool's shutdown has its list of threads already.)
                        self._threads.discard(me)
                        if jobs and not self._in_transit:
                            new = self._wake_one()  # leaving: someone else takes the queue
                    else:
                        self._leaving += 1
                        leaving = True
                else:
                    # Idle *before* the finished job goes back to the loop, so the call that
                    # its completion sets off finds this thread free instead of a new one.
                    job = None
                    self._idle.append(me)

            if new is not None:
                new.start()

            if done is not None:
                deliver(done)
                done = None

            if job is not None:
                if me.initializer is not None and not me.initialize(job):
                    self._leave(me, job)
                    return

                run(job)
                done = job
                del job
                continue

            if exiting:
                if leaving:
                    with lock:
                        self._leaving -= 1
                        self._threads.discard(me)
                        new = self._wake_one() if jobs and not self._in_transit else None

                    if new is not None:
                        new.start()

                return

            if not me.wakeup.acquire(timeout=self.idle_timeout):
                with lock:
                    if me in self._idle:
                        self._idle.remove(me)
                        self._threads.discard(me)
                        return

                me.wakeup.acquire()  # a wake-up raced the timeout: take it

    def _leave(self, me: _Worker, job: Job) -> None:
        """Hand back the job of a thread whose initializer failed, and leave the pool.

        The thread stays among the pool's threads, idle but not waiting for work, until its
        job is delivered: a pool that closes meanwhile (its caller may end the loop's run at
        once) finds it there and joins it, so no thread outlives the run.
        """
        with self._lock:
            me.job = None
            self.queue.busy -= 1

        self._deliver(job)
        with self._lock:
            self._threads.discard(me)
            new = self._wake_one() if self._jobs and not self._in_transit else None

        if new is not None:
            new.start()

    def reconfigure(self, settings: PoolSettings) -> None:
        """Apply new settings: more threads start on demand; extra ones exit when idle; a
        new initializer runs on the threads that start afterwards."""
        max_workers = settings.max_workers
        with self._lock:
            self.queue.capacity = max_workers
            self.idle_timeout = settings.idle_timeout
            init = settings.initializer
            self._initializer = None if init is None else (init, settings.initargs)
            wake = self._idle[max_workers:] if len(self._threads) > max_workers else []

        # Idle threads over the new size wake up, find themselves extra, and exit.
        for worker in wake:
            self._wake(worker)

    def _wake(self, worker: _Worker) -> None:
        with self._lock:
            if worker not in self._idle:
                return

            self._idle.remove(worker)
            worker.woken = True
            self._in_transit += 1

        worker.wakeup.release()

    def shutdown(self) -> list[threading.Thread]:
        """Tell every thread to exit once it is done; join the idle ones.

        Returns:
            The threads still inside a job (they exit when it returns).
        """
        with self._lock:
            self._closing = True
            idle = list(self._idle)
            threads = list(self._threads)

        for worker in idle:
            self._wake(worker)

        busy: list[threading.Thread] = []
        for thread in threads:
            if thread.job is None:
                thread.join()
            else:
                busy.append(thread)

        return busy
