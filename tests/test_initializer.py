"""A thread pool's ``initializer``: each worker thread sets itself up once, before its first call.

The driver here is sqlite3, whose connections refuse to be used from any thread but the one
that opened them: the shape of a legacy driver whose connection is bound to its thread.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from pathlib import Path
from queue import SimpleQueue
from time import perf_counter

import anyio
import pytest

import offload
from _support import WAIT, Gate, new_pool, until
from offload._job import Job
from offload._threads import ThreadWorkers

_local = threading.local()


class Opened:
    """Records the threads on which the initializer opened a connection."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: list[int] = []
        self.connections: list[sqlite3.Connection] = []

    def open(self, path: str) -> None:
        """The initializer: open this thread's own connection (sqlite3 binds it to the thread)."""
        connection = sqlite3.connect(path)
        _local.connection = connection
        with self.lock:
            self.threads.append(threading.get_ident())
            self.connections.append(connection)

    async def close_all(self, pool: offload.ThreadPool) -> None:
        """Close every thread's connection on its own thread (sqlite3 allows no other)."""
        gate = Gate()

        async def close_one() -> None:
            await pool.call(close_here, gate)

        async with anyio.create_task_group() as tg:
            for _ in self.threads:
                tg.start_soon(close_one)

            await gate.entered(len(self.threads))  # one call on each thread
            gate.open()

        await pool.aclose()


def insert(gate: Gate, value: int) -> int:
    """Insert a row through this thread's connection, held at the gate; return the thread."""
    gate.pass_through(value)
    connection: sqlite3.Connection = _local.connection
    with connection:
        connection.execute("insert into seen (value, thread) values (?, ?)", (value, _ident()))

    return _ident()


def close_here(gate: Gate) -> None:
    """Hold this thread at the gate, then close its connection."""
    gate.pass_through()
    _local.connection.close()


def select_count() -> int:
    connection: sqlite3.Connection = _local.connection
    row = connection.execute("select count(*) from seen").fetchone()
    return int(row[0])


def _ident() -> int:
    return threading.get_ident()


@pytest.fixture
def database(tmp_path: Path) -> str:
    path = str(tmp_path / "test.db")
    with sqlite3.connect(path) as connection:
        connection.execute("create table seen (value integer, thread integer)")

    connection.close()
    return path


class Failing:
    """An initializer that raises the first ``failures`` times it runs, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.threads: list[str] = []

    def __call__(self) -> None:
        self.runs += 1
        self.threads.append(threading.current_thread().name)
        if self.runs <= self.failures:
            raise ConnectionRefusedError(f"the database is not up yet (try {self.runs})")


def submitted(pool: offload.ThreadPool, n: int) -> bool:
    return pool.stats().submitted == n


def thread_name() -> str:
    return threading.current_thread().name


class TestThreadInitializer:
    """``initializer(*initargs)`` runs once on each new worker thread before its first call."""

    async def test_each_thread_owns_a_connection(self, database: str) -> None:
        """Two threads each open their own sqlite3 connection and use it for every call."""
        opened = Opened()
        pool = new_pool("thread", max_workers=2, initializer=opened.open, initargs=(database,))
        gate = Gate()
        threads: list[int] = []

        async def one(value: int) -> None:
            threads.append(await pool.call(insert, gate, value))

        try:
            async with anyio.create_task_group() as tg:
                for value in range(6):
                    tg.start_soon(one, value)

                await gate.entered(2)  # both threads hold a call: both were set up
                gate.open()

            assert await pool.call(select_count) == 6
            assert sorted(set(threads)) == sorted(opened.threads)
            assert len(opened.threads) == 2  # once per thread, not once per call
        finally:
            await opened.close_all(pool)

    async def test_the_connection_is_bound_to_its_thread(self, database: str) -> None:
        """The initializer's connection works on its thread and nowhere else (sqlite3 checks)."""
        opened = Opened()
        pool = new_pool("thread", max_workers=1, initializer=opened.open, initargs=(database,))
        try:
            assert await pool.call(select_count) == 0
            with pytest.raises(sqlite3.ProgrammingError, match="same thread"):
                opened.connections[0].execute("select 1")
        finally:
            await opened.close_all(pool)

    async def test_no_initializer_in_the_event_loop_thread(self, database: str) -> None:
        """The initializer never runs on the caller's thread."""
        opened = Opened()
        pool = new_pool("thread", max_workers=1, initializer=opened.open, initargs=(database,))
        try:
            await pool.call(select_count)
            assert opened.threads
            assert threading.get_ident() not in opened.threads
        finally:
            await opened.close_all(pool)

    async def test_configure_applies_to_new_threads(self) -> None:
        """A new initializer set on a running pool runs on the threads that start afterwards."""
        first, second = Failing(0), Failing(0)
        pool = new_pool("thread", max_workers=1, initializer=first)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.call, pool)
            await gate.entered(1)
            pool.configure(initializer=second, max_workers=2)
            tg.start_soon(gate.call, pool)
            await gate.entered(2)
            gate.open()

        assert (first.runs, second.runs) == (1, 1)
        await pool.aclose()


