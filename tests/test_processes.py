"""Process pools: picklable calls, crash isolation, kill on cancel, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import offload
from _support import BACKENDS, WAIT, StatsWatch, cancel_when, new_pool, spin_until, until

# A process pool per test module and backend would be faster, but every test must prove it
# leaves no process behind, so each test uses its own pool: start-up is forkserver-cheap.


def announce(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a reader sees no file or all of it, never ''."""
    partial = f"{path}.{os.getpid()}.partial"
    Path(partial).write_text(text)
    os.replace(partial, path)


# -- functions the workers run (module level: workers import them by name) ----------------------


def square(x: int) -> int:
    return x * x


def getpid() -> int:
    return os.getpid()


def reverse(data: bytes) -> bytes:
    return data[::-1]


def describe(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    return args, kwargs


def fail(message: str) -> None:
    raise LookupError(message, 7)


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV


def return_lock() -> object:
    return threading.Lock()


def spin_after_touching(path: str) -> None:
    """Say that the call started (by creating ``path``), then burn CPU forever."""
    announce(path, str(os.getpid()))
    while True:
        pass


def wait_for_cancel(path: str) -> str:
    """Run until the caller is gone, then say so in ``path``."""
    announce(path, str(os.getpid()))
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if offload.cancelled():
            announce(path, "saw cancel")
            return "stopped"

        time.sleep(0.001)

    return "never told"


def crash_once(marker: str) -> str:
    """Crash the first time (when ``marker`` does not exist yet), succeed after."""
    if not Path(marker).exists():
        announce(marker, "crashed")
        os._exit(9)

    return "second try"


_initialized: list[str] = []


def remember(value: str) -> None:
    _initialized.append(value)


def initialized() -> list[str]:
    return list(_initialized)


def broken_initializer() -> None:
    raise RuntimeError("cannot start")


def record_start(directory: str) -> None:
    """An initializer: leave a file named after this worker's pid (a process start event)."""
    Path(directory, str(os.getpid())).touch()


def starts(directory: Path) -> list[int]:
    """Return the pids of the worker processes started so far (their start events)."""
    return sorted(int(path.name) for path in directory.iterdir())


def wait_for_file(path: str) -> int:
    """Say that the call started (by creating ``path``), then wait until it is gone."""
    announce(path, str(os.getpid()))
    deadline = time.monotonic() + WAIT
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.001)

    return os.getpid()


@offload.process
def cube(x: int) -> int:
    """Cube a number in a worker process."""
    return x**3


@offload.process(retries=1)
def flaky(marker: str) -> str:
    return crash_once(marker)


class Shape:
    def __init__(self, side: int) -> None:
        self.side = side

    @offload.process
    def area(self) -> int:
        return self.side * self.side

    @staticmethod
    @offload.process
    def unit() -> int:
        return 1

    @offload.process
    @classmethod
    def kind(cls) -> str:
        return cls.__name__


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False

    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except OSError:
        return not status.parent.parent.exists()  # no /proc here: trust os.kill


async def file_appears(path: Path) -> str:
    await until(lambda: path.exists() and bool(path.read_text()))

    return path.read_text()


