"""offload's pytest plugin: fail an async test whose event loop blocked.

* ``pytest --offload-fail-on-blocking`` checks every async test with a 0.1 s threshold;
  ``--offload-fail-on-blocking=0.05`` sets the threshold.
* ``@pytest.mark.offload_blocking`` checks one test (even without the option);
  ``@pytest.mark.offload_blocking(threshold=0.5)`` sets its threshold and
  ``@pytest.mark.offload_blocking(allow=True)`` exempts it.

A test fails when one step of it blocked (``"blocking"``) or computed (``"cpu"``) on the loop
past the threshold; the failure names the line and shows the stack. Saturation and starvation
are shown in the test's ``offload`` report section but do not fail it: no line of the test is
to blame. The plugin works with the async test runners that await the test function in its
loop: anyio's plugin and pytest-asyncio. Without the option or the marker it does nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import pytest

from ._monitor import BlockingEvent, Monitor

__all__ = (
    "pytest_addoption",
    "pytest_configure",
    "pytest_load_initial_conftests",
    "pytest_runtest_call",
)

_OPTION = "--offload-fail-on-blocking"
_MARKER = "offload_blocking"
_DEFAULT_THRESHOLD = 0.1
_FAILING = ("blocking", "cpu")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--offload-fail-on-blocking[=SECONDS]``."""
    group = parser.getgroup("offload", "offload: find blocking code in async tests")
    group.addoption(
        _OPTION,
        dest="offload_fail_on_blocking",
        nargs="?",
        const=_DEFAULT_THRESHOLD,
        default=None,
        type=_seconds,
        metavar="SECONDS",
        help=(
            "fail an async test whose event loop does not turn for longer than SECONDS "
            f"(default {_DEFAULT_THRESHOLD}) because of a blocking call or CPU-bound work"
        ),
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Keep ``--offload-fail-on-blocking tests/`` from taking ``tests/`` as its value."""
    for index, arg in enumerate(args[:-1]):
        if arg == _OPTION and not _is_number(args[index + 1]):
            args[index] = f"{_OPTION}={_DEFAULT_THRESHOLD}"


def pytest_configure(config: pytest.Config) -> None:
    """Check the option's value and register the ``offload_blocking`` marker."""
    value: float | str | None = config.getoption("offload_fail_on_blocking")
    if isinstance(value, str) or (value is not None and not value > 0):
        raise pytest.UsageError(f"{_OPTION} takes a positive number of seconds, not {value!r}")

    config.addinivalue_line(
        "markers",
        f"{_MARKER}(threshold={_DEFAULT_THRESHOLD}, allow=False): fail this async test if its "
        "event loop blocks longer than threshold seconds (as --offload-fail-on-blocking); "
        "allow=True exempts the test",
    )


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False

    return True


def _seconds(value: str) -> float | str:
    # A value that is no number is refused in pytest_configure; by then
    # pytest_load_initial_conftests has given back the paths the option took as its value.
    return float(value) if _is_number(value) else value


def _threshold(item: pytest.Item) -> float | None:
    """Return the threshold to check this test with, or ``None`` not to check it."""
    option: float | None = item.config.getoption("offload_fail_on_blocking")
    marker = item.get_closest_marker(_MARKER)
    if marker is None:
        return option

    unknown = set(marker.kwargs) - {"threshold", "allow"}
    if unknown or len(marker.args) > 1:
        pytest.fail(
            f"@pytest.mark.{_MARKER} takes threshold= and allow=, not "
            f"{sorted(unknown) or marker.args!r}",
            pytrace=False,
        )

    if marker.kwargs.get("allow", False):
        return None

    threshold = marker.kwargs.get("threshold", marker.args[0] if marker.args else None)
    if threshold is None:
        return option if option is not None else _DEFAULT_THRESHOLD

    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold <= 0:
        pytest.fail(
            f"@pytest.mark.{_MARKER}(threshold=...) must be a positive number of seconds, "
            f"not {threshold!r}",
            pytrace=False,
        )

    return float(threshold)


def _watched(
    fn: Callable[..., Coroutine[Any, Any, Any]], threshold: float, events: list[BlockingEvent]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(fn)
    async def run_watched(*args: Any, **kwargs: Any) -> Any:
        monitor = Monitor(threshold, log=False)
        try:
            with monitor:
                return await fn(*args, **kwargs)
        finally:
            events.extend(monitor.events)

    return run_watched


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Run an async test under a monitor, and fail it if its loop blocked."""
    if not isinstance(item, pytest.Function):
        return (yield)

    threshold = _threshold(item)
    if threshold is None:
        return (yield)

    # The async runners (anyio's plugin, pytest-asyncio) call ``item.obj``, or for hypothesis
    # tests its ``inner_test``, inside the loop: watch that call.
    target: Any = item
    name = "obj"
    hypothesis = getattr(item.obj, "hypothesis", None)
    if hypothesis is not None and inspect.iscoroutinefunction(
        getattr(hypothesis, "inner_test", None)
    ):
        target, name = hypothesis, "inner_test"
    elif not inspect.iscoroutinefunction(item.obj):
        return (yield)

    original = getattr(target, name)
    events: list[BlockingEvent] = []
    setattr(target, name, _watched(original, threshold, events))
    try:
        result = yield
    except BaseException:
        _add_section(item, events)
        raise
    finally:
        setattr(target, name, original)

    failing = [event for event in events if event.kind in _FAILING]
    if not failing:
        _add_section(item, events)
        return result

    worst = max(failing, key=lambda event: event.duration)
    _add_section(item, [event for event in events if event is not worst])
    more = f" (and {len(failing) - 1} more, below)" if len(failing) > 1 else ""
    pytest.fail(
        f"the event loop blocked past {threshold:g} s during this test{more}:\n{worst}",
        pytrace=False,
    )


def _add_section(item: pytest.Item, events: list[BlockingEvent]) -> None:
    if events:
        item.add_report_section("call", "offload", "\n\n".join(str(event) for event in events))