class TestInitializerFailure:
    """An initializer that raises fails the call that started its thread, and the pool heals."""

    async def test_the_call_gets_the_exception(self) -> None:
        """The call that started the thread raises the initializer's exception, unchanged."""
        pool = new_pool("thread", max_workers=1, initializer=Failing(1))
        with pytest.raises(ConnectionRefusedError, match="not up yet"):
            await pool.call(thread_name)

        stats = pool.stats()
        assert (stats.failed, stats.completed) == (1, 0)

    async def test_the_thread_exits_and_the_next_call_gets_a_fresh_one(self) -> None:
        """The failed thread exits; the next call starts a new thread that runs the initializer."""
        initializer = Failing(1)
        pool = new_pool("thread", max_workers=1, initializer=initializer)
        with pytest.raises(ConnectionRefusedError):
            await pool.call(thread_name)

        first = initializer.threads[0]
        await until(
            lambda: all(t.name != first for t in threading.enumerate()), "the thread to exit"
        )
        assert await pool.call(thread_name) != first
        assert initializer.runs == 2
        stats = pool.stats()
        assert (stats.failed, stats.completed, stats.workers) == (1, 1, 1)

    async def test_queued_calls_still_run(self) -> None:
        """Calls queued behind the failed one run on a thread whose initializer succeeded."""
        initializer = Failing(1)
        pool = new_pool("thread", max_workers=1, initializer=initializer)
        gate = Gate()
        outcomes: list[object] = []

        async def one(tag: int) -> None:
            try:
                outcomes.append(await pool.call(gate.pass_through, tag))
            except ConnectionRefusedError as exc:
                outcomes.append(type(exc))

        async with anyio.create_task_group() as tg:
            for tag in range(3):
                tg.start_soon(one, tag)
                await until(functools.partial(submitted, pool, tag + 1))

            await gate.entered(1)
            gate.open()

        assert outcomes == [ConnectionRefusedError, 1, 2]
        assert initializer.runs == 2


class TestWorkerLayer:
    """The worker threads alone, without an event loop: a failed thread leaves cleanly."""

    def test_a_shutdown_right_after_the_failure_joins_the_thread(self) -> None:
        """Closing the pool as soon as the failed call is delivered still joins its thread."""
        delivered: SimpleQueue[Job] = SimpleQueue()
        workers = ThreadWorkers("w", delivered.put, 1, 60.0, initializer=Failing(1))
        job = Job(thread_name, (), {}, None, None, None, perf_counter())  # type: ignore[arg-type]
        assert workers.submit(job, None)
        assert delivered.get(timeout=WAIT) is job
        assert isinstance(job.error, ConnectionRefusedError)
        assert workers.shutdown() == []  # nothing busy, and the failed thread was joined
        assert not [t for t in threading.enumerate() if t.name.startswith("offload-w-")]


def _remember_pid(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


def _pid() -> int:
    return os.getpid()


class TestProcessInitializerStaysInTheProcess:
    """A process pool's initializer runs in its worker processes, not in their threads here."""

    async def test_not_run_in_the_parent(self, tmp_path: Path) -> None:
        """The initializer records the worker's pid, never the parent's."""
        marker = tmp_path / "pid"
        pool = new_pool(
            "process", max_workers=1, initializer=_remember_pid, initargs=(str(marker),)
        )
        try:
            worker = await pool.call(_pid)
        finally:
            await pool.aclose()

        assert int(marker.read_text()) == worker != os.getpid()


def test_thread_options_name_the_initializer() -> None:
    """``ThreadPool(initializer=..., initargs=...)`` is accepted and shows in its settings."""
    pool = offload.ThreadPool("test-initializer-options", initializer=str, initargs=("x",))
    assert (pool.settings().initializer, pool.settings().initargs) == (str, ("x",))