async def cancel_when_started(path: Path, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once the worker wrote ``path`` (its call has started)."""
    await file_appears(path)
    scope.cancel()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


# -- tests -------------------------------------------------------------------------------------


class TestCalls:
    async def test_decorated_function_runs_in_another_process(self) -> None:
        """A module-level ``@offload.process`` function runs in a worker process."""
        assert await cube(3) == 27
        assert await offload.process.call(getpid) != os.getpid()

    async def test_arguments_and_results_cross(self) -> None:
        """Positional and keyword arguments reach ``fn``; the result comes back."""
        pool = new_pool("process", max_workers=1)
        assert await pool.call(describe, 1, [2], key={"v": 3}) == ((1, [2]), {"key": {"v": 3}})

    async def test_methods_of_picklable_objects(self) -> None:
        """Methods, staticmethods and classmethods of module-level classes work."""
        assert await Shape(4).area() == 16
        assert await Shape.unit() == 1
        assert await Shape.kind() == "Shape"

    async def test_exception_arrives_with_worker_traceback(self) -> None:
        """An exception keeps its type and args; the worker's traceback is its ``__cause__``."""
        pool = new_pool("process", max_workers=1)
        with pytest.raises(LookupError) as info:
            await pool.call(fail, "not here")

        assert info.value.args == ("not here", 7)
        cause = info.value.__cause__
        assert cause is not None
        assert "in fail" in str(cause)
        assert "raise LookupError(message, 7)" in str(cause)

    @pytest.mark.parametrize("size", [600_000, 5_000_000])
    async def test_arguments_and_results_bigger_than_the_pipe_buffer(self, size: int) -> None:
        """An argument and a result far bigger than a pipe's buffer cross whole, and the
        pool goes on serving calls after them."""
        pool = new_pool("process", max_workers=1)
        data = bytes(range(256)) * (size // 256)
        assert await pool.call(reverse, data) == data[::-1]
        assert await pool.call(square, 3) == 9
        await pool.aclose()

    async def test_workers_are_reused(self) -> None:
        """Sequential calls reuse one worker process."""
        pool = new_pool("process", max_workers=2)
        pids = {await pool.call(getpid) for _ in range(10)}
        assert len(pids) == 1

    async def test_generator_is_refused(self) -> None:
        """A generator function cannot be offloaded to a process: ``TypeError`` says why."""

        def numbers() -> Generator[int, None, None]:
            yield 1

        numbers.__qualname__ = "numbers"  # as if at module level
        with pytest.raises(TypeError, match="generators run in thread pools"):
            offload.process(numbers)


class TestPickling:
    def test_lambda_is_refused_at_decoration(self) -> None:
        """Decorating a lambda raises ``SerializationError`` with the fix."""
        with pytest.raises(offload.SerializationError, match="lambda") as info:
            offload.process(lambda: 1)

        assert info.value.what == "function"
        assert "module" in info.value.fix

    def test_local_function_is_refused_at_decoration(self) -> None:
        """Decorating a function defined inside a function raises ``SerializationError``."""

        def local() -> int:
            return 1

        with pytest.raises(offload.SerializationError, match="inside a function"):
            offload.process(local)

    async def test_unpicklable_function_in_call(self) -> None:
        """``call`` with a lambda fails with ``SerializationError``; the pool stays usable."""
        pool = new_pool("process", max_workers=1)
        with pytest.raises(offload.SerializationError, match="function of"):
            await pool.call(lambda: 1)

        assert await pool.call(square, 5) == 25

    async def test_unpicklable_argument_is_named(self) -> None:
        """An argument that cannot be pickled is named in the error, before it is sent."""
        pool = new_pool("process", max_workers=1)
        with pytest.raises(offload.SerializationError, match="argument 1") as info:
            await pool.call(describe, "fine", threading.Lock())

        assert info.value.what == "argument"
        assert pool.stats().workers == 0 or await pool.call(square, 2) == 4

    async def test_unpicklable_result(self) -> None:
        """A result that cannot be pickled back raises ``SerializationError`` ("result")."""
        pool = new_pool("process", max_workers=1)
        with pytest.raises(offload.SerializationError, match="result") as info:
            await pool.call(return_lock)

        assert info.value.what == "result"
        assert await pool.call(square, 3) == 9

    @pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
    def test_main_script_function(self, tmp: Path, start_method: str) -> None:
        """A decorated function in a ``__main__`` script runs in a worker."""
        script = tmp / "app.py"
        script.write_text(
            textwrap.dedent(
                """
                import asyncio, os
                import offload

                @offload.process
                def where(x):
                    return os.getpid(), x * 2

                async def main():
                    pid, value = await where(21)
                    print(value, pid != os.getpid())

                if __name__ == "__main__":
                    asyncio.run(main())
                """
            )
        )
        env = {**os.environ, "OFFLOAD_PROCESS_START_METHOD": start_method}
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["42", "True"]


class TestCrashes:
    async def test_worker_exit_fails_only_that_call(self) -> None:
        """A worker that exits fails its call with ``WorkerCrashed``; the pool heals."""
        pool = new_pool("process", max_workers=2)
        with pytest.raises(offload.WorkerCrashed) as info:
            await pool.call(exit_with, 3)

        assert info.value.exitcode == 3
        assert info.value.signal is None
        assert info.value.function == "exit_with"
        assert isinstance(info.value.pid, int)
        assert not pid_alive(info.value.pid)
        assert await pool.call(square, 6) == 36
        assert pool.stats().crashed == 1

    async def test_killed_worker_names_the_signal(self) -> None:
        """A worker killed by a signal reports the signal."""
        pool = new_pool("process", max_workers=1)
        with pytest.raises(offload.WorkerCrashed, match="SIGKILL") as info:
            await pool.call(kill_self)

        assert info.value.signal == signal.SIGKILL

    async def test_segfault_is_a_crash(self) -> None:
        """A worker that segfaults fails its call with ``WorkerCrashed`` naming SIGSEGV."""
        pool = new_pool("process", max_workers=1)
        with pytest.raises(offload.WorkerCrashed, match="SIGSEGV"):
            await pool.call(segfault)

        assert await pool.call(square, 7) == 49

    async def test_crash_leaves_a_concurrent_call_alone(self, tmp: Path) -> None:
        """While one worker crashes, a call running on another worker finishes normally."""
        pool = new_pool("process", max_workers=2)
        started = tmp / "started"
        results: dict[str, object] = {}

        async def waits() -> None:
            results["waits"] = await pool.call(wait_for_cancel_or_file, str(started))

        async def crashes() -> None:
            await file_appears(started)
            try:
                await pool.call(exit_with, 5)
            except offload.WorkerCrashed as exc:
                results["crash"] = exc.exitcode
            finally:
                (tmp / "started.go").write_text("go")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waits)
            tg.start_soon(crashes)

        assert results == {"waits": "released", "crash": 5}

    async def test_retries_rerun_on_a_fresh_worker(self, tmp: Path) -> None:
        """``retries=1`` re-runs a call whose worker crashed, and it completes."""
        assert await flaky(str(tmp / "marker")) == "second try"


def wait_for_cancel_or_file(path: str) -> str:
    announce(path, "started")
    go = Path(path + ".go")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not go.exists():
        time.sleep(0.005)

    return "released"


class TestCancellation:
    async def test_kill_returns_at_once_and_frees_the_cpu(self, tmp: Path) -> None:
        """Cancelling a running call kills its worker; a fresh one serves the next call."""
        pool = new_pool("process", max_workers=1)
        started = tmp / "started"
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_started, started, scope)
                await pool.call(spin_after_touching, str(started))

        pid = int(started.read_text())
        assert scope.cancelled_caught
        await until(lambda: not pid_alive(pid) and not pool.stats().busy)

        assert pool.stats().cancelled == 1
        assert await pool.call(getpid) != pid

    async def test_timeout_kills_the_worker(self, tmp: Path) -> None:
        """A call past its ``timeout`` raises ``TimeoutError`` and its worker is killed."""
        pool = new_pool("process", max_workers=1)
        await pool.call(getpid)  # start the worker first: the timeout is for the call alone
        started = tmp / "started"
        spin = pool(timeout=0.5)(spin_after_touching)
        with pytest.raises(TimeoutError):
            await spin(str(started))

        pid = int(started.read_text())
        await until(lambda: not pid_alive(pid))

        assert pool.stats().timed_out == 1

    async def test_wait_policy_tells_the_worker(self, tmp: Path) -> None:
        """With ``cancel="wait"``, ``offload.cancelled()`` turns True in the worker, which
        ends the call; the cancellation arrives after it."""
        pool = new_pool("process", max_workers=1)
        started = tmp / "started"
        patient = pool(cancel="wait")(wait_for_cancel)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_started, started, scope)
                await patient(str(started))

        assert scope.cancelled_caught
        assert started.read_text() == "saw cancel"
        assert pool.stats().busy == 0

    async def test_pending_call_never_runs(self, tmp: Path) -> None:
        """A call waiting for a worker when cancelled never runs."""
        pool = new_pool("process", max_workers=1)
        started, never = tmp / "started", tmp / "never"
        async with anyio.create_task_group() as tg:
            tg.start_soon(_release_later, pool, str(started))
            await file_appears(started)
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_when, lambda: pool.stats().pending == 1, scope)
                await pool.call(spin_after_touching, str(never))

            (tmp / "started.go").write_text("go")

        assert not never.exists()


