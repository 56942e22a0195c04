"""Mechanism: worker processes, pickling, kill-and-replace.

Each worker thread of a process pool owns at most one worker process and talks to it over a
pipe: its runner (:class:`_ProcessRunner`) pickles the call, sends it, and waits for the
answer or for the process to die. So a process pool composes the thread layer (its capacity,
queue and idle handling) with a runner per thread, and a dead worker fails exactly the one
call it was running, unlike ``BrokenProcessPool``. How a call reaches its process stays
behind that runner: the loop may own the pipes one day without the pool noticing.

:class:`ProcessWorkers` can also stop a running call, in three steps: notify (the worker's
``offload.cancelled()`` turns True), terminate (SIGTERM) and kill (SIGKILL).

A second, one-way pipe carries control messages to the worker: the number of a call whose
caller asked to stop (``offload.cancelled()`` turns True inside), and, when the parent dies,
end-of-file, on which the worker exits at once.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Generator
from time import perf_counter
from typing import Any

from . import _payloads
from ._child import JOB_NUMBER, FunctionRef, RemoteTraceback, child_main, describe
from ._exceptions import SerializationError, WorkerCrashed
from ._job import Job, refuse_awaitable
from ._options import KILL_GRACE
from ._preload import before_worker_start
from ._settings import PoolSettings, ProcessSettings
from ._threads import ThreadWorkers

__all__ = ("FunctionRef", "ProcessWorkers", "check_picklable_function", "reference")

logger = logging.getLogger("offload")


# Windows has no SIGKILL; there, terminate is as hard as it gets.
_SIGKILL: int = getattr(signal, "SIGKILL", signal.SIGTERM)


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


def _dumps_call(job: Job) -> bytes:
    """Pickle a call for the worker, or raise ``SerializationError`` naming the culprit."""
    fn = reference(job.fn)
    try:
        return _payloads.dumps_call((fn, job.args, job.kwargs))
    except Exception as exc:  # find the part that failed, to say so
        error = exc

    name = job.name
    try:
        _payloads.check(fn)
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
            _payloads.check(value)
        except Exception as exc:
            raise SerializationError(
                "argument",
                name,
                f"{label} ({describe(value)}) cannot be pickled: {type(exc).__name__}: {exc}",
                "pass plain data that pickles (a path, a URL, settings), and open files, "
                "sockets, locks or connections inside the worker (or in initializer=)",
            ) from exc

    raise SerializationError("call", name, f"{type(error).__name__}: {error}", "") from error


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

    def notify(self, number: int) -> None:
        """Tell the worker that call ``number``'s caller stopped waiting."""
        try:
            self.control.send_bytes(JOB_NUMBER.pack(number))
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
        _payloads.sweep_worker(self.pid)  # segments of an answer it never sent
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
    # The loop thread sets job.caller_gone at any time; a function call keeps type checkers
    # from narrowing the attribute to the value it had when last read.
    return job.caller_gone


class _ProcessRunner:
    """Runs the calls of one worker thread in the worker process that thread owns."""

    __slots__ = ("job", "lock", "number", "process", "workers")

    def __init__(self, workers: ProcessWorkers) -> None:
        self.workers = workers
        self.process: _Process | None = None
        # The call running in ``process`` now (None: none), and its number. This thread
        # sets and clears them, and the stop actions read them, under ``lock``: a kill meant
        # for one call must never hit the next call on the same worker.
        self.job: Job | None = None
        self.number = 0
        self.lock = threading.Lock()

    def close(self) -> None:
        """The thread is about to exit: stop its process."""
        process = self.process
        if process is not None:
            self.process = None
            process.stop()

    def run(self, job: Job) -> None:
        if job.caller_gone:
            return

        if inspect.iscoroutinefunction(job.fn):  # refused before any process is used
            job.error = refuse_awaitable(job.fn, None)
            return

        try:
            payload = _dumps_call(job)
        except SerializationError as exc:
            job.error = exc
            return

        workers = self.workers
        number = workers.next_number()
        message = JOB_NUMBER.pack(number) + payload
        del payload
        retries = 0 if job.options is None else job.options.retries
        tries = 0
        running = workers.running
        try:
            while True:
                answer = self._send(job, number, message, running)
                if answer is None:
                    return

                if isinstance(answer, bytes):
                    break

                if tries < retries:
                    tries += 1
                    logger.warning(
                        "pool %r: the worker process (pid %s) running %s() died (exit code "
                        "%s, signal %s); running it again on a fresh worker (retry %d of %d)",
                        workers.pool,
                        answer.pid,
                        job.name,
                        answer.exitcode,
                        answer.signal,
                        tries,
                        retries,
                    )
                    continue

                job.error = answer
                return
        finally:
            running.pop(job, None)
            _payloads.release(message, JOB_NUMBER.size)  # the arguments' segments

        self._read(job, answer)

    def _send(
        self, job: Job, number: int, message: bytes, running: dict[Job, _ProcessRunner]
    ) -> bytes | WorkerCrashed | None:
        """Send the call to this thread's process (started if need be) and wait.

        Returns:
            The answer; or the crash of a process that died under a call that may run
            again; or None when the outcome is set already (a start failed, the caller is
            gone, or the process was killed under it).
        """
        process = self.process
        if process is not None and process.killed:
            # A kill that landed as its call finished: this worker is on its way out.
            self.process = None
            process.stop()
            process = None

        if process is None:
            try:
                process = self.process = self.workers.start_process(job.name)
            except BaseException as exc:
                job.error = exc
                return None

        with self.lock:
            # The stop actions see job.caller_gone first, then look at this runner under
            # this lock: either they see this call running and stop it, or we see the flag
            # here and never send it.
            if _gone(job):
                return None

            self.job = job
            self.number = number
            running[job] = self

        job.started = perf_counter()
        try:
            process.conn.send_bytes(message)
            answer = process.conn.recv_bytes()
        except (EOFError, OSError):
            job.ended = perf_counter()
            with self.lock:
                self.job = None

            self.process = None
            crash = process.crashed(job.name)
            if job.caller_gone or process.killed:
                job.error = crash
                return None

            return crash

        job.ended = perf_counter()
        with self.lock:
            self.job = None

        return answer

    def _read(self, job: Job, answer: bytes) -> None:
        """Fill in the job's outcome from the worker's answer."""
        try:
            _, ok, value = _payloads.loads_result(answer)
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

        process = self.process
        if process is None:
            return

        process.calls += 1
        limit = self.workers.max_tasks_per_worker
        if limit is not None and process.calls >= limit:
            self.process = None
            process.stop()


