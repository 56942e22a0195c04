"""Randomised interleavings: every call ends exactly once, capacity is never exceeded."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import offload
from _support import BACKENDS, WAIT, StatsWatch, new_pool, until

KINDS = ("ok", "raise", "block", "cancel", "timeout")

# Which endings each kind of call may have (Overloaded whenever max_pending can shed it).
ALLOWED = {
    "ok": {"result"},
    "raise": {"raised"},
    "block": {"result"},
    "cancel": {"cancelled"},
    "timeout": {"timed_out"},
}


@dataclass
class Tracker:
    """Counts the calls inside worker threads, per pool and per limited function."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inside: int = 0
    peak: int = 0
    # per limited function (each decorated function has its own limit)
    limited_inside: dict[str, int] = field(default_factory=dict[str, int])
    limited_peak: dict[str, int] = field(default_factory=dict[str, int])

    def enter(self, group: str | None) -> None:
        with self.lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            if group is not None:
                now = self.limited_inside[group] = self.limited_inside.get(group, 0) + 1
                self.limited_peak[group] = max(self.limited_peak.get(group, 0), now)

    def leave(self, group: str | None) -> None:
        with self.lock:
            self.inside -= 1
            if group is not None:
                self.limited_inside[group] -= 1


def scenario(
    backend: tuple[str, dict[str, Any]],
    kinds: list[str],
    limited: list[bool],
    max_workers: int,
    max_pending: int | None,
    limit: int,
    cancel: str,
    seed: int,
) -> None:
    rng = random.Random(seed)
    pool = new_pool(max_workers=max_workers, max_pending=max_pending, shutdown_timeout=WAIT)
    tracker = Tracker()
    release = [threading.Event() for _ in kinds]
    outcomes: dict[int, str] = {}

    def body(i: int, group: str | None) -> int:
        tracker.enter(group)
        try:
            kind = kinds[i]
            if kind == "raise":
                raise ValueError(i)

            if kind in ("block", "cancel", "timeout"):
                # until released, or (cancel, timeout) until the caller is gone
                for _ in range(int(WAIT / 0.001)):
                    if release[i].is_set() or (kind != "block" and offload.cancelled()):
                        break

                    release[i].wait(0.001)

            return i
        finally:
            tracker.leave(group)

    policy = cast(offload.CancelPolicy, cancel)
    plain = pool(cancel=policy)(body)
    capped = pool(limit=limit, cancel=policy)(body)
    timed = pool(timeout=0.02, cancel=policy)(body)
    timed_capped = pool(timeout=0.02, limit=limit, cancel=policy)(body)
    scopes: list[anyio.CancelScope] = []
    watch = StatsWatch(pool)

    def end(i: int, how: str) -> None:
        assert i not in outcomes, f"call {i} ended twice: {outcomes[i]} and {how}"
        outcomes[i] = how
        watch.end()

    async def one(i: int) -> None:
        kind, is_limited = kinds[i], limited[i]
        if kind == "timeout":
            fn, group = (timed_capped, "timed") if is_limited else (timed, None)
        else:
            fn, group = (capped, "plain") if is_limited else (plain, None)

        watch.begin()
        with scopes[i]:
            try:
                result = await fn(i, group)
            except offload.Overloaded:
                end(i, "overloaded")
            except ValueError as exc:
                end(i, "raised" if exc.args == (i,) else f"raised {exc.args}")
            except TimeoutError:
                end(i, "timed_out")
            else:
                assert result == i
                end(i, "result")

        if scopes[i].cancelled_caught:
            end(i, "cancelled")

    async def main() -> None:
        scopes.extend(anyio.CancelScope() for _ in kinds)
        async with anyio.create_task_group() as tg:
            for i in range(len(kinds)):
                tg.start_soon(one, i)
                for _ in range(rng.randrange(3)):
                    await anyio.lowlevel.checkpoint()
                    watch.check()

            actions = [("cancel", i) for i, k in enumerate(kinds) if k == "cancel"]
            actions += [("release", i) for i, k in enumerate(kinds) if k == "block"]
            rng.shuffle(actions)
            for action, i in actions:
                for _ in range(rng.randrange(4)):
                    await anyio.lowlevel.checkpoint()
                    watch.check()

                if action == "cancel":
                    scopes[i].cancel()
                else:
                    release[i].set()

        for event in release:
            event.set()

        await until(lambda: not pool.stats().busy)

    anyio.run(main, backend=backend[0], backend_options=backend[1])

    assert sorted(outcomes) == list(range(len(kinds))), "every call ends exactly once"
    for i, how in outcomes.items():
        assert how in ALLOWED[kinds[i]] | {"overloaded"}, (kinds[i], how)
        if max_pending is None:
            assert how != "overloaded"

    assert tracker.peak <= max_workers
    assert all(peak <= limit for peak in tracker.limited_peak.values())
    stats = pool.stats()
    counts = {how: list(outcomes.values()).count(how) for how in set(outcomes.values())}
    assert stats.completed == counts.get("result", 0)
    assert stats.failed == counts.get("raised", 0)
    assert stats.cancelled == counts.get("cancelled", 0)
    assert stats.timed_out == counts.get("timed_out", 0)
    assert stats.rejected == counts.get("overloaded", 0)
    assert (stats.busy, stats.pending, stats.abandoned) == (0, 0, 0)
    watch.settled()
    assert watch.problems == []


calls = st.lists(st.tuples(st.sampled_from(KINDS), st.booleans()), min_size=1, max_size=16)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    calls=calls,
    max_workers=st.integers(1, 4),
    max_pending=st.one_of(st.none(), st.integers(0, 4)),
    limit=st.integers(1, 2),
    cancel=st.sampled_from(["abandon", "wait"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_call_ends_exactly_once(
    backend: tuple[str, dict[str, Any]],
    calls: list[tuple[str, bool]],
    max_workers: int,
    max_pending: int | None,
    limit: int,
    cancel: str,
    seed: int,
) -> None:
    """Interleaved calls, cancellations, timeouts and errors: each call ends once, in a way
    its kind allows, the counters agree at every snapshot (``busy <= max_workers``, outcomes
    adding up to ``submitted``), and capacity and limits are never exceeded."""
    kinds = [kind for kind, _ in calls]
    limited = [is_limited for _, is_limited in calls]
    scenario(backend, kinds, limited, max_workers, max_pending, limit, cancel, seed)