class TestCapacity:
    async def test_never_more_than_max_workers_processes(self, tmp: Path) -> None:
        """Four calls on two worker processes: two run, two wait, then they run."""
        pool = new_pool("process", max_workers=2)
        paths = [tmp / f"call{i}" for i in range(4)]
        async with anyio.create_task_group() as tg:
            for path in paths:
                tg.start_soon(_release_later, pool, str(path))

            await until(
                lambda: sum(path.exists() for path in paths) >= 2 and pool.stats().pending == 2
            )

            stats = pool.stats()
            assert (stats.busy, stats.pending, stats.workers) == (2, 2, 2)
            assert sum(path.exists() for path in paths) == 2
            for path in paths:
                Path(f"{path}.go").write_text("go")

        assert all(path.exists() for path in paths)
        assert pool.stats().completed == 4

    async def test_overloaded(self, tmp: Path) -> None:
        """Past ``max_pending`` waiting calls, a process call fails at once."""
        pool = new_pool("process", max_workers=1, max_pending=0)
        started = tmp / "started"
        async with anyio.create_task_group() as tg:
            tg.start_soon(_release_later, pool, str(started))
            await file_appears(started)
            with pytest.raises(offload.Overloaded):
                await pool.call(square, 1)

            Path(f"{started}.go").write_text("go")

    async def test_aclose(self) -> None:
        """``aclose()`` stops the worker processes; later calls raise ``PoolClosed``."""
        pool = new_pool("process", max_workers=1)
        pid = await pool.call(getpid)
        await pool.aclose()
        assert not pid_alive(pid)
        with pytest.raises(offload.PoolClosed):
            await pool.call(getpid)


