"""Mechanism: worker processes, pickling, kill-and-replace.

Each worker thread of a process pool owns at most one worker process and talks to it over a
pipe: it pickles the call, sends it, and waits for the answer or for the process to die. So
a process pool reuses the thread pool's capacity, queue and idle handling, and a dead worker
fails exactly the one call it was running, unlike ``BrokenProcessPool``.

A second, one-way pipe carries control messages to the worker: the number of a call whose
caller asked to stop (``offload.cancelled()`` turns True inside), and, when the parent dies,
end-of-file, on which the worker exits at once.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Generator
from time import perf_counter
from typing import Any, cast

from ._exceptions import SerializationError, WorkerCrashed
from ._job import Job, ProcessCallState, refuse_awaitable
from ._settings import PoolSettings, ProcessSettings
from ._threads import ThreadWorkers, _Worker

__all__ = ("KILL_GRACE", "ProcessWorkers", "check_picklable_function", "reference")

logger = logging.getLogger("offload")

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_JOB_NUMBER = struct.Struct("!Q")

# Windows has no SIGKILL; there, terminate is as hard as it gets.
_SIGKILL: int = getattr(signal, "SIGKILL", signal.SIGTERM)

# Grace between SIGTERM and SIGKILL when a running call is cancelled or a pool closes.
KILL_GRACE = 1.0


# -- what crosses to the worker ---------------------------------------------------------------


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


def reference(fn: Callable[..., Any]) -> object:
    """Return what to pickle for ``fn``: an offload wrapper goes by name, others as they are."""
    if hasattr(fn, "__offload_target__"):
        return FunctionRef(fn.__module__, fn.__qualname__)

    return fn


def check_picklable_function(fn: Callable[..., Any], pool: str) -> None:
    """Refuse, at decoration time, a function that a worker process could not import.

    Raises:
        SerializationError: ``fn`` is a lambda or a local function.
    """
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        kind = "a lambda" if "<lambda>" in qualname else "a function defined inside a function"
        raise SerializationError(
            "function",
            qualname,
            f"it is {kind}, and a worker process can only import module-level functions",
            f"define it with def at the top level of a module to run it in pool {pool!r}, "
            f"or run it in a thread pool (@offload.thread) instead",
        )


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _dumps_call(job: Job) -> bytes:
    """Pickle a call for the worker, or raise ``SerializationError`` naming the culprit."""
    fn = reference(job.fn)
    try:
        return pickle.dumps((fn, job.args, job.kwargs), _PROTOCOL)
    except Exception as exc:  # find the part that failed, to say so
        error = exc

    name = job.name
    try:
        pickle.dumps(fn, _PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            "function",
            name,
            f"{type(exc).__name__}: {exc}",
            "send a module-level function (def at the top of a module, not a lambda, a local "
            "function or a callable object holding unpicklable state)",
        ) from exc

    parts = [(f"argument {i}", a) for i, a in enumerate(job.args)]
    parts += [(f"argument {k}=", v) for k, v in job.kwargs.items()]
    for label, value in parts:
        try:
            pickle.dumps(value, _PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                "argument",
                name,
                f"{label} ({_describe(value)}) cannot be pickled: {type(exc).__name__}: {exc}",
                "pass plain data that pickles (a path, a URL, settings), and open files, "
                "sockets, locks or connections inside the worker (or in initializer=)",
            ) from exc

    raise SerializationError("call", name, f"{type(error).__name__}: {error}", "") from error


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

        (ProcessCallState.cancelled,) = _JOB_NUMBER.unpack(data)


def _pack_outcome(number: int, ok: bool, value: Any, name: str) -> bytes:
    """Pickle a call's outcome; what cannot be pickled is replaced by an error saying so."""
    try:
        return pickle.dumps((number, ok, value), _PROTOCOL)
    except Exception as exc:
        if ok:
            error: BaseException = SerializationError(
                "result",
                name,
                f"the result ({_describe(value)}) cannot be pickled: {type(exc).__name__}: {exc}",
                "return plain data that pickles (numbers, strings, bytes, lists, dicts, "
                "dataclasses of those)",
            )
            return pickle.dumps((number, False, (error, "")), _PROTOCOL)

        original, text = value
        error = RemoteError(f"{type(original).__qualname__}: {original}")
        return pickle.dumps((number, False, (error, text)), _PROTOCOL)


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
            conn.send_bytes(_pack_outcome(0, False, (exc, text), "initializer"))
            return

    conn.send_bytes(_pack_outcome(0, True, os.getpid(), "start"))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return

        number, payload = data[: _JOB_NUMBER.size], data[_JOB_NUMBER.size :]
        (number,) = _JOB_NUMBER.unpack(number)
        name = "call"
        ProcessCallState.current = number
        try:
            ref, args, kwargs = pickle.loads(payload)
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


