from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

BACKENDS = """
import time

import anyio
import anyio.lowlevel
import pytest
import uvloop


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request):
    return request.param
"""

ASYNCIO = """
import time

import anyio
import anyio.lowlevel
import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""

BLOCKING_TEST = """

@pytest.mark.anyio
async def test_blocks():
    await anyio.lowlevel.checkpoint()
    time.sleep(0.3)
"""


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


class TestOption:
    def test_fails_a_blocking_test(self, pytester: pytest.Pytester) -> None:
        """With the option, a blocking test fails on every backend, naming the line."""
        path = pytester.makepyfile(BACKENDS + BLOCKING_TEST)
        line = path.read_text().splitlines().index("    time.sleep(0.3)") + 1
        result = pytester.runpytest("--offload-fail-on-blocking", str(path))
        result.assert_outcomes(failed=3)
        result.stdout.fnmatch_lines(
            [
                "*the event loop blocked past 0.1 s during this test:",
                "event loop blocked for 0.* s: a blocking call*",
                f"  at test_fails_a_blocking_test.py:{line} in test_blocks",
                "    time.sleep(0.3)",
                "  fix: await *.sleep(0.3)",
                "Stack (most recent call last):",
            ]
        )
        assert "FAILED test_fails_a_blocking_test.py::test_blocks[trio]" in result.stdout.str()

    def test_passes_a_test_that_awaits(self, pytester: pytest.Pytester) -> None:
        """A test that waits without blocking passes."""
        pytester.makepyfile(
            ASYNCIO
            + """
@pytest.mark.anyio
async def test_waits():
    await anyio.sleep(0.3)
"""
        )
        pytester.runpytest("--offload-fail-on-blocking").assert_outcomes(passed=1)

    def test_threshold(self, pytester: pytest.Pytester) -> None:
        """``--offload-fail-on-blocking=SECONDS`` sets the threshold."""
        pytester.makepyfile(ASYNCIO + BLOCKING_TEST)
        pytester.runpytest("--offload-fail-on-blocking=2").assert_outcomes(passed=1)

    def test_off_by_default(self, pytester: pytest.Pytester) -> None:
        """Without the option or the marker, the plugin does nothing."""
        pytester.makepyfile(ASYNCIO + BLOCKING_TEST)
        result = pytester.runpytest("-rA")
        result.assert_outcomes(passed=1)
        assert "Captured offload" not in result.stdout.str()

    def test_bad_value(self, pytester: pytest.Pytester) -> None:
        """A threshold that is not a positive number is a usage error."""
        pytester.makepyfile(ASYNCIO + BLOCKING_TEST)
        result = pytester.runpytest("--offload-fail-on-blocking=-1")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--offload-fail-on-blocking takes a positive number*"])


class TestMarker:
    def test_marker_alone_turns_it_on(self, pytester: pytest.Pytester) -> None:
        """The marker checks its test without the option."""
        pytester.makepyfile(
            ASYNCIO
            + """
@pytest.mark.anyio
@pytest.mark.offload_blocking
async def test_blocks():
    time.sleep(0.3)


@pytest.mark.anyio
async def test_unmarked():
    time.sleep(0.3)
"""
        )
        result = pytester.runpytest()
        result.assert_outcomes(passed=1, failed=1)
        assert "FAILED test_marker_alone_turns_it_on.py::test_blocks" in result.stdout.str()

    def test_marker_threshold(self, pytester: pytest.Pytester) -> None:
        """The marker's threshold wins over the option's."""
        pytester.makepyfile(
            ASYNCIO
            + """
@pytest.mark.anyio
@pytest.mark.offload_blocking(threshold=2.0)
async def test_blocks():
    time.sleep(0.3)
"""
        )
        pytester.runpytest("--offload-fail-on-blocking").assert_outcomes(passed=1)

    def test_allow(self, pytester: pytest.Pytester) -> None:
        """``allow=True`` exempts a test from the option."""
        pytester.makepyfile(
            ASYNCIO
            + """
@pytest.mark.anyio
@pytest.mark.offload_blocking(allow=True)
async def test_blocks():
    time.sleep(0.3)
"""
        )
        pytester.runpytest("--offload-fail-on-blocking").assert_outcomes(passed=1)

    def test_bad_arguments(self, pytester: pytest.Pytester) -> None:
        """The marker refuses arguments it does not know."""
        pytester.makepyfile(
            ASYNCIO
            + """
@pytest.mark.anyio
@pytest.mark.offload_blocking(treshold=0.2)
async def test_blocks():
    pass
"""
        )
        result = pytester.runpytest()
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            ["*offload_blocking takes threshold= and allow=, not *treshold*"]
        )

    def test_registered(self, pytester: pytest.Pytester) -> None:
        """The marker is registered, so ``--strict-markers`` accepts it."""
        result = pytester.runpytest("--markers")
        result.stdout.fnmatch_lines(["@pytest.mark.offload_blocking(threshold=0.1, allow=False)*"])
        pytester.makepyfile(
            """
