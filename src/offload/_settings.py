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
    "OPTIONAL_POSITIVE_SECONDS",
    "OPTIONAL_WHOLE_AT_LEAST_1",
    "SECONDS",
    "WHOLE_AT_LEAST_0",
    "check_min_workers",
    "PoolSettings",
    "ProcessOptions",
    "ProcessSettings",
    "ThreadOptions",
    "Setting",
    "ThreadSettings",
    "ExecutorOptions",
    "ExecutorSettings",
    "default_start_method",
    "env_name",
    "resolve",
    "setting_of",
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


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """What one setting accepts: its check, the words for a valid value, its environment text.

    Each setting is defined once, as a field of :class:`PoolSettings` (or a subclass) whose
    metadata holds its ``Setting``: explicit values and environment variables are checked
    by it, and error messages say what it wants. (The ``TypedDict`` s of keyword arguments
    repeat the names and types for type checkers; a test holds them equal.)
    """

    check: Callable[[object], Any]  # returns the value to keep; TypeError/ValueError if bad
    wanted: str  # "it must be ..."
    parse: Callable[[str], object] | None = None  # environment text -> value; None: not read

    def explain(self) -> str:
        """Return what a valid value is, for an error message."""
        if "{methods}" in self.wanted:
            import multiprocessing

            return self.wanted.format(methods=", ".join(multiprocessing.get_all_start_methods()))

        return self.wanted

    @property
    def meta(self) -> dict[str, Setting]:
        """The metadata of the dataclass field that this setting defines."""
        return {"setting": self}


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


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    def optional(value: object) -> Any:
        return None if value is None else check(value)

    return optional


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


def _text_or_none(parse: Callable[[str], object]) -> Callable[[str], object]:
    def parse_optional(text: str) -> object:
        return None if text.lower() in ("", "none", "unbounded") else parse(text)

    return parse_optional


WHOLE_AT_LEAST_1 = Setting(lambda v: _whole(v, 1), "a whole number of at least 1", int)
WHOLE_AT_LEAST_0 = Setting(lambda v: _whole(v, 0), "a whole number, 0 or more", int)
OPTIONAL_WHOLE_AT_LEAST_1 = Setting(
    _optional(WHOLE_AT_LEAST_1.check),
    "a whole number of at least 1, or None for no limit",
    _text_or_none(int),
)
SECONDS = Setting(_seconds, "a number of seconds, 0 or more", float)
POSITIVE_SECONDS = Setting(_positive_seconds, "a number of seconds greater than 0", float)
OPTIONAL_POSITIVE_SECONDS = Setting(
    _optional(_positive_seconds), "a number of seconds greater than 0, or None", None
)


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
        initializer: called as ``initializer(*initargs)`` once in each new worker, thread or
            process, before its first call: a thread can open a connection that is bound to
            it. If it raises, the call that started the worker fails with that exception and
            the worker exits; the next call starts a fresh one.
        initargs: the arguments of ``initializer``.
    """

    max_workers: int = dataclasses.field(metadata=WHOLE_AT_LEAST_1.meta)
    max_pending: int | None = dataclasses.field(
        default=None,
        metadata=Setting(
            _optional(WHOLE_AT_LEAST_0.check),
            "a whole number of at least 0, or None for unbounded",
            _text_or_none(int),
        ).meta,
    )
    idle_timeout: float = dataclasses.field(default=10.0, metadata=POSITIVE_SECONDS.meta)
    shutdown_timeout: float = dataclasses.field(default=10.0, metadata=SECONDS.meta)
    # A function cannot come from an environment variable: these two are explicit only.
    initializer: Callable[..., object] | None = dataclasses.field(
        default=None, metadata=Setting(_initializer, "a callable, or None").meta
    )
    initargs: tuple[Any, ...] = dataclasses.field(
        default=(), metadata=Setting(_initargs, "a tuple of arguments").meta
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadSettings(PoolSettings):
    """The settings of a :class:`~offload.ThreadPool`."""


def default_start_method() -> str:
    """Return ``forkserver`` where the platform has it, else ``spawn``."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