# -- the parent's side ------------------------------------------------------------------------

_main_lock = threading.Lock()
_main_hidden = False  # a thread has hidden ``__main__.__file__`` while it starts a worker


@contextlib.contextmanager
def _main_path_checked() -> Generator[None, None, None]:
    """Hide ``__main__.__file__`` from multiprocessing while it names no file.

    A ``spawn`` or ``forkserver`` child re-runs the parent's main script from that path, and
    fails to start when it does not exist, as some launchers set it (anyio issue #696).
    anyio's workers skip such a path; multiprocessing reads it from the module, so it is
    hidden while the worker starts, and put back. Worker threads that start processes at the
    same time take turns only then.
    """
    global _main_hidden
    main = sys.modules.get("__main__")
    if main is None or getattr(main.__spec__, "name", None) is not None:  # ``-m``: by name
        yield
        return

    path = getattr(main, "__file__", None)
    if (path is None and not _main_hidden) or (isinstance(path, str) and os.path.isfile(path)):
        yield  # no script (``-c``, a notebook), or one that exists: the common cases
        return

    with _main_lock:
        path = getattr(main, "__file__", None)
        hide = isinstance(path, str) and not os.path.isfile(path)
        if hide:
            _main_hidden = True
            del main.__file__

        try:
            yield
        finally:
            if hide:
                main.__file__ = path
                _main_hidden = False


