"""The FastAPI example (examples/fastapi_legacy_db) on a real PostgreSQL, under a real uvicorn.

PostgreSQL is started by pytest-postgresql's executor (``pg_ctl`` in a temporary directory).
PostgreSQL refuses to run as root, so as root ``pg_ctl`` runs as ``nobody`` through
``runuser``. The app runs in a uvicorn subprocess; the test talks to it with httpx from
threads and watches the database's ``pg_stat_activity`` to know what runs, so every assertion
is about order and counts, never durations.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the example's dependencies are in the test group")
pytest.importorskip("uvicorn", reason="the example's dependencies are in the test group")
httpx = pytest.importorskip("httpx", reason="the example's dependencies are in the test group")
psycopg = pytest.importorskip("psycopg", reason="the example's dependencies are in the test group")
pytest.importorskip("psycopg_pool", reason="the example's dependencies are in the test group")
pytest.importorskip("prometheus_client", reason="the example's dependencies are in the test group")
executors = pytest.importorskip(
    "pytest_postgresql.executors", reason="the example's dependencies are in the test group"
)
janitor = pytest.importorskip(
    "pytest_postgresql.janitor", reason="the example's dependencies are in the test group"
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_legacy_db"
APPLICATION_NAME = "offload-example"
POOL_SIZE = 4
MAX_PENDING = 2
# Long enough never to end by itself: the test cancels these sleeps when it is done.
FOREVER = 600
SERVER_WAIT = 60.0  # bounds a broken start or stop; not a timing claim


def _pg_ctl() -> str | None:
    found = shutil.which("pg_ctl")
    if found:
        return found

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 with an empty ``example`` database: its conninfo."""
    pg_ctl = _pg_ctl()
    if pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it with apt-get)")

    base = Path(tempfile.mkdtemp(prefix="offload-pg-"))
    try:
        if sys.platform != "win32" and os.geteuid() == 0:  # PostgreSQL refuses to run as root
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(base, nobody.pw_uid, nobody.pw_gid)
            base.chmod(0o755)
            wrapper = base / "pg_ctl"
            wrapper.write_text(f'#!/bin/sh\nexec runuser -u nobody -- "{pg_ctl}" "$@"\n')
            wrapper.chmod(0o755)
            pg_ctl = str(wrapper)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]

        server = executors.PostgreSQLExecutor(
            executable=pg_ctl,
            host="127.0.0.1",
            port=port,
            datadir=str(base / "data"),
            unixsocketdir=str(base),
            logfile=str(base / "postgresql.log"),
            startparams="-w",
            dbname="example",
        )
        server.start()
        try:
            with janitor.DatabaseJanitor(
                user=server.user, host=server.host, port=server.port, dbname=server.dbname
            ):
                yield f"host=127.0.0.1 port={port} user={server.user} dbname={server.dbname}"
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Database:
    """The test's own view of the server: what the app's connections are doing."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            return conn.execute(sql, prepare=False).fetchall()  # type: ignore[no-any-return]

    def sleeping(self) -> int:
        """How many of the app's queries are inside ``pg_sleep`` now."""
        rows = self.query(
            "select count(*) from pg_stat_activity where application_name = "
            f"'{APPLICATION_NAME}' and state = 'active' and query like 'select pg_sleep%'"
        )
        return int(rows[0][0])

    def connections(self) -> int:
        """How many connections the app holds."""
        rows = self.query(
            f"select count(*) from pg_stat_activity where application_name = '{APPLICATION_NAME}'"
        )
        return int(rows[0][0])

    def cancel_sleeps(self) -> None:
        self.query(
            "select pg_cancel_backend(pid) from pg_stat_activity where application_name = "
            f"'{APPLICATION_NAME}' and state = 'active' and query like 'select pg_sleep%'"
        )


