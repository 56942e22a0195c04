from __future__ import annotations

import multiprocessing
import sys
import threading
from collections.abc import Iterator

import pytest

from _support import BACKENDS


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Run every async test on asyncio, asyncio with uvloop, and trio."""
    return request.param  # type: ignore[no-any-return]


def _foreign(thread: threading.Thread) -> bool:
    # Threads that belong to other libraries' own caches, not to offload or the test: trio's
    # thread cache, and dask.distributed's one process-wide helper thread.
    return thread.name.startswith(("Trio thread", "Dask-Offload"))


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
