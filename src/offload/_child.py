"""The worker process's side of a process pool: read a call, run it, send its outcome.

What crosses the pipe: a call number and the pickled ``(function, args, kwargs)``, the
function by reference (:class:`FunctionRef`) when offload decorated it; back, the pickled
``(number, ok, value)``. A second, one-way pipe carries the number of a call whose caller
stopped waiting, and end-of-file when the parent is gone.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing.connection
import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, cast

from . import _payloads
from ._exceptions import SerializationError
from ._job import ProcessCallState, refuse_awaitable

__all__ = ("JOB_NUMBER", "PROTOCOL", "FunctionRef", "RemoteTraceback", "child_main", "describe")

PROTOCOL = pickle.HIGHEST_PROTOCOL
JOB_NUMBER = struct.Struct("!Q")


class FunctionRef:
    """A module-level function decorated by offload, sent by its import path.

    The name in its module is the async wrapper, so the worker looks the name up and runs the
    original function the wrapper keeps in ``__offload_target__``.
    """

    __slots__ = ("module", "qualname")

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname

    def __reduce__(self) -> tuple[object, ...]:
        return (FunctionRef, (self.module, self.qualname))

    @property
    def offload_name(self) -> str:
        """The function's qualified name, for messages."""
        return self.qualname

    def resolve(self) -> Callable[..., Any]:
        target: Any = sys.modules.get(self.module) or importlib.import_module(self.module)
        for part in self.qualname.split("."):
            namespace = getattr(target, "__dict__", {})
            target = namespace[part] if part in namespace else getattr(target, part)

        if isinstance(target, (staticmethod, classmethod)):
            target = cast(Any, target).__func__

        return getattr(target, "__offload_target__", target)  # type: ignore[no-any-return]


def describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class RemoteError(Exception):
    """Stands for an exception from a worker process that could not be pickled back."""


# -- the worker process -----------------------------------------------------------------------


def _watch_control(control: multiprocessing.connection.Connection) -> None:
    while True:
        try:
            data = control.recv_bytes()
        except (EOFError, OSError):
            # The parent is gone (or closed the pool): nothing will read our results.
            os._exit(0)

        (ProcessCallState.told_to_stop,) = JOB_NUMBER.unpack(data)


def _pack_outcome(number: int, ok: bool, value: Any, name: str) -> bytes:
    """Pickle a call's outcome; what cannot be pickled is replaced by an error saying so."""
    try:
        return _payloads.dumps_result((number, ok, value))
    except Exception as exc:
        if ok:
            error: BaseException = SerializationError(
                "result",
                name,
                f"the result ({describe(value)}) cannot be pickled: {type(exc).__name__}: {exc}",
                "return plain data that pickles (numbers, strings, bytes, lists, dicts, "
                "dataclasses of those)",
            )
            return pickle.dumps((number, False, (error, "")), PROTOCOL)

        original, text = value
        error = RemoteError(f"{type(original).__qualname__}: {original}")
        return pickle.dumps((number, False, (error, text)), PROTOCOL)


def child_main(
    conn: multiprocessing.connection.Connection,
    control: multiprocessing.connection.Connection,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    """The worker process: run calls from ``conn`` until it closes."""
    # Ctrl+C reaches the whole process group; the parent decides what to cancel.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_control, args=(control,), daemon=True).start()
    ProcessCallState.active = True
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            text = traceback.format_exc()
            with contextlib.suppress(OSError):
                conn.send_bytes(_pack_outcome(0, False, (exc, text), "initializer"))

            return

    try:
        conn.send_bytes(_pack_outcome(0, True, os.getpid(), "start"))
    except OSError:  # the pool closed while this worker (a spare) started: nobody needs it
        return

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return

        number, payload = data[: JOB_NUMBER.size], data[JOB_NUMBER.size :]
        (number,) = JOB_NUMBER.unpack(number)
        name = "call"
        ProcessCallState.current = number
        try:
            ref, args, kwargs = _payloads.loads_call(payload)
            fn = ref.resolve() if isinstance(ref, FunctionRef) else ref
            name = getattr(fn, "__qualname__", name)
            result = fn(*args, **kwargs)
            if hasattr(result, "__await__"):
                raise refuse_awaitable(fn, result)

            outcome = _pack_outcome(number, True, result, name)
            del result
        except BaseException as exc:
            outcome = _pack_outcome(number, False, (exc, traceback.format_exc()), name)
        finally:
            ProcessCallState.current = 0

        del data, payload
        conn.send_bytes(outcome)
        del outcome