@dataclass
class Server:
    """The example app under uvicorn in a subprocess."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, **params: object) -> Any:
        return httpx.get(self.url + path, params=params, timeout=SERVER_WAIT)

    def metric(self, name: str, **labels: str) -> float:
        """Return one sample of ``/metrics``."""
        text = self.get("/metrics").text
        wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
        match = re.search(rf"^{name}\{{{wanted}\}} (\S+)$", text, re.MULTILINE)
        assert match, f"{name}{{{wanted}}} is not in /metrics:\n{text}"
        return float(match.group(1))

    def descendants(self) -> set[int]:
        """The pids of every process below the server (workers, multiprocessing helpers)."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rpartition(")")[2].split()
                parents[int(stat.parent.name)] = int(fields[1])

        found: set[int] = set()
        frontier = {self.process.pid}
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
            found |= frontier

        return found

    def stop(self) -> None:
        """Stop the server as a process manager would (SIGTERM), and check it shut down well.

        After a graceful shutdown uvicorn ends with the signal's status, as a program that
        does not handle it would.
        """
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(SERVER_WAIT) == -signal.SIGTERM
        assert "Application shutdown complete" in self.text()


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Wait in this thread until ``predicate()`` holds; fail after ``SERVER_WAIT`` seconds.

    A server starts in a second or two, but the bound is generous: a loaded CI machine can
    take much longer to import FastAPI, and this bounds a broken test, it claims no timing.
    """
    pause = threading.Event()
    for _ in range(int(SERVER_WAIT / 0.01)):
        if predicate():
            return

        pause.wait(0.01)

    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def serve(conninfo: str, tmp_path: Path, data_layer: str) -> Generator[Server]:
    """Start the example app with uvicorn on a free port of 127.0.0.1; stop it at the end."""
    log = tmp_path / f"server-{data_layer}.log"
    env = {
        **os.environ,
        "DATABASE_URL": conninfo,
        "DB_POOL_SIZE": str(POOL_SIZE),
        "DB_MAX_PENDING": str(MAX_PENDING),
        "DATA_LAYER": data_layer,
        "MONITOR_THRESHOLD": "0.1",
    }
    command = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "0"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=EXAMPLE, env=env, stdout=out, stderr=subprocess.STDOUT
        )

    try:
        running = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")

        def started() -> bool:
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            return running.search(log.read_text()) is not None

        wait_until(started, "uvicorn to start")
        match = running.search(log.read_text())
        assert match is not None
        yield Server(process, log, match.group(1))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def drain(db: Database, calls: list[Future[Any]]) -> None:
    """Cancel the app's sleeping queries until every call in ``calls`` has its answer."""
    for _ in range(1000):
        db.cancel_sleeps()
        _, running = wait(calls, timeout=0.1)  # the queued ones start sleeping meanwhile
        if not running:
            return

    raise AssertionError("the slow calls never ended")


