"""The options of one decorated function: ``limit``, ``timeout``, ``cancel``, ``retries``,
``grace``, checked by the same checkers (and in the same words) as the pool settings."""

from __future__ import annotations

from typing import Any

from ._settings import (
    OPTIONAL_POSITIVE_SECONDS,
    OPTIONAL_WHOLE_AT_LEAST_1,
    SECONDS,
    WHOLE_AT_LEAST_0,
    Setting,
)

__all__ = ("KILL_GRACE", "Options", "check_options")

# Grace between SIGTERM and SIGKILL when a running call is cancelled or a pool closes.
KILL_GRACE = 1.0


class Options:
    """The options of one decorated function (or of ad hoc calls, all defaults)."""

    __slots__ = ("__weakref__", "cancel", "grace", "limit", "retries", "timeout")

    def __init__(
        self,
        limit: int | None,
        timeout: float | None,
        cancel: str,
        retries: int = 0,
        grace: float = KILL_GRACE,
    ) -> None:
        self.limit = limit
        self.timeout = timeout
        self.cancel = cancel
        self.retries = retries  # re-runs on a fresh worker after a worker process crashed
        self.grace = grace


def _checked(name: str, value: object, setting: Setting) -> Any:
    try:
        return setting.check(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}={value!r} is not valid: it must be {setting.explain()}"
        ) from None


def check_options(
    pool: str,
    limit: object,
    timeout: object,
    cancel: object,
    policies: tuple[str, ...],
    retries: object = 0,
    grace: object = KILL_GRACE,
) -> Options:
    """Check a decorated function's options against what the pool allows.

    Raises:
        ValueError: an option is not valid; the message says what it must be.
    """
    checked_limit = _checked("limit", limit, OPTIONAL_WHOLE_AT_LEAST_1)
    checked_timeout = _checked("timeout", timeout, OPTIONAL_POSITIVE_SECONDS)
    if cancel not in policies:
        raise ValueError(
            f"cancel={cancel!r} is not a cancellation policy of pool {pool!r}: use one of "
            f"{', '.join(map(repr, policies))}"
        )

    checked_retries = _checked("retries", retries, WHOLE_AT_LEAST_0)
    checked_grace = _checked("grace", grace, SECONDS)
    return Options(
        checked_limit,
        checked_timeout,
        str(cancel),
        checked_retries,
        checked_grace,
    )
