"""How worker threads start: the loop thread is never left waiting for a CPU-bound worker.

CPU-bound workers hold the GIL; the loop thread gets it back only when a worker is made to
drop it, once per switch interval. So whatever makes the loop thread wait (a lock, a file it
reads for an import) while a worker runs costs the loop a switch interval or more. These tests
check the mechanism that avoids that, not durations (those are in benchmarks/threads.py, (d)).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import anyio
import pytest

import offload
from _support import Gate, new_pool

# Runs in a fresh interpreter, so that nothing of anyio is imported yet but what offload's
# own import brings: records every module that the loop thread imports while one of the
# pool's worker threads exists.
_COLD_START = r"""
import json
import sys
import threading

backend = sys.argv[1]
imported = []
watching = False


class Watch:
    def find_spec(self, name, path=None, target=None):
        if (
            watching
            and threading.current_thread() is threading.main_thread()
            and any(t.name.startswith("offload-") for t in threading.enumerate())
        ):
            imported.append(name)

        return None


sys.meta_path.insert(0, Watch())

import offload


def work():
    return threading.current_thread().name


async def calls_on_a_cold_pool(gather):
    global watching
    watching = True
    names = await gather(offload.call(work), offload.call(work))
    watching = False
    return names


if backend == "trio":
    import trio

    async def gather(*calls):
        names = []

        async def one(call):
            names.append(await call)

        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(one, call)

        return names

    names = trio.run(calls_on_a_cold_pool, gather)
else:
    import asyncio

    run = asyncio.run
    if backend == "asyncio+uvloop":
        import uvloop

        run = uvloop.run

    names = run(calls_on_a_cold_pool(asyncio.gather))

print(json.dumps({"imported": imported, "names": sorted(names)}))
"""


class TestColdStart:
    """A pool's first calls in a loop leave the loop thread no one-time work for later."""

    async def test_the_loop_thread_imports_nothing_once_a_worker_runs(
        self, anyio_backend: tuple[str, dict[str, object]]
    ) -> None:
        """In a fresh interpreter, the first calls leave no import for the loop thread while
        a worker thread exists (anyio's backend is imported before a worker starts)."""
        name = anyio_backend[0]
        if anyio_backend[1].get("loop_factory") is not None:
            name = "asyncio+uvloop"

        done = await offload.call(
            subprocess.run,
            [sys.executable, "-c", _COLD_START, name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["names"][0].startswith("offload-thread-")
        assert report["imported"] == []


class TestThreadStart:
    """A new worker thread waits for the thread that starts it before it takes a job."""

    async def test_a_new_thread_takes_a_job_only_once_its_starter_is_back(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each new thread of a cold pool runs its first call only after ``Thread.start()``
        has returned in the thread that started it (which then never waits for a worker
        that went straight into a CPU-bound call)."""
        started: set[str] = set()  # threads whose start() has returned, by name
        original = threading.Thread.start

        def start(thread: threading.Thread) -> None:
            original(thread)
            started.add(thread.name)

        monkeypatch.setattr(threading.Thread, "start", start)
        pool = new_pool()
        seen: list[tuple[str, bool]] = []

        gate = Gate()

        def first_call() -> None:
            me = threading.current_thread().name
            seen.append((me, me in started))
            gate.pass_through()  # keeps its thread, so that each call needs a thread of its own

        async with pool, anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(pool.call, first_call)

            await gate.entered(4)
            gate.open()

        assert len({name for name, _ in seen}) == 4
        assert all(ok for _, ok in seen), seen
