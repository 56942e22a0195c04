"""Big arguments and results travel in shared memory, and no segment outlives its call."""

from __future__ import annotations

import array
import importlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import offload
from _support import BACKENDS, WAIT, new_pool, until
from offload import _payloads

np: Any
try:
    np = importlib.import_module("numpy")
except ImportError:  # pragma: no cover - numpy is in the test dependency group
    np = None

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")
pytestmark = pytest.mark.skipif(
    not _payloads.ENABLED, reason="shared memory payloads need /dev/shm (Linux)"
)

BIG = 2 * _payloads.THRESHOLD


def ours() -> list[str]:
    """The shared-memory segments that this process owns (made by it or by its workers)."""
    start = f"{_payloads.PREFIX}{os.getpid()}_"
    return sorted(name for name in os.listdir(_payloads.SHM_DIR) if name.startswith(start))


def big_bytes() -> bytes:
    return os.urandom(BIG)


def same(a: object, b: object) -> bool:
    """Equal values of the same type (NumPy arrays compared element-wise)."""
    if type(a) is not type(b):
        return False

    if np is not None and isinstance(a, np.ndarray):
        this: Any = a
        other: Any = b
        return bool(
            this.dtype == other.dtype and this.shape == other.shape and (this == other).all()
        )

    if isinstance(a, memoryview):
        view: Any = b
        return (a.format, a.shape, a.readonly, a.tobytes()) == (
            view.format,
            view.shape,
            view.readonly,
            view.tobytes(),
        )

    return a == b