import pytest

@pytest.mark.offload_blocking
def test_sync():
    pass
"""
        )
        pytester.runpytest("--strict-markers").assert_outcomes(passed=1)


class TestRunners:
    def test_pytest_asyncio(self, pytester: pytest.Pytester) -> None:
        """A pytest-asyncio test that blocks fails, naming the line."""
        pytester.makepyfile(
            """
import time

import pytest


@pytest.mark.asyncio
async def test_blocks():
    time.sleep(0.3)
"""
        )
        result = pytester.runpytest("--offload-fail-on-blocking")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["  at test_pytest_asyncio.py:8 in test_blocks"])

    def test_hypothesis(self, pytester: pytest.Pytester) -> None:
        """An async hypothesis test run by anyio is checked too."""
        pytester.makepyfile(
            ASYNCIO
            + """
from hypothesis import given, settings, strategies


@pytest.mark.anyio
@settings(max_examples=1, deadline=None)
@given(strategies.just(0.3))
async def test_blocks(seconds):
    time.sleep(seconds)
"""
        )
        result = pytester.runpytest("--offload-fail-on-blocking")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*    time.sleep(seconds)"])

    def test_sync_tests_are_untouched(self, pytester: pytest.Pytester) -> None:
        """A sync test has no loop to block and passes."""
        pytester.makepyfile(
            """
import time

import pytest


@pytest.mark.offload_blocking
def test_sync():
    time.sleep(0.3)
"""
        )
        pytester.runpytest("--offload-fail-on-blocking").assert_outcomes(passed=1)


class TestSection:
    def test_saturation_is_shown_but_does_not_fail(self, pytester: pytest.Pytester) -> None:
        """Saturation has no line to blame: the test passes and the section shows it."""
        pytester.makepyfile(
            ASYNCIO
            + """

async def short_steps(until):
    while time.perf_counter() < until:
        deadline = time.perf_counter() + 0.002
        while time.perf_counter() < deadline:
            pass
        await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
async def test_saturates():
    until = time.perf_counter() + 0.6
    async with anyio.create_task_group() as tasks:
        for _ in range(100):
            tasks.start_soon(short_steps, until)
"""
        )
        result = pytester.runpytest("--offload-fail-on-blocking", "-rA")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(
            [
                "*Captured offload call*",
                "event loop blocked for * s: saturation: many short steps, none blocking alone",
            ]
        )


FIRST_STEP_TEST = """

def compute(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


@pytest.mark.anyio
async def test_blocks_at_once():
    compute(6_000_000)
    time.sleep(0.15)
"""

STARVING_TEST = """
import threading

import offload


def crunch(stop):
    while not stop.is_set():
        pass


@pytest.mark.anyio
async def test_starved():
    stop = threading.Event()
    async with anyio.create_task_group() as tasks:
        for _ in range(8):
            tasks.start_soon(offload.call, crunch, stop)

        until = time.perf_counter() + 1.0
        while time.perf_counter() < until:
            await anyio.sleep(0.005)

        stop.set()
"""


class TestAsPeopleFirstMeetIt:
    """The plugin on the blog posts' cases, on asyncio, uvloop and trio."""

    def test_block_in_the_first_step(self, pytester: pytest.Pytester) -> None:
        """A test that blocks on its first line fails, at the site that took the most time."""
        path = pytester.makepyfile(BACKENDS + FIRST_STEP_TEST)
        lines = path.read_text().splitlines()
        loop_line = lines.index("        total += i * i") + 1
        sleep_line = lines.index("    time.sleep(0.15)") + 1
        # -rN: no short summary, which repeats each message in full on CI.
        result = pytester.runpytest("--offload-fail-on-blocking", "-rN", str(path))
        result.assert_outcomes(failed=3)
        out = result.stdout.str()
        name = "test_block_in_the_first_step.py"
        assert out.count(f"  at {name}:{loop_line} in compute") == 3
        assert out.count("  fix: decorate compute() with @offload.process and await it") == 3
        assert out.count(f"{name}:{sleep_line} in test_blocks_at_once: time.sleep(0.15)") == 3

    def test_starvation_names_the_busy_function(self, pytester: pytest.Pytester) -> None:
        """Starvation does not fail a test; its section names the offloaded function."""
        path = pytester.makepyfile(BACKENDS + STARVING_TEST)
        line = path.read_text().splitlines().index("    while not stop.is_set():") + 1
        result = pytester.runpytest("--offload-fail-on-blocking=0.05", "-rA", str(path))
        result.assert_outcomes(passed=3)
        out = result.stdout.str()
        assert out.count("Captured offload call") == 3
        assert f"test_starvation_names_the_busy_function.py:{line} in crunch" in out
        assert "decorate crunch() with @offload.process instead of a thread" in out
