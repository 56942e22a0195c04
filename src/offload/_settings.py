"""Pool settings: built-in defaults < ``OFFLOAD_<POOL>_<SETTING>`` < explicit arguments."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from typing_extensions import TypedDict

__all__ = (
    "PoolSettings",
    "ProcessOptions",
    "ProcessSettings",
    "ThreadOptions",
    "ThreadSettings",
    "default_start_method",
    "env_name",
    "resolve",
    "validate",
)


def usable_cpus() -> int:
    """Return how many CPUs this process may run on (its affinity mask, not the machine)."""
    process_cpu_count: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    if process_cpu_count is not None:  # Python 3.13+
        return process_cpu_count() or 1

    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    """The settings every pool has, as resolved for one event loop.

    Attributes:
        max_workers: at most this many calls of the pool run at once.
        max_pending: at most this many calls wait for a worker; past it a call fails at once
            with :exc:`~offload.Overloaded`. ``None`` (the default) is unbounded.
        idle_timeout: seconds after which an idle worker exits.
        shutdown_timeout: seconds the end of the loop (or ``aclose()``) waits for running
            calls before it warns, naming what still runs.
    """

    max_workers: int
    max_pending: int | None = None
    idle_timeout: float = 10.0
    shutdown_timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadSettings(PoolSettings):
    """The settings of a :class:`~offload.ThreadPool`."""


def default_start_method() -> str:
    """Return ``forkserver`` where the platform has it, else ``spawn``."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSettings(PoolSettings):
    """The settings of a :class:`~offload.ProcessPool`.

    Attributes:
        max_tasks_per_worker: a worker process exits after this many calls and a fresh one
            replaces it (``None``, the default: never).
        start_method: how worker processes start: ``forkserver`` (the default where
            available), ``spawn`` or ``fork``.
        initializer: called once in each worker process as it starts, with ``initargs``.
        initargs: the arguments of ``initializer``.
    """

    max_tasks_per_worker: int | None = None
    start_method: str = dataclasses.field(default_factory=default_start_method)
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()


class ThreadOptions(TypedDict, total=False):
    """Keyword arguments that set a thread pool's settings (see :class:`PoolSettings`)."""

    max_workers: int
    max_pending: int | None
    idle_timeout: float
    shutdown_timeout: float


class ProcessOptions(TypedDict, total=False):
    """Keyword arguments that set a process pool's settings (see :class:`ProcessSettings`)."""

    max_workers: int
    max_pending: int | None
    idle_timeout: float
    shutdown_timeout: float
    max_tasks_per_worker: int | None
    start_method: str
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]


def env_name(pool: str, setting: str) -> str:
    """Return the environment variable that sets ``setting`` for the pool named ``pool``."""
    return f"OFFLOAD_{re.sub('[^A-Z0-9]', '_', pool.upper())}_{setting.upper()}"


def _whole(value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError

    if value < minimum:
        raise ValueError

    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError

    if math.isnan(value) or value < 0:
        raise ValueError

    return float(value)


def _positive_seconds(value: object) -> float:
    seconds = _seconds(value)
    if seconds == 0:
        raise ValueError

    return seconds


def _optional_whole(value: object) -> int | None:
    return None if value is None else _whole(value, 0)


def _optional_positive(value: object) -> int | None:
    return None if value is None else _whole(value, 1)


def _start_method(value: object) -> str:
    import multiprocessing

    if value not in multiprocessing.get_all_start_methods():
        raise ValueError

    return str(value)


def _initializer(value: object) -> object:
    if value is not None and not callable(value):
        raise TypeError

    return value


def _initargs(value: object) -> tuple[Any, ...]:
    if not isinstance(value, (tuple, list)):
        raise TypeError

    return tuple(cast("tuple[Any, ...]", value))


# For each setting: how to check an explicit value, what a valid value is (for the message),
# and how to read one from an environment variable's text.
_CHECKS: dict[str, tuple[Callable[[object], Any], str]] = {
    "max_workers": (lambda v: _whole(v, 1), "a whole number of at least 1"),
    "max_pending": (_optional_whole, "a whole number of at least 0, or None for unbounded"),
    "idle_timeout": (_positive_seconds, "a number of seconds greater than 0"),
    "shutdown_timeout": (_seconds, "a number of seconds, 0 or more"),
    "max_tasks_per_worker": (
        _optional_positive,
        "a whole number of at least 1, or None for no limit",
    ),
    "start_method": (_start_method, "one of this platform's start methods: {methods}"),
    "initializer": (_initializer, "a callable, or None"),
    "initargs": (_initargs, "a tuple of arguments"),
}

# Settings that only explicit arguments set (no environment variable can hold a function).
_NOT_FROM_ENVIRONMENT = frozenset({"initializer", "initargs"})


def _wanted(setting: str) -> str:
    wanted = _CHECKS[setting][1]
    if "{methods}" in wanted:
        import multiprocessing

        wanted = wanted.format(methods=", ".join(multiprocessing.get_all_start_methods()))

    return wanted


def _from_text(setting: str, text: str) -> object:
    text = text.strip()
    if setting in ("max_pending", "max_tasks_per_worker") and text.lower() in (
        "",
        "none",
        "unbounded",
    ):
        return None

    if setting == "start_method":
        return text

    if setting in ("max_workers", "max_pending", "max_tasks_per_worker"):
        return int(text)

    return float(text)


def validate(pool: str, fields: tuple[str, ...], settings: Mapping[str, object]) -> dict[str, Any]:
    """Check explicit settings for ``pool``; raise ``ValueError`` naming the bad one."""
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in fields:
            raise ValueError(
                f"{key!r} is not a setting of pool {pool!r}; its settings are: {', '.join(fields)}"
            )

        check = _CHECKS[key][0]
        try:
            checked[key] = check(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{key}={value!r} is not valid for pool {pool!r}: it must be {_wanted(key)}"
            ) from None

    return checked


def resolve(
    pool: str,
    kind: type[PoolSettings],
    defaults: Mapping[str, object],
    explicit: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
) -> PoolSettings:
    """Resolve a pool's settings: ``defaults`` < the environment < ``explicit``.

    Raises:
        ValueError: an environment variable holds a bad value; the message names the
            variable and the value.
    """
    environ = os.environ if environ is None else environ
    values = dict(defaults)
    for field in dataclasses.fields(kind):
        name = env_name(pool, field.name)
        text = environ.get(name)
        if text is None or field.name in _NOT_FROM_ENVIRONMENT:
            continue

        check = _CHECKS[field.name][0]
        try:
            values[field.name] = check(_from_text(field.name, text))
        except (TypeError, ValueError):
            raise ValueError(
                f"environment variable {name}={text!r} is not valid: {field.name} must be "
                f"{_wanted(field.name)}"
            ) from None

    values.update(explicit)
    return kind(**values)  # type: ignore[arg-type]