def _numpy_values() -> list[Any]:
    if np is None:
        return []

    matrix = np.arange(BIG // 8, dtype=np.float64).reshape(512, -1)
    return [
        pytest.param(matrix, id="numpy"),
        pytest.param(np.asfortranarray(matrix), id="numpy-fortran"),
        pytest.param(matrix[:, ::2], id="numpy-strided"),
    ]


def _values() -> list[Any]:
    data = big_bytes()
    doubles = array.array("d", range(BIG // 8))
    return [
        pytest.param(data, id="bytes"),
        pytest.param(bytearray(data), id="bytearray"),
        pytest.param(memoryview(data), id="memoryview"),
        pytest.param(memoryview(doubles), id="memoryview-doubles"),
        pytest.param(memoryview(bytearray(data)).cast("B", (1024, BIG // 1024)), id="view-2d"),
        pytest.param(memoryview(data)[::2], id="memoryview-strided"),
        pytest.param((1, [data, "x"], {"k": bytearray(data)}), id="nested"),
        *_numpy_values(),
    ]


# -- what the workers run ---------------------------------------------------------------------


def echo(value: object) -> object:
    return value


def announce(path: str, text: str) -> None:
    partial = f"{path}.{os.getpid()}.partial"
    Path(partial).write_text(text)
    os.replace(partial, path)


def hold(path: str, payload: object) -> None:
    """Say that the call started, then spin until killed."""
    announce(path, str(os.getpid()))
    while True:
        pass


class Stall:
    """Pickled after a big buffer in a result: says so, then spins until the worker dies."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        announce(self.path, str(os.getpid()))
        while True:
            pass


class Exit:
    """Pickled after a big buffer in a result: the worker exits there, answer unsent."""

    def __reduce__(self) -> tuple[object, ...]:
        os._exit(3)


def stall_in_result(path: str) -> object:
    return (big_bytes(), Stall(path))


def exit_in_result() -> object:
    return (big_bytes(), Exit())


def mutate(values: Any) -> float:
    values[0] = -1.0
    return float(values[0])


# -- without a pool ---------------------------------------------------------------------------


class TestEncoding:
    """Payloads encode and decode in one process, with the segments they name."""

    def test_small_values_stay_in_the_pickle(self) -> None:
        """A call without a big buffer is a plain pickle and makes no segment."""
        data = _payloads.dumps_call((echo, (b"x" * 100, bytearray(10)), {"k": memoryview(b"y")}))
        assert data[:1] == b"\x80"
        assert _payloads.segments(data) == ([], 0)
        fn, args, kwargs = _payloads.loads_call(data)
        assert (fn, args, bytes(kwargs["k"])) == (echo, (b"x" * 100, bytearray(10)), b"y")
        assert ours() == []

    @pytest.mark.parametrize("value", _values())
    def test_round_trip(self, value: object) -> None:
        """Each kind of big value comes back equal, of its type, and leaves no segment."""
        data = _payloads.dumps_result((1, True, value))
        assert len(data) < BIG // 2 or not _is_contiguous(value)
        assert len(ours()) == len(_payloads.segments(data)[0])
        number, ok, back = _payloads.loads_result(data)
        assert (number, ok) == (1, True)
        assert same(value, back)
        assert ours() == []

    @needs_numpy
    def test_array_is_a_view_on_the_segment(self) -> None:
        """A received NumPy array is the mapped segment itself, not a copy of it."""
        assert np is not None
        matrix = np.ones((1024, 1024))
        back = _payloads.loads_result(_payloads.dumps_result((1, True, matrix)))[2]
        assert not back.flags.owndata
        assert back.flags.writeable

    def test_call_segments_stay_until_released(self) -> None:
        """A worker maps a call's segments; the parent unlinks them when the call ends."""
        data = _payloads.dumps_call((echo, (big_bytes(),), {}))
        assert len(ours()) == 1
        _payloads.loads_call(data)
        _payloads.loads_call(data)  # a retry on a fresh worker maps them again
        assert len(ours()) == 1
        names = _payloads.segment_names(data)
        assert len(names) == 1
        _payloads.release(names)
        assert ours() == []

    @needs_numpy
    def test_worker_writes_stay_private(self) -> None:
        """What a worker writes into an argument does not reach the segment (a retry sees the
        original)."""
        assert np is not None
        data = _payloads.dumps_call((echo, (np.zeros(BIG // 8),), {}))
        _, (first,), _ = _payloads.loads_call(data)
        first[0] = 5.0
        _, (second,), _ = _payloads.loads_call(data)
        assert second[0] == 0.0
        _payloads.release(_payloads.segment_names(data))
        assert ours() == []

    def test_failed_pickling_leaves_nothing(self) -> None:
        """When a later part cannot be pickled, the segments made so far are removed."""
        with pytest.raises(TypeError):
            _payloads.dumps_call((echo, (big_bytes(), threading.Lock()), {}))

        assert ours() == []

    def test_sweep_removes_a_dead_workers_segments(self) -> None:
        """Segments a worker made for this process are removed by name when it is reaped."""
        worker = os.getpid() + 100_000
        data = _payloads.dumps(_payloads._swap((big_bytes(),)), parent=os.getpid(), creator=worker)
        assert len(ours()) == 1
        _payloads.sweep_worker(worker)
        assert ours() == []
        assert _payloads.segments(data)[0]

    def test_check_makes_no_segment(self) -> None:
        """Checking whether a value pickles makes no segment, and raises what pickling does."""
        _payloads.check((big_bytes(), memoryview(big_bytes())))
        with pytest.raises(TypeError):
            _payloads.check(threading.Lock())

        assert ours() == []


def _is_contiguous(value: object) -> bool:
    if np is not None and isinstance(value, np.ndarray):
        flags: Any = getattr(value, "flags")  # noqa: B009
        return bool(flags.c_contiguous or flags.f_contiguous)

    if isinstance(value, memoryview):
        return value.contiguous

    return True


# -- through a process pool -------------------------------------------------------------------


class TestThroughAPool:
    """Big values cross to a worker process and back, on every backend."""

    @pytest.mark.parametrize("value", _values())
    async def test_round_trip(self, value: object) -> None:
        """A big argument reaches the worker and comes back as the result, equal and typed."""
        pool = new_pool("process", max_workers=1)
        async with pool:
            assert same(value, await pool.call(echo, value))
            assert ours() == []

        assert ours() == []

    @needs_numpy
    async def test_worker_writes_do_not_reach_the_caller(self) -> None:
        """A worker that writes into an array argument changes neither the caller's array nor
        a second call's argument."""
        assert np is not None
        values = np.zeros(BIG // 8)
        pool = new_pool("process", max_workers=1)
        async with pool:
            assert await pool.call(mutate, values) == -1.0
            assert values[0] == 0.0


async def _cancel_when(path: Path, scope: anyio.CancelScope, segments: int) -> None:
    await until(lambda: path.exists() and len(ours()) >= segments)
    scope.cancel()


class TestNothingLeftBehind:
    """No segment survives a cancelled call, a killed worker or a crashed one."""

    async def test_cancelled_call(self, tmp_path: Path) -> None:
        """A running call with a big argument is cancelled: its worker is killed and the
        argument's segment removed."""
        pool = new_pool("process", max_workers=1)
        started = tmp_path / "started"
        async with pool:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_when, started, scope, 1)
                    await pool.call(hold, str(started), big_bytes())

            assert scope.cancelled_caught
            await until(lambda: ours() == [], "the argument's segment is removed")

    async def test_killed_while_sending_a_result(self, tmp_path: Path) -> None:
        """A worker killed after it put its result in a segment, before it answered, leaves
        nothing: the parent removes that segment when it reaps the worker."""
        pool = new_pool("process", max_workers=1)
        started = tmp_path / "started"
        async with pool:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_when, started, scope, 1)
                    await pool.call(stall_in_result, str(started))

            assert scope.cancelled_caught
            await until(lambda: ours() == [], "the result's segment is removed")

    async def test_timed_out_call(self, tmp_path: Path) -> None:
        """A call that times out with a big argument leaves no segment."""
        pool = new_pool("process", max_workers=1)
        async with pool:
            with pytest.raises(TimeoutError):
                await pool(timeout=0.2)(hold)(str(tmp_path / "started"), big_bytes())

            await until(lambda: ours() == [], "the argument's segment is removed")

    async def test_crash_after_result_segment(self) -> None:
        """A worker that exits after it made a result segment fails the call with
        ``WorkerCrashed``, and the segment is gone."""
        pool = new_pool("process", max_workers=1)
        async with pool:
            with pytest.raises(offload.WorkerCrashed):
                await pool.call(exit_in_result)

            await until(lambda: ours() == [], "the result's segment is removed")
            assert same(b"ok", await pool.call(echo, b"ok"))

        assert ours() == []

    async def test_retry_after_crash_sees_the_argument(self, tmp_path: Path) -> None:
        """A call retried after a crash gets its big argument again on the fresh worker."""
        pool = new_pool("process", max_workers=1)
        data = big_bytes()
        async with pool:
            retried = pool(retries=1)(crash_once_then_echo)
            assert await retried(str(tmp_path / "marker"), data) == data

        assert ours() == []


def crash_once_then_echo(marker: str, value: bytes) -> bytes:
    if not os.path.exists(marker):
        Path(marker).write_text("crashed once")
        os._exit(9)

    return value


# -- off the loop thread ----------------------------------------------------------------------

_threads: list[threading.Thread] = []  # where each Traced was pickled, each Noted unpickled


class Traced:
    """An argument that says how big it is and records the thread that pickles it; the
    worker receives its size."""

    def __init__(self, nbytes: int, gate: threading.Event | None = None) -> None:
        self.nbytes = nbytes
        self.gate = gate
        self.entered = threading.Event()

    def __reduce__(self) -> tuple[object, ...]:
        _threads.append(threading.current_thread())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test opens the gate"

        return (int, (self.nbytes,))


class FailingSize:
    """An argument whose ``nbytes`` raises."""

    @property
    def nbytes(self) -> int:
        raise RuntimeError("no size")


def _noted() -> str:
    _threads.append(threading.current_thread())
    return "noted"


class Noted:
    """A result part whose unpickling, in the parent, records the thread it ran on."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_noted, ())


def noted_small() -> object:
    return Noted()


def noted_big() -> tuple[bytes, object]:
    return (big_bytes(), Noted())


def ran(path: str, data: bytes, traced: object) -> None:
    Path(path).write_text("ran")


class TestOffTheLoop:
    """Big calls are pickled, and big answers unpickled, off the event loop's thread."""

    def test_which_calls_are_big(self) -> None:
        """A call is big when an argument, or an item of a small container argument, holds
        THRESHOLD bytes or more; deeper buffers and small ones leave it on the fast path."""
        data = big_bytes()
        assert _payloads.holds_big((data,), {})
        assert _payloads.holds_big((1,), {"k": memoryview(data)})
        assert _payloads.holds_big(([1, bytearray(data)],), {})
        assert _payloads.holds_big(({"a": Traced(BIG)},), {})
        assert not _payloads.holds_big((1, "x", data[:100], None), {"k": 2.0})
        assert not _payloads.holds_big(([[data]],), {})  # two levels down: not looked at
        assert not _payloads.holds_big((Traced(10),), {})
        assert not _payloads.holds_big((FailingSize(),), {})

    async def test_big_call_is_pickled_off_the_loop(self) -> None:
        """A call holding a buffer of THRESHOLD bytes is pickled in another thread, a small
        one on the loop's thread, and both run."""
        loop_thread = threading.current_thread()
        _threads.clear()
        pool = new_pool("process", max_workers=1)
        async with pool:
            assert await pool.call(echo, Traced(10)) == 10
            assert _threads == [loop_thread]
            assert await pool.call(echo, [1, Traced(BIG)]) == [1, BIG]
            assert len(_threads) == 2
            assert _threads[1] is not loop_thread

        assert ours() == []

    async def test_cancelled_while_pickling(self, tmp_path: Path) -> None:
        """A call cancelled while its big arguments are pickled never runs, and leaves no
        segment."""
        gate = threading.Event()
        traced = Traced(BIG, gate)
        marker = tmp_path / "ran"
        pool = new_pool("process", max_workers=1)
        async with pool:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_when_entered, traced, scope)
                    await pool.call(ran, str(marker), big_bytes(), traced)

            assert scope.cancelled_caught
            assert len(ours()) == 1  # the first argument's segment, made before the gate
            gate.set()
            await until(lambda: ours() == [], "the argument's segment is removed")
            assert await pool.call(echo, 1) == 1  # one worker: it would have run first
            assert not marker.exists()

        assert ours() == []

    async def test_big_call_that_cannot_be_pickled(self) -> None:
        """A big call that cannot be pickled raises SerializationError, leaves no segment,
        and the pool runs the next call."""
        pool = new_pool("process", max_workers=1)
        async with pool:
            with pytest.raises(offload.SerializationError, match="argument 2"):
                await pool.call(ran, "unused", big_bytes(), threading.Lock())

            assert ours() == []
            assert await pool.call(echo, 2) == 2

    async def test_big_answer_is_unpickled_off_the_loop(self) -> None:
        """An answer that names segments is unpickled in another thread, a small one on the
        loop's thread."""
        loop_thread = threading.current_thread()
        _threads.clear()
        pool = new_pool("process", max_workers=1)
        async with pool:
            assert await pool.call(noted_small) == "noted"
            assert _threads == [loop_thread]
            data, note = await pool.call(noted_big)
            assert (len(data), note) == (BIG, "noted")
            assert len(_threads) == 2
            assert _threads[1] is not loop_thread

        assert ours() == []


async def _cancel_when_entered(traced: Traced, scope: anyio.CancelScope) -> None:
    await until(traced.entered.is_set)
    scope.cancel()


class TestResourceTracker:
    """Workers and their parent share one resource tracker, which has nothing to say."""

    @pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
    def test_no_tracker_complaints(self, tmp_path: Path, start_method: str) -> None:
        """A program whose worker returns big results (and gets only small arguments) exits
        without a word from the resource tracker, and leaves no segment."""
        script = tmp_path / "results.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import asyncio
                import os

                import offload


                def make(n: int) -> bytes:
                    return b"x" * n


                async def main() -> None:
                    pool = offload.ProcessPool("results", max_workers=1,
                                               start_method={start_method!r})
                    async with pool:
                        for _ in range(3):
                            assert len(await pool.call(make, {BIG})) == {BIG}

                    start = f"offload_{{os.getpid()}}_"
                    print([n for n in os.listdir("/dev/shm") if n.startswith(start)])


                if __name__ == "__main__":
                    asyncio.run(main())
                """
            )
        )
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]"
        assert "resource_tracker" not in done.stderr


# -- randomised: kills, timeouts and crashes with big payloads --------------------------------

KINDS = ("ok", "raise", "crash", "crash-in-result", "cancel", "timeout")
ENDINGS = {
    "ok": "result",
    "raise": "raised",
    "crash": "crashed",
    "crash-in-result": "crashed",
    "cancel": "cancelled",
    "timeout": "timed_out",
}


def random_big_body(kind: str, i: int, payload: bytes) -> object:
    """One call of the randomised test: a big argument in, a big result (or worse) out."""
    if kind == "raise":
        raise ValueError(i)

    if kind == "crash":
        os._exit(11)

    if kind == "crash-in-result":
        return (payload, Exit())

    if kind in ("cancel", "timeout"):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not offload.cancelled():
            time.sleep(0.001)

    return (i, payload)


def big_scenario(
    backend: tuple[str, dict[str, Any]], kinds: list[str], max_workers: int, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    pool = new_pool("process", max_workers=max_workers)
    plain = pool(random_big_body)
    timed = pool(timeout=0.05)(random_big_body)
    payload = big_bytes()
    outcomes: dict[int, str] = {}

    def end(i: int, how: str) -> None:
        assert i not in outcomes, f"call {i} ended twice: {outcomes[i]} and {how}"
        outcomes[i] = how

    async def one(i: int, scope: anyio.CancelScope) -> None:
        fn: Callable[..., Any] = timed if kinds[i] == "timeout" else plain
        with scope:
            try:
                result = await fn(kinds[i], i, payload)
            except offload.WorkerCrashed:
                end(i, "crashed")
            except ValueError:
                end(i, "raised")
            except TimeoutError:
                end(i, "timed_out")
            else:
                end(i, "result" if result == (i, payload) else "wrong result")

        if scope.cancelled_caught:
            end(i, "cancelled")

    async def main() -> None:
        scopes = [anyio.CancelScope() for _ in kinds]
        async with pool:
            async with anyio.create_task_group() as tg:
                for i in range(len(kinds)):
                    tg.start_soon(one, i, scopes[i])

                cancels = [i for i, kind in enumerate(kinds) if kind == "cancel"]
                rng.shuffle(cancels)
                for i in cancels:
                    await anyio.sleep(rng.choice([0, 0.001, 0.02]))
                    scopes[i].cancel()

            await until(lambda: not pool.stats().busy)

    anyio.run(main, backend=backend[0], backend_options=backend[1])
    assert sorted(outcomes) == list(range(len(kinds))), "every call ends exactly once"
    for i, how in outcomes.items():
        assert how == ENDINGS[kinds[i]], (kinds[i], how)

    assert ours() == [], "no segment outlives the pool's run"


@pytest.mark.parametrize("backend", BACKENDS)
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6),
    max_workers=st.integers(1, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_big_payloads_survive_kills_timeouts_and_crashes(
    backend: tuple[str, dict[str, Any]], kinds: list[str], max_workers: int, seed: int
) -> None:
    """Random calls with big arguments and results, cancelled, timed out, crashing (also
    halfway through sending a result): each ends once as its kind says, and no segment is
    left."""
    big_scenario(backend, kinds, max_workers, seed)