_START_METHOD = Setting(_start_method, "one of this platform's start methods: {methods}", str)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSettings(PoolSettings):
    """The settings of a :class:`~offload.ProcessPool`.

    Attributes:
        min_workers: worker processes kept started, even idle (default 0), so that a call
            never waits for a process to boot; at most ``max_workers``.
        max_tasks_per_worker: a worker process exits after this many calls and a fresh one
            replaces it (``None``, the default: never).
        start_method: how worker processes start: ``forkserver`` (the default where
            available), ``spawn`` or ``fork``.
    """

    min_workers: int = dataclasses.field(default=0, metadata=WHOLE_AT_LEAST_0.meta)
    max_tasks_per_worker: int | None = dataclasses.field(
        default=None, metadata=OPTIONAL_WHOLE_AT_LEAST_1.meta
    )
    start_method: str = dataclasses.field(
        default_factory=default_start_method, metadata=_START_METHOD.meta
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutorSettings(PoolSettings):
    """The settings of an :class:`~offload.ExecutorPool`.

    ``max_workers`` defaults to the executor's own size where it tells it. ``idle_timeout``
    does not apply: the executor starts and stops its workers itself.
    """


class ThreadOptions(TypedDict, total=False):
    """Keyword arguments that set a thread pool's settings (see :class:`PoolSettings`)."""

    max_workers: int
    max_pending: int | None
    idle_timeout: float
    shutdown_timeout: float
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]


class ProcessOptions(TypedDict, total=False):
    """Keyword arguments that set a process pool's settings (see :class:`ProcessSettings`)."""

    max_workers: int
    max_pending: int | None
    idle_timeout: float
    shutdown_timeout: float
    min_workers: int
    max_tasks_per_worker: int | None
    start_method: str
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]


class ExecutorOptions(TypedDict, total=False):
    """Keyword arguments that set an executor pool's settings (see :class:`ExecutorSettings`)."""

    max_workers: int
    max_pending: int | None
    shutdown_timeout: float


def check_min_workers(min_workers: int, max_workers: int, pool: str | None = None) -> None:
    """Refuse more processes kept started than a pool may have.

    Raises:
        ValueError: ``min_workers`` is more than ``max_workers``.
    """
    if min_workers > max_workers:
        where = "" if pool is None else f" for pool {pool!r}"
        raise ValueError(
            f"min_workers={min_workers} is more than max_workers={max_workers}{where}: a pool "
            f"keeps at most max_workers processes started; lower min_workers or raise "
            f"max_workers"
        )


def setting_of(field: dataclasses.Field[Any]) -> Setting:
    """Return the :class:`Setting` a settings field carries."""
    return cast(Setting, field.metadata["setting"])


# Every setting of every pool kind, by name (the widest kind holds them all).
_SETTINGS: dict[str, Setting] = {
    field.name: setting_of(field) for field in dataclasses.fields(ProcessSettings)
}


def env_name(pool: str, setting: str) -> str:
    """Return the environment variable that sets ``setting`` for the pool named ``pool``."""
    return f"OFFLOAD_{re.sub('[^A-Z0-9]', '_', pool.upper())}_{setting.upper()}"


def validate(pool: str, fields: tuple[str, ...], settings: Mapping[str, object]) -> dict[str, Any]:
    """Check explicit settings for ``pool``; raise ``ValueError`` naming the bad one."""
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in fields:
            raise ValueError(
                f"{key!r} is not a setting of pool {pool!r}; its settings are: {', '.join(fields)}"
            )

        setting = _SETTINGS[key]
        try:
            checked[key] = setting.check(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{key}={value!r} is not valid for pool {pool!r}: it must be {setting.explain()}"
            ) from None

    if "min_workers" in checked and "max_workers" in checked:
        check_min_workers(checked["min_workers"], checked["max_workers"], pool)

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
        setting = setting_of(field)
        name = env_name(pool, field.name)
        text = environ.get(name)
        if text is None or setting.parse is None:
            continue

        try:
            values[field.name] = setting.check(setting.parse(text.strip()))
        except (TypeError, ValueError):
            raise ValueError(
                f"environment variable {name}={text!r} is not valid: {field.name} must be "
                f"{setting.explain()}"
            ) from None

    values.update(explicit)
    if explicit and "min_workers" in values:
        check_min_workers(values["min_workers"], values["max_workers"], pool)  # type: ignore[arg-type]

    return kind(**values)  # type: ignore[arg-type]