class TestOffloaded:
    """With the data layer offloaded, the loop stays free and the database is never oversold."""

    def test_health_answers_while_every_connection_runs_a_slow_query(
        self, database: str, tmp_path: Path
    ) -> None:
        """``/health`` and reports answer while all connections run slow queries, in limits."""
        db = Database(database)
        with serve(database, tmp_path, "offload") as server, ThreadPoolExecutor(16) as clients:
            slow = [clients.submit(server.get, "/slow", seconds=FOREVER) for _ in range(4)]
            wait_until(lambda: db.sleeping() == POOL_SIZE, "a slow query on every connection")

            # The loop is free: health and CPU-heavy reports answer while every query runs.
            assert server.get("/health").status_code == 200
            reports = [clients.submit(server.get, "/report", below=20_000) for _ in range(2)]
            assert [r.result().json() for r in reports] == [{"primes": 2262}] * 2
            assert server.get("/health").status_code == 200
            assert db.sleeping() == POOL_SIZE  # the slow queries still ran all along

            # Beyond the connections, calls wait in offload's queue, up to max_pending ...
            slow += [clients.submit(server.get, "/slow", seconds=FOREVER) for _ in range(2)]
            wait_until(
                lambda: server.metric("offload_pending", pool="db") == MAX_PENDING,
                "two queries to wait for a connection",
            )
            # ... and the rest are shed at once with 503, never queued.
            shed = [server.get("/slow", seconds=FOREVER) for _ in range(3)]
            assert [r.status_code for r in shed] == [503] * 3
            assert server.metric("offload_calls_rejected_total", pool="db") == 3
            assert db.sleeping() == POOL_SIZE
            assert db.connections() <= POOL_SIZE
            assert server.get("/health").status_code == 200

            drain(db, slow)
            assert [call.result().status_code for call in slow] == [504] * 6
            assert server.metric("offload_busy", pool="db") == 0
            assert server.metric("offload_blocking_events_total", kind="blocking") == 0
            server.stop()

    @pytest.mark.skipif(
        not Path("/proc/self/stat").exists(), reason="finds the server's processes in /proc"
    )
    def test_shutdown_leaves_nothing_behind(self, database: str, tmp_path: Path) -> None:
        """Stopping the server closes every thread, worker process and connection."""
        db = Database(database)
        with serve(database, tmp_path, "offload") as server:
            assert server.get("/slow", seconds=0).status_code == 200
            assert server.get("/report", below=1000).json() == {"primes": 168}
            assert db.connections() == POOL_SIZE
            children = server.descendants()
            assert children  # the report's worker process (and multiprocessing's helpers)

            server.stop()

        assert "stopped: threads left []" in server.text()
        wait_until(lambda: not children & _alive(), "the server's processes to be gone")
        assert db.connections() == 0


def _alive() -> set[int]:
    alive: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if stat.read_text().rpartition(")")[2].split()[0] != "Z":
                alive.add(int(stat.parent.name))

    return alive


class TestThreadpool:
    """FastAPI's own ``def`` endpoints keep the loop free too (the benchmark's middle variant)."""

    def test_health_answers_while_a_def_endpoint_queries(
        self, database: str, tmp_path: Path
    ) -> None:
        """``/health`` answers while a ``def`` endpoint's query runs in anyio's threads."""
        db = Database(database)
        with serve(database, tmp_path, "threadpool") as server, ThreadPoolExecutor(2) as clients:
            slow = [clients.submit(server.get, "/slow", seconds=FOREVER)]
            wait_until(lambda: db.sleeping() == 1, "the slow query to run")
            assert server.get("/health").status_code == 200
            assert db.sleeping() == 1
            drain(db, slow)
            assert slow[0].result().status_code == 504
            server.stop()


class TestDirect:
    """With the data layer called directly in ``async def``, one query stalls the whole app."""

    def test_health_waits_for_the_query(self, database: str, tmp_path: Path) -> None:
        """``/health``, sent while a query runs, is answered only after that query ended."""
        db = Database(database)
        with serve(database, tmp_path, "direct") as server, ThreadPoolExecutor(2) as clients:
            slow = clients.submit(server.get, "/slow", seconds=1)
            wait_until(lambda: db.sleeping() == 1, "the slow query to run")
            health = server.get("/health")
            assert db.sleeping() == 0  # the query had ended when /health got its answer
            assert health.json()["answered"] >= slow.result().json()["ended"]
            server.stop()

    def test_the_monitor_names_the_blocking_line(self, database: str, tmp_path: Path) -> None:
        """The server's log names the line of the data layer that blocked the loop."""
        source = (EXAMPLE / "data.py").read_text().splitlines()
        line = next(i for i, text in enumerate(source, 1) if "select pg_sleep" in text)
        with serve(database, tmp_path, "direct") as server:
            assert server.get("/slow", seconds=0.5).status_code == 200
            assert server.metric("offload_blocking_events_total", kind="blocking") >= 1
            server.stop()

        log = server.text()
        blocked = rf"WARNING offload: event loop blocked .*\n\s+at data\.py:{line} in slow_query\n"
        assert re.search(blocked, log), log
