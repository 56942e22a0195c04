from __future__ import annotations

import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop does not build on Windows
    uvloop = None  # type: ignore[assignment]

try:
    import trio
except ImportError:  # pragma: no cover - trio is in the test dependency group
    trio = None  # type: ignore[assignment]

needs_uvloop = pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
needs_trio = pytest.mark.skipif(trio is None, reason="trio is not installed")


def _uvloop_factory() -> Callable[[], Any]:
    assert uvloop is not None
    return uvloop.new_event_loop


@pytest.fixture(
    params=[
        pytest.param(("asyncio", dict[str, Any]()), id="asyncio"),
        pytest.param(
            ("asyncio", {"loop_factory": _uvloop_factory() if uvloop is not None else None}),
            id="asyncio+uvloop",
            marks=needs_uvloop,
        ),
        pytest.param(("trio", dict[str, Any]()), id="trio", marks=needs_trio),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Run every async test on asyncio, asyncio with uvloop, and trio."""
    return request.param  # type: ignore[no-any-return]


def _foreign(thread: threading.Thread) -> bool:
    # Threads that belong to other libraries' own caches, not to offload or the test.
    return thread.name.startswith("Trio thread")


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Fail a test that leaves a thread or a child process alive after its loop's run."""
    before = set(threading.enumerate())
    yield
    left = [
        t for t in threading.enumerate() if t not in before and t.is_alive() and not _foreign(t)
    ]
    assert not left, f"threads left behind by the test: {left}"
    children = multiprocessing.active_children()
    assert not children, f"processes left behind by the test: {children}"


def pytest_report_header() -> str:
    return f"offload test run on Python {sys.version.split()[0]}"