class TestWarmSpares:
    """A lost worker is replaced at once in the background, and ``min_workers`` stay started."""

    @pytest.mark.parametrize("how", ["kill", "crash"])
    async def test_the_next_call_runs_on_a_replacement_started_before_it(
        self, how: str, tmp_path: Path
    ) -> None:
        """After a worker is killed (its call cancelled) or crashes, a replacement starts
        with no call waiting for it, and the next call runs on that process."""
        started = tmp_path / "starts"
        started.mkdir()
        pool = new_pool(
            "process", max_workers=1, initializer=record_start, initargs=(str(started),)
        )
        first = await pool.call(getpid)
        assert starts(started) == [first]
        if how == "kill":
            marker = tmp_path / "running"
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_when, marker.exists, scope)
                    await pool.call(spin_after_touching, str(marker))
        else:
            with pytest.raises(offload.WorkerCrashed):
                await pool.call(exit_with, 3)

        await until(lambda: len(starts(started)) == 2, "a replacement to start by itself")
        (replacement,) = set(starts(started)) - {first}
        assert await pool.call(getpid) == replacement
        assert len(starts(started)) == 2  # the call started no process of its own
        await pool.aclose()

    async def test_min_workers_are_started_with_the_pool(self, tmp_path: Path) -> None:
        """A pool with ``min_workers=2`` starts two processes at its first call, and the
        calls that follow run on them."""
        started = tmp_path / "starts"
        started.mkdir()
        pool = new_pool(
            "process",
            max_workers=2,
            min_workers=2,
            initializer=record_start,
            initargs=(str(started),),
        )
        pid = await pool.call(getpid)
        await until(lambda: len(starts(started)) == 2, "both processes to start")
        assert pid in starts(started)
        assert pool.stats().workers == 2
        assert {await pool.call(getpid) for _ in range(5)} <= set(starts(started))
        assert len(starts(started)) == 2
        await pool.aclose()

    async def test_idle_workers_above_min_workers_exit(self, tmp_path: Path) -> None:
        """Idle processes above ``min_workers`` exit after ``idle_timeout``; the ones kept
        serve the next call without a new start."""
        started = tmp_path / "starts"
        started.mkdir()
        pool = new_pool(
            "process",
            max_workers=2,
            min_workers=1,
            idle_timeout=0.05,
            initializer=record_start,
            initargs=(str(started),),
        )
        markers = [tmp_path / "a", tmp_path / "b"]

        async def run(marker: Path) -> None:
            await pool.call(wait_for_file, str(marker))

        async with anyio.create_task_group() as tg:
            for marker in markers:
                tg.start_soon(run, marker)

            await until(lambda: all(m.exists() for m in markers), "both calls to run")
            for marker in markers:
                marker.unlink()

        assert len(starts(started)) == 2
        await until(lambda: pool.stats().workers == 1, "the idle process above 1 to exit")
        assert await pool.call(getpid) in starts(started)
        assert len(starts(started)) == 2
        await pool.aclose()

    async def test_configure_min_workers_on_a_running_pool(self, tmp_path: Path) -> None:
        """Raising ``min_workers`` on a running pool starts the processes it asks for."""
        pool = new_pool("process", max_workers=3)
        await pool.call(getpid)
        pool.configure(min_workers=3)
        await until(lambda: pool.stats().workers == 3, "three processes to be started")
        await pool.aclose()

    def test_min_workers_above_max_workers_is_refused(self) -> None:
        """``min_workers`` above ``max_workers`` is a ``ValueError`` that says what to do."""
        with pytest.raises(ValueError, match="min_workers=3 is more than max_workers=2"):
            new_pool("process", max_workers=2, min_workers=3)

        pool = new_pool("process", max_workers=2)
        with pytest.raises(ValueError, match="lower min_workers or raise max_workers"):
            pool.configure(min_workers=5)

    async def test_min_workers_above_max_workers_on_a_running_pool(self) -> None:
        """On a running pool, a ``min_workers`` above the size in force is refused and the
        pool runs on unchanged."""
        pool = new_pool("process", max_workers=1)
        assert await pool.call(square, 2) == 4
        with pytest.raises(ValueError, match="min_workers=2 is more than max_workers=1"):
            pool.configure(min_workers=2)

        assert pool.settings().min_workers == 0
        assert await pool.call(square, 3) == 9
        await pool.aclose()

    async def test_min_workers_above_the_default_size_on_a_running_pool(self) -> None:
        """A ``min_workers`` above a running pool's default ``max_workers`` is refused, and
        the pool keeps the settings it had."""
        pool = new_pool("process")
        assert await pool.call(square, 2) == 4
        too_many = pool.settings().max_workers + 1
        with pytest.raises(ValueError, match=f"min_workers={too_many} is more than"):
            pool.configure(min_workers=too_many)

        assert pool.settings().min_workers == 0
        # Nor is it kept for the next loop's run (what settings() says outside a loop).
        next_run: list[object] = []
        outside = threading.Thread(target=lambda: next_run.append(pool.settings().min_workers))
        outside.start()
        outside.join(WAIT)
        assert next_run == [0]
        assert await pool.call(square, 3) == 9
        await pool.aclose()

    async def test_min_workers_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``OFFLOAD_<POOL>_MIN_WORKERS`` sets how many processes are kept started."""
        pool = new_pool("process", max_workers=2)
        monkeypatch.setenv(f"OFFLOAD_{pool.name.upper().replace('-', '_')}_MIN_WORKERS", "2")
        assert pool.settings().min_workers == 2
        await pool.call(square, 2)
        await until(lambda: pool.stats().workers == 2, "two processes to be started")
        await pool.aclose()


class TestSettings:
    async def test_max_tasks_per_worker_recycles(self) -> None:
        """``max_tasks_per_worker=2`` replaces a worker after two calls."""
        pool = new_pool("process", max_workers=1, max_tasks_per_worker=2)
        pids = [await pool.call(getpid) for _ in range(6)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]

    async def test_initializer_runs_once_per_worker(self) -> None:
        """``initializer(*initargs)`` runs once in each worker as it starts."""
        pool = new_pool("process", max_workers=1, initializer=remember, initargs=("ready",))
        assert await pool.call(initialized) == ["ready"]
        assert await pool.call(initialized) == ["ready"]

    async def test_initializer_failure_reaches_the_caller(self) -> None:
        """An initializer that raises fails the call with its exception."""
        pool = new_pool("process", max_workers=1, initializer=broken_initializer)
        with pytest.raises(RuntimeError, match="cannot start"):
            await pool.call(square, 2)

    async def test_start_method_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``OFFLOAD_<POOL>_START_METHOD`` picks how workers start."""
        pool = new_pool("process", max_workers=1)
        monkeypatch.setenv(f"OFFLOAD_{pool.name.upper().replace('-', '_')}_START_METHOD", "spawn")
        assert pool.settings().start_method == "spawn"
        assert await pool.call(square, 4) == 16

    def test_defaults(self) -> None:
        """Process pools default to one worker per usable CPU and forkserver where it exists."""
        settings = new_pool("process").settings()
        assert settings.max_workers == offload._settings.usable_cpus()
        assert settings.start_method in ("forkserver", "spawn")
        assert settings.max_tasks_per_worker is None

    def test_bad_start_method(self) -> None:
        """An unknown start method is a ``ValueError`` that lists the valid ones."""
        with pytest.raises(ValueError, match="start_method='threads' is not valid"):
            new_pool("process", start_method="threads")

    def test_kill_is_the_default_policy(self) -> None:
        """Process pools cancel by killing; ``abandon`` is a thread policy."""
        with pytest.raises(ValueError, match="cancel='abandon'"):
            offload.process(cancel="abandon")  # type: ignore[call-overload]


