"""offload's exceptions.

* OffloadError          root: ``except offload.OffloadError`` catches everything below
  + Overloaded          ``max_pending`` calls already wait; this call was never queued
  + PoolClosed          the pool was closed (``aclose()``, or its event loop's run ended)
  + WorkerCrashed       a worker process died: ``exitcode`` / ``signal``, ``function``
  + SerializationError  ``fn`` or an argument cannot be pickled, and how to fix it

Timeouts raise the built-in ``TimeoutError``; bad settings raise ``ValueError`` naming the
variable.
"""

from __future__ import annotations

import signal as _signal

__all__ = (
    "OffloadError",
    "Overloaded",
    "PoolClosed",
    "SerializationError",
    "WorkerCrashed",
)


class OffloadError(Exception):
    """Root of offload's own errors: ``except offload.OffloadError`` catches them all."""


class Overloaded(OffloadError):
    """The pool's pending queue is full (``max_pending``); the call was never queued.

    Attributes:
        pool: the pool's name.
        max_pending: the bound that was hit.
    """

    def __init__(self, pool: str, max_pending: int) -> None:
        self.pool = pool
        self.max_pending = max_pending
        super().__init__(
            f"pool {pool!r} already has {max_pending} calls waiting for a worker "
            f"(max_pending={max_pending}); this call was not queued. Retry later, shed the "
            f"request upstream, or raise max_pending / max_workers for this pool"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.pool, self.max_pending))


class PoolClosed(OffloadError):
    """The pool was closed for this event loop: ``aclose()`` ran, or the loop's run is ending.

    Attributes:
        pool: the pool's name.
        detail: more about why, if anything.
    """

    def __init__(self, pool: str, detail: str = "") -> None:
        self.pool = pool
        self.detail = detail
        message = (
            f"pool {pool!r} is closed for this event loop (aclose() was called, or the loop's "
            f"run is ending); it starts afresh in the next run"
        )
        if detail:
            message = f"{message}: {detail}"

        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.pool, self.detail))


class WorkerCrashed(OffloadError):
    """A worker process died while it ran this call; the other calls and the pool go on.

    Attributes:
        function: the qualified name of the function that was running.
        pid: the worker's process id.
        exitcode: the worker's exit code, or ``None`` if a signal killed it.
        signal: the signal number that killed the worker, or ``None``.
        starting: True if the worker died while it started, before it ran the call.
    """

    def __init__(
        self,
        function: str,
        pid: int | None,
        exitcode: int | None,
        signal: int | None,
        starting: bool = False,
    ) -> None:
        self.function = function
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        self.starting = starting
        if signal is not None:
            try:
                how = f"was killed by {_signal.Signals(signal).name}"
            except ValueError:
                how = f"was killed by signal {signal}"
        else:
            how = f"exited with code {exitcode}"

        if starting:
            message = (
                f"the worker process (pid {pid}) for {function}() {how} while it started, "
                f"before running anything. Check its stderr: a script that starts workers "
                f'needs the `if __name__ == "__main__":` guard, and the initializer must '
                f"not fail"
            )
        else:
            message = (
                f"the worker process (pid {pid}) running {function}() {how}; only this call "
                f"failed and the pool replaces the worker. Pass retries=N to re-run an "
                f"idempotent function"
            )

        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.function, self.pid, self.exitcode, self.signal, self.starting),
        )


class SerializationError(OffloadError):
    """Something that must cross to a worker process cannot be pickled.

    Attributes:
        what: which part failed: ``"function"``, ``"argument"`` or ``"result"``.
        function: the qualified name of the function.
        reason: what went wrong, as pickle said it.
        fix: how to make it work.
    """

    def __init__(self, what: str, function: str, reason: str, fix: str) -> None:
        self.what = what
        self.function = function
        self.reason = reason
        self.fix = fix
        where = "back from its worker process" if what == "result" else "to a worker process"
        message = f"cannot send the {what} of {function}() {where}: {reason}"
        super().__init__(f"{message}. {fix}" if fix else message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.what, self.function, self.reason, self.fix))