class ProcessWorkers:
    """The worker processes of one pool in one event loop: one per worker thread.

    The threads, their queue and the pending bound are a :class:`ThreadWorkers`; each
    thread's runner owns a process. Stopping a running call is this kind's own capability
    (:meth:`notify`, :meth:`terminate`, :meth:`kill`).
    """

    def __init__(
        self,
        pool: str,
        deliver: Callable[[Job], None],
        max_workers: int,
        idle_timeout: float,
        start_method: str,
        max_tasks_per_worker: int | None,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        self.pool = pool
        self._context = multiprocessing.get_context(start_method)
        self.max_tasks_per_worker = max_tasks_per_worker
        self._initializer = initializer
        self._initargs = initargs
        self._numbers_lock = threading.Lock()
        self._next_number = 0
        self.running: dict[Job, _ProcessRunner] = {}  # calls sent to a process, by job
        self._threads = threads = ThreadWorkers(
            pool, deliver, max_workers, idle_timeout, self._new_runner
        )
        self.queue = threads.queue
        self.submit = threads.submit
        self.withdraw = threads.withdraw
        self.withdraw_all = threads.withdraw_all
        self.gauges = threads.gauges
        self.shutdown = threads.shutdown

    def _new_runner(self) -> _ProcessRunner:
        return _ProcessRunner(self)

    def reconfigure(self, settings: PoolSettings) -> None:
        """Apply new settings: sizes at once, the rest to worker processes that start next."""
        assert isinstance(settings, ProcessSettings)
        self._context = multiprocessing.get_context(settings.start_method)
        self.max_tasks_per_worker = settings.max_tasks_per_worker
        self._initializer = settings.initializer
        self._initargs = settings.initargs
        self._threads.reconfigure(settings)

    def next_number(self) -> int:
        """Number a call, for the notices that tell a worker to stop it."""
        with self._numbers_lock:
            self._next_number += 1
            return self._next_number

    def start_process(self, function: str) -> _Process:
        """Start a worker process and wait until its initializer ran."""
        before_worker_start(self._context)
        process = _Process(self._context, self.pool, self._initializer, self._initargs)
        try:
            process.wait_ready(function)
        except BaseException:
            process.stop()
            raise

        return process

    # -- stopping a running call (set job.caller_gone first) -------------------------------

    def notify(self, job: Job) -> None:
        """Tell the process running ``job`` that its caller is gone (``offload.cancelled()``)."""
        runner = self.running.get(job)
        if runner is None:
            return  # not sent yet (the runner sees job.caller_gone), or done

        with runner.lock:
            process = runner.process
            if runner.job is job and process is not None:
                process.notify(runner.number)

    def terminate(self, job: Job) -> None:
        """SIGTERM the process running ``job``, if it still runs it."""
        runner = self.running.get(job)
        if runner is None:
            return

        with runner.lock:
            process = runner.process
            if runner.job is job and process is not None:
                process.kill(signal.SIGTERM)

    def kill(self, job: Job) -> None:
        """SIGKILL the process running ``job`` if SIGTERM did not end it."""
        runner = self.running.get(job)
        if runner is None:
            return

        with runner.lock:
            process = runner.process
            if runner.job is job and process is not None and process.killed and process.alive():
                process.kill(_SIGKILL)