class TestLifecycle:
    @pytest.mark.parametrize(
        ("backend", "options"),
        [
            pytest.param("asyncio", dict[str, Any](), id="asyncio"),
            pytest.param("asyncio", {"use_uvloop": True}, id="asyncio+uvloop"),
            pytest.param("trio", dict[str, Any](), id="trio"),
        ],
    )
    def test_no_process_left_after_run(
        self, backend: str, options: dict[str, Any], tmp: Path
    ) -> None:
        """When ``run`` returns, every worker process is gone, even one that was busy."""
        pool = new_pool("process", max_workers=2, shutdown_timeout=0.2)
        started = tmp / "started"

        async def main() -> None:
            assert await pool.call(square, 2) == 4
            with anyio.CancelScope() as scope:
                scope.cancel()
                await pool.call(getpid)

            async with anyio.create_task_group() as tg:
                tg.start_soon(_spin_abandoned, pool, str(started))
                await file_appears(started)
                tg.cancel_scope.cancel()

        anyio.run(main, backend=backend, backend_options=options)
        assert not pid_alive(int(started.read_text()))

    def test_busy_worker_is_killed_past_shutdown_timeout(
        self, tmp: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A call still running ``shutdown_timeout`` after the run ends is killed, and said."""
        import asyncio
        import logging

        pool = new_pool("process", max_workers=1, shutdown_timeout=0.2)
        started = tmp / "started"
        patient = pool(cancel="wait")(spin_after_touching)

        async def main() -> None:
            asyncio.create_task(patient(str(started)))  # left running on purpose
            await file_appears(started)

        with caplog.at_level(logging.WARNING, logger="offload"):
            asyncio.run(main())

        assert not pid_alive(int(started.read_text()))
        [record] = [r for r in caplog.records if r.name == "offload"]
        assert "spin_after_touching" in record.getMessage()
        assert "killed" in record.getMessage()

    def test_workers_exit_when_the_parent_is_killed(self, tmp: Path) -> None:
        """If the parent process is SIGKILLed, its workers exit by themselves."""
        script = tmp / "parent.py"
        pids = tmp / "pids"
        script.write_text(
            textwrap.dedent(
                f"""
                import asyncio, os, sys, time
                sys.path.insert(0, {str(Path(__file__).parent)!r})
                import offload
                from test_processes import spin_after_touching

                async def main():
                    pool = offload.ProcessPool("orphans", max_workers=2)
                    await asyncio.gather(
                        pool.call(spin_after_touching, {str(pids)!r} + "1"),
                        pool.call(spin_after_touching, {str(pids)!r} + "2"),
                    )

                if __name__ == "__main__":
                    asyncio.run(main())
                """
            )
        )
        parent = subprocess.Popen([sys.executable, str(script)])
        try:
            spin_until(
                lambda: all(Path(f"{pids}{i}").exists() for i in (1, 2)), "workers to start"
            )
            workers = [int(Path(f"{pids}{i}").read_text()) for i in (1, 2)]
            assert all(pid_alive(pid) for pid in workers)
        finally:
            parent.kill()
            parent.wait()

        spin_until(lambda: not any(pid_alive(pid) for pid in workers), "orphans to exit")


async def _release_later(pool: offload.ProcessPool, path: str) -> None:
    await pool.call(wait_for_cancel_or_file, path)


async def _spin_abandoned(pool: offload.ProcessPool, path: str) -> None:
    await pool.call(spin_after_touching, path)


# -- randomised: calls, cancellations, timeouts, crashes and exceptions -----------------------

PROCESS_KINDS = ("ok", "raise", "crash", "cancel", "timeout")
PROCESS_ENDINGS = {
    "ok": "result",
    "raise": "raised",
    "crash": "crashed",
    "cancel": "cancelled",
    "timeout": "timed_out",
}


def random_body(kind: str, i: int) -> int:
    """What one call of the randomised test does in its worker."""
    if kind == "raise":
        raise ValueError(i)

    if kind == "crash":
        os._exit(11)

    if kind in ("cancel", "timeout"):  # until killed, or told that the caller is gone
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not offload.cancelled():
            time.sleep(0.001)

    return i


def process_scenario(
    backend: tuple[str, dict[str, Any]],
    kinds: list[str],
    max_workers: int,
    max_pending: int | None,
    cancel: str,
    seed: int,
) -> None:
    import random

    rng = random.Random(seed)
    pool = new_pool("process", max_workers=max_workers, max_pending=max_pending)
    policy: Any = cancel
    plain = pool(cancel=policy)(random_body)
    timed = pool(cancel=policy, timeout=0.05)(random_body)
    outcomes: dict[int, str] = {}
    watch = StatsWatch(pool)

    def end(i: int, how: str) -> None:
        assert i not in outcomes, f"call {i} ended twice: {outcomes[i]} and {how}"
        outcomes[i] = how
        watch.end()

    async def one(i: int, scope: anyio.CancelScope) -> None:
        fn = timed if kinds[i] == "timeout" else plain
        watch.begin()
        with scope:
            try:
                result = await fn(kinds[i], i)
            except offload.Overloaded:
                end(i, "overloaded")
            except offload.WorkerCrashed:
                end(i, "crashed")
            except ValueError:
                end(i, "raised")
            except TimeoutError:
                end(i, "timed_out")
            else:
                end(i, "result" if result == i else f"wrong result {result}")

        if scope.cancelled_caught:
            end(i, "cancelled")

    async def main() -> None:
        scopes = [anyio.CancelScope() for _ in kinds]
        async with anyio.create_task_group() as tg:
            for i in range(len(kinds)):
                tg.start_soon(one, i, scopes[i])
                for _ in range(rng.randrange(3)):
                    await anyio.lowlevel.checkpoint()
                    watch.check()

            cancels = [i for i, kind in enumerate(kinds) if kind == "cancel"]
            rng.shuffle(cancels)
            for i in cancels:
                await anyio.sleep(rng.choice([0, 0.001, 0.02]))
                watch.check()
                scopes[i].cancel()

        await until(lambda: not pool.stats().busy)

    anyio.run(main, backend=backend[0], backend_options=backend[1])
    assert sorted(outcomes) == list(range(len(kinds))), "every call ends exactly once"
    for i, how in outcomes.items():
        allowed = {PROCESS_ENDINGS[kinds[i]]}
        if max_pending is not None:
            allowed.add("overloaded")

        assert how in allowed, (kinds[i], how)

    stats = pool.stats()
    counts = {how: list(outcomes.values()).count(how) for how in set(outcomes.values())}
    assert stats.completed == counts.get("result", 0)
    assert stats.failed == counts.get("raised", 0)
    assert stats.crashed == counts.get("crashed", 0)
    assert stats.cancelled == counts.get("cancelled", 0)
    assert stats.timed_out == counts.get("timed_out", 0)
    assert stats.rejected == counts.get("overloaded", 0)
    assert (stats.busy, stats.pending, stats.abandoned) == (0, 0, 0)
    watch.settled()
    assert watch.problems == []


@pytest.mark.parametrize("backend", BACKENDS)
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(PROCESS_KINDS), min_size=1, max_size=8),
    max_workers=st.integers(1, 2),
    max_pending=st.one_of(st.none(), st.integers(0, 3)),
    cancel=st.sampled_from(["kill", "wait"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_process_call_ends_exactly_once(
    backend: tuple[str, dict[str, Any]],
    kinds: list[str],
    max_workers: int,
    max_pending: int | None,
    cancel: str,
    seed: int,
) -> None:
    """Random calls, cancellations, timeouts, crashes and errors on worker processes: each
    call ends exactly once, as its kind allows, and the counters agree at every snapshot."""
    process_scenario(backend, kinds, max_workers, max_pending, cancel, seed)


class TestReconfigure:
    async def test_lowering_max_workers_stops_the_extra_busy_process(self, tmp_path: Path) -> None:
        """After ``max_workers`` is lowered under two running calls, the process that is
        one too many exits once its call returns (not after ``idle_timeout``), and calls run
        one at a time."""
        pool = new_pool("process", max_workers=2, idle_timeout=60.0)
        markers = [tmp_path / "a", tmp_path / "b"]

        async def run(marker: Path) -> None:
            await pool.call(wait_for_file, str(marker))

        async with anyio.create_task_group() as tg:
            for marker in markers:
                tg.start_soon(run, marker)

            await until(lambda: all(m.exists() for m in markers), "both calls to run")
            pool.configure(max_workers=1)
            for marker in markers:
                marker.unlink()

        await until(lambda: pool.stats().workers == 1, "the extra process to exit")
        assert len({await pool.call(getpid) for _ in range(3)}) == 1
        await pool.aclose()

    async def test_running_pool_applies_new_worker_settings(self) -> None:
        """``configure`` on a running process pool reaches the workers that start next."""
        pool = new_pool("process", max_workers=1, initializer=remember, initargs=("first",))
        assert await pool.call(initialized) == ["first"]
        pool.configure(initargs=("second",), max_tasks_per_worker=1)
        # the running worker ends after its next call; the one after starts anew
        assert await pool.call(initialized) == ["first"]
        assert await pool.call(initialized) == ["second"]
        assert await pool.call(initialized) == ["second"]
