"""Load shedding: ``max_pending`` holds for any burst, and callers who retry get their turn."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import offload
from _support import WAIT, Gate, new_pool, until

MAX_WORKERS = 8
MAX_PENDING = 64
BURST = 132  # 72 admitted (8 running, 64 waiting), 60 shed


def wait_for_path(path: str) -> str:
    """Block (in a worker thread or process) until ``path`` exists."""
    deadline = time.monotonic() + WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")

        threading.Event().wait(0.002)

    return path


@pytest.fixture(params=["thread", "process"])
def kind(request: pytest.FixtureRequest) -> str:
    """Run the test on a thread pool and on a process pool."""
    return request.param  # type: ignore[no-any-return]


async def burst(pool: offload.ThreadPool | offload.ProcessPool, release: Path) -> list[str]:
    """Start ``BURST`` blocking calls in one loop turn; return each call's outcome, checking
    at every loop turn (and as each call is made) that the gauges stay within bounds."""
    outcomes: list[str] = []
    violations: list[offload.PoolStats] = []

    def check() -> None:
        stats = pool.stats()
        if stats.pending > MAX_PENDING or stats.busy > MAX_WORKERS:
            violations.append(stats)

    async def one() -> None:
        check()
        try:
            await pool.call(wait_for_path, str(release))
        except offload.Overloaded:
            outcomes.append("overloaded")
        else:
            outcomes.append("done")

        check()

    async def watch() -> None:
        while len(outcomes) < BURST:
            check()
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        for _ in range(BURST):
            tg.start_soon(one)

        await until(lambda: outcomes.count("overloaded") == BURST - 72, "60 calls shed")
        await until(lambda: pool.stats().busy == MAX_WORKERS, "every worker busy")
        stats = pool.stats()
        assert (stats.busy, stats.pending) == (MAX_WORKERS, MAX_PENDING)
        release.write_text("go")

    assert violations == []
    return outcomes


class TestBurst:
    async def test_burst_on_a_warm_pool(self, kind: str, tmp_path: Path) -> None:
        """With one idle worker alive, a burst of 132 calls on ``max_workers=8,
        max_pending=64`` admits exactly 72 and sheds 60 with ``Overloaded``."""
        pool = new_pool(kind, max_workers=MAX_WORKERS, max_pending=MAX_PENDING)
        async with pool:
            assert await pool.call(abs, -1) == 1  # one worker, now idle
            assert pool.stats().workers == 1
            outcomes = await burst(pool, tmp_path / "release")

        assert outcomes.count("done") == MAX_WORKERS + MAX_PENDING
        stats = pool.stats()
        assert stats.rejected == BURST - MAX_WORKERS - MAX_PENDING
        assert stats.submitted == 1 + MAX_WORKERS + MAX_PENDING

    async def test_burst_on_a_cold_pool(self, tmp_path: Path) -> None:
        """The same burst on a pool with no worker yet admits 72 as well."""
        pool = new_pool("thread", max_workers=MAX_WORKERS, max_pending=MAX_PENDING)
        async with pool:
            outcomes = await burst(pool, tmp_path / "release")

        assert outcomes.count("done") == MAX_WORKERS + MAX_PENDING

    async def test_bound_holds_while_workers_are_busy(self) -> None:
        """With some workers busy, the idle ones plus ``max_pending`` bound what is admitted."""
        pool = new_pool(max_workers=4, max_pending=2)
        gate = Gate()
        admitted: list[int] = []
        shed: list[int] = []
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(gate.call, pool, i)

            await gate.entered(3)
            assert pool.stats().workers == 3

            async def one(i: int) -> None:
                try:
                    await gate.call(pool, i)
                except offload.Overloaded:
                    shed.append(i)
                else:
                    admitted.append(i)

            for i in range(3, 10):
                tg.start_soon(one, i)

            await until(lambda: len(shed) == 4, "four calls shed")
            assert pool.stats().pending <= 2
            gate.open()

        assert len(admitted) == 3  # which three: the order trio runs new tasks in


class TestFairShare:
    async def test_retrying_caller_is_served_in_turn(self) -> None:
        """A caller that retries after ``Overloaded`` and gets in keeps its place: it runs
        before the calls that came after it, however eagerly they retry."""
        pool = new_pool(max_workers=1, max_pending=1)
        releases = {tag: threading.Event() for tag in ("a", "b", "retry", "c")}
        order: list[str] = []

        def hold(tag: str) -> str:
            order.append(tag)
            releases[tag].wait(WAIT)
            return tag

        async def greedy(tag: str) -> None:
            while True:
                try:
                    await pool.call(hold, tag)
                    return
                except offload.Overloaded:
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(greedy, "a")
            await until(lambda: order == ["a"], "a runs")
            tg.start_soon(greedy, "b")
            await until(lambda: pool.stats().pending == 1, "b waits")
            with pytest.raises(offload.Overloaded):
                await pool.call(hold, "retry")

            releases["a"].set()
            await until(lambda: order == ["a", "b"], "b runs")
            retry_done = anyio.Event()

            async def retry() -> None:
                await pool.call(hold, "retry")  # room again: admitted
                retry_done.set()

            tg.start_soon(retry)
            await until(lambda: pool.stats().pending == 1, "the retry waits")
            tg.start_soon(greedy, "c")  # keeps retrying, but cannot pass the retry
            releases["b"].set()
            await until(lambda: order == ["a", "b", "retry"], "the retry runs")
            releases["retry"].set()
            await retry_done.wait()
            releases["c"].set()

        assert order == ["a", "b", "retry", "c"]

    async def test_retrying_callers_share_the_pool(self) -> None:
        """Callers that all retry after ``Overloaded`` are admitted in turn: none starves."""
        pool = new_pool(max_workers=1, max_pending=1)
        served: dict[str, int] = {}
        total = 300

        async def caller(name: str) -> None:
            while sum(served.values()) < total:
                try:
                    await pool.call(abs, -1)
                except offload.Overloaded:
                    await anyio.lowlevel.checkpoint()
                else:
                    served[name] = served.get(name, 0) + 1

        names = [f"caller-{i}" for i in range(5)]
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(caller, name)

        assert sorted(served) == names, "every caller was served"
        assert min(served.values()) >= total // len(names) // 4, served

    async def test_limit_keeps_workers_for_other_callers(self) -> None:
        """With a ``limit`` on a slow function, its callers cannot take every worker, and a
        caller of another function that retries after ``Overloaded`` gets served."""
        pool = new_pool(max_workers=2, max_pending=2)
        gate = Gate()

        @pool(limit=1)
        def slow(tag: object) -> object:
            return gate.pass_through(tag)

        async def flood(tag: int) -> None:
            while True:
                try:
                    await slow(tag)
                    return
                except offload.Overloaded:
                    await anyio.lowlevel.checkpoint()

        served = 0
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(flood, i)

            await gate.entered(1)
            await until(lambda: pool.stats().pending == 2, "slow callers fill max_pending")
            while served < 20:
                try:
                    assert await pool.call(str.upper, "report") == "REPORT"
                except offload.Overloaded:
                    await anyio.lowlevel.checkpoint()
                else:
                    served += 1

            assert gate.peak == 1
            gate.open()

        assert served == 20