class _Process:
    """The parent's handle on one worker process."""

    def __init__(
        self,
        context: Any,
        pool: str,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        conn, child_conn = context.Pipe(duplex=True)
        control_reader, control = context.Pipe(duplex=False)
        self.process = context.Process(
            target=child_main,
            args=(child_conn, control_reader, initializer, initargs),
            name=f"offload-{pool}-process",
        )
        with _main_path_checked():
            self.process.start()

        child_conn.close()
        control_reader.close()
        self.conn: multiprocessing.connection.Connection = conn
        self.control: multiprocessing.connection.Connection = control
        self.pid: int = self.process.pid
        self.calls = 0
        self.killed = False
        self.closed = False
        # The number of the call running in this worker now (0: none). The owning thread
        # sets and clears it, and interrupt() reads it, under ``lock``: a kill meant for
        # one call must never hit the next call on the same worker.
        self.current = 0
        self.lock = threading.Lock()

    def wait_ready(self, function: str) -> None:
        """Wait for the worker's start (its initializer); raise what the initializer raised."""
        try:
            _, ok, value = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            raise self.crashed(function, starting=True) from None

        if not ok:
            error, text = value
            error.__cause__ = RemoteTraceback(text)
            self.stop()
            raise error

    def crashed(self, function: str, starting: bool = False) -> WorkerCrashed:
        """Reap the dead worker and describe how it died."""
        self.process.join(KILL_GRACE)
        if self.process.exitcode is None:  # closed its end of the pipe, yet runs on
            self.kill(_SIGKILL)
            self.process.join()

        code = self.process.exitcode
        self.close()
        if code is not None and code < 0:
            return WorkerCrashed(function, self.pid, None, -code, starting)

        return WorkerCrashed(function, self.pid, code, None, starting)

    def notify_cancelled(self, number: int) -> None:
        """Tell the worker that call ``number``'s caller asked to stop (under ``lock``)."""
        try:
            self.control.send_bytes(_JOB_NUMBER.pack(number))
        except (OSError, ValueError):  # gone already
            pass

    def kill(self, sig: int) -> None:
        self.killed = True
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def alive(self) -> bool:
        return self.process.exitcode is None

    def stop(self) -> None:
        """Let the worker exit (end of its input), then make sure it is gone."""
        if self.closed:
            return

        try:
            self.conn.close()
        except OSError:
            pass

        self.process.join(KILL_GRACE)
        if self.process.exitcode is None:
            self.kill(signal.SIGTERM)
            self.process.join(KILL_GRACE)

        if self.process.exitcode is None:
            self.kill(_SIGKILL)
            self.process.join()

        self.close()

    def close(self) -> None:
        self.closed = True
        for conn in (self.conn, self.control):
            try:
                conn.close()
            except OSError:
                pass

        try:
            self.process.close()
        except ValueError:  # still running: stop() kills it first
            pass


def _gone(job: Job) -> bool:
    # The loop thread sets job.cancelled at any time; a function call keeps type checkers
    # from narrowing the attribute to the value it had when last read.
    return job.cancelled


class ProcessWorkers(ThreadWorkers):
    """The worker processes of one pool in one event loop: one per worker thread."""

    def __init__(
        self,
        pool: str,
        post: Callable[[Job], None],
        max_workers: int,
        idle_timeout: float,
        start_method: str,
        max_tasks_per_worker: int | None,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        super().__init__(pool, post, max_workers, idle_timeout)
        self._context = multiprocessing.get_context(start_method)
        self.max_tasks_per_worker = max_tasks_per_worker
        self._initializer = initializer
        self._initargs = initargs
        self._numbers_lock = threading.Lock()
        self._next_number = 0

    def reconfigure(self, settings: PoolSettings) -> None:
        """Apply new settings: sizes at once, the rest to worker processes that start next."""
        assert isinstance(settings, ProcessSettings)
        self._context = multiprocessing.get_context(settings.start_method)
        self.max_tasks_per_worker = settings.max_tasks_per_worker
        self._initializer = settings.initializer
        self._initargs = settings.initargs
        super().reconfigure(settings)

    def _number(self) -> int:
        with self._numbers_lock:
            self._next_number += 1
            return self._next_number

    def _start_process(self, function: str) -> _Process:
        process = _Process(self._context, self._pool, self._initializer, self._initargs)
        try:
            process.wait_ready(function)
        except BaseException:
            process.stop()
            raise

        return process

    def _execute(self, me: _Worker, job: Job) -> None:
        if job.cancelled:
            return

        if inspect.iscoroutinefunction(job.fn):  # refused before any process is used
            job.error = refuse_awaitable(job.fn, None)
            return

        try:
            payload = _dumps_call(job)
        except SerializationError as exc:
            job.error = exc
            return

        job.number = number = self._number()
        message = _JOB_NUMBER.pack(number) + payload
        del payload
        tries = 0
        while True:
            process: _Process | None = me.process
            if process is not None and process.killed:
                # A kill that landed as its call finished: this worker is on its way out.
                me.process = None
                process.stop()
                process = None

            if process is None:
                try:
                    process = me.process = self._start_process(job.name)
                except BaseException as exc:
                    job.error = exc
                    return

            job.worker = process
            with process.lock:
                # interrupt() sets job.cancelled first, then looks at process.current under
                # this lock: either it sees this call running and kills it, or we see the
                # flag here and never send it.
                if _gone(job):
                    return

                process.current = number

            job.started = perf_counter()
            try:
                process.conn.send_bytes(message)
                answer = process.conn.recv_bytes()
            except (EOFError, OSError):
                job.ended = perf_counter()
                with process.lock:
                    process.current = 0

                me.process = None
                crash = process.crashed(job.name)
                if job.cancelled or process.killed:
                    job.error = crash
                    return

                if tries < job.retries:
                    tries += 1
                    logger.warning(
                        "pool %r: the worker process (pid %s) running %s() died (exit code "
                        "%s, signal %s); running it again on a fresh worker (retry %d of %d)",
                        self._pool,
                        crash.pid,
                        job.name,
                        crash.exitcode,
                        crash.signal,
                        tries,
                        job.retries,
                    )
                    continue

                job.error = crash
                return

            job.ended = perf_counter()
            with process.lock:
                process.current = 0

            break

        try:
            _, ok, value = pickle.loads(answer)
        except Exception as exc:
            job.error = SerializationError(
                "result",
                job.name,
                f"the result could not be unpickled here: {type(exc).__name__}: {exc}",
                "return plain data whose classes the parent process can import",
            )
        else:
            if ok:
                job.value = value
                job.ok = True
            else:
                error, text = value
                if text:
                    error.__cause__ = RemoteTraceback(text)

                job.error = error

        process.calls += 1
        if self.max_tasks_per_worker is not None and process.calls >= self.max_tasks_per_worker:
            me.process = None
            process.stop()

    def _on_exit(self, me: _Worker) -> None:
        process: _Process | None = me.process
        if process is not None:
            me.process = None
            process.stop()

    def interrupt(self, job: Job, kill: bool) -> None:
        """The caller of a running ``job`` is gone: kill its worker, or tell it to stop."""
        process: _Process | None = job.worker
        if process is None:
            return  # not sent yet: the thread sees job.cancelled before it sends

        with process.lock:
            if process.current != job.number:
                return  # not sent yet, or done already: nothing to stop

            if kill:
                process.kill(signal.SIGTERM)
            else:
                process.notify_cancelled(job.number)

    def escalate(self, job: Job) -> None:
        """SIGKILL the worker of ``job`` if SIGTERM did not end it."""
        process: _Process | None = job.worker
        if process is None:
            return

        with process.lock:
            if process.killed and process.current == job.number and process.alive():
                process.kill(_SIGKILL)
