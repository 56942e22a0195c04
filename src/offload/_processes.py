"""Mechanism: worker processes, pickling, kill-and-replace.

The event loop owns the worker pipes. Each worker process has a duplex pipe whose parent end
is non-blocking and watched by the loop (``add_reader`` on asyncio and uvloop, a
``wait_readable`` task on trio): a call is pickled and written from the loop thread, and the
answer is read and handed to the delivery callback there, with no thread in between. A thread
is only used for what would block the loop: starting a process, pickling a call that carries
a big buffer and unpickling an answer that names shared memory (the pool's helper thread), and
writing a call bigger than the pipe's buffer (a writer thread for the rest).

:class:`ProcessWorkers` keeps the queue (:class:`JobQueue`: the pending bound, ``busy``), the
processes (starting, idle, running a call, dying), and hands each finished call to
``deliver``. A dead worker fails exactly the one call it was running (or runs it again on a
fresh process, for ``retries``), unlike ``BrokenProcessPool``. A worker that is killed or
crashes is replaced at once, in the background, so the next call finds a process started;
``min_workers`` processes are kept started, and idle ones above that exit after
``idle_timeout``.

:class:`ProcessWorkers` can also stop a running call, in three steps: notify (the worker's
``offload.cancelled()`` turns True), terminate (SIGTERM) and kill (SIGKILL).

A second, one-way pipe carries control messages to the worker: the number of a call whose
caller asked to stop (``offload.cancelled()`` turns True inside), and, when the parent dies,
end-of-file, on which the worker exits at once.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import signal
import struct
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator
from queue import SimpleQueue
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from . import _payloads
from ._child import JOB_NUMBER, FunctionRef, RemoteTraceback, child_main, describe
from ._exceptions import SerializationError, WorkerCrashed
from ._job import Job, refuse_awaitable
from ._options import KILL_GRACE
from ._preload import before_worker_start
from ._queue import JobQueue
from ._settings import PoolSettings, ProcessSettings, check_min_workers

if TYPE_CHECKING:
    from ._backends import Loop

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


# Multiprocessing's framing of a message on a pipe: its length, big-endian; -1 and then a
# 64-bit length for messages of 2 GiB or more (what the worker's ``recv_bytes`` reads).
_SIZE = struct.Struct("!i")
_BIG_SIZE = struct.Struct("!Q")
_READ = 1 << 16  # bytes read at once
_SMALL_HEAD = struct.Struct("!iQ")  # the length of a small message, and the call's number


def _frame(payload_size: int) -> bytes:
    if payload_size > 0x7FFFFFFF:
        return _SIZE.pack(-1) + _BIG_SIZE.pack(payload_size)

    return _SIZE.pack(payload_size)


def _read(job: Job, answer: bytes) -> None:
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


def _write_rest(fd: int, parts: list[bytes], skip: int) -> None:
    """Write what a non-blocking write left of a big call (in a writer thread)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        for part in parts:
            view = memoryview(part)[skip:]
            skip = max(0, skip - len(part))
            while view:
                poller.poll()
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    continue
    except OSError:  # the worker died: the loop sees its end of file
        pass


def _idle_check(ref: weakref.ReferenceType[ProcessWorkers]) -> None:
    workers = ref()
    if workers is not None:
        workers._idle_check()


class _Process:
    """The parent's handle on one worker process. The loop thread owns it, except
    :meth:`spawn`, which a starter thread runs before the loop sees the process."""

    __slots__ = (
        "buffer",
        "calls",
        "conn",
        "control",
        "doomed",
        "fd",
        "gone",
        "idle_since",
        "job",
        "killed",
        "number",
        "payload",
        "pickling",
        "pid",
        "process",
        "ready",
        "reading",
        "segments",
        "unpickling",
        "writer",
    )

    def __init__(self) -> None:
        self.process: Any = None  # set once started
        self.conn: multiprocessing.connection.Connection | None = None
        self.control: multiprocessing.connection.Connection | None = None
        self.fd = -1
        self.pid = 0
        self.ready = False  # its start message came: it takes calls
        self.job: Job | None = None  # the call it runs (or will run once ready)
        self.number = 0  # that call's number, once sent
        self.payload = b""  # that call, pickled, until it is sent
        self.segments: tuple[str, ...] = ()  # the shared memory of its arguments, if any
        self.pickling = False  # the helper thread pickles its call (a big one)
        self.unpickling = False  # the helper thread unpickles its call's answer (a big one)
        self.calls = 0
        self.doomed = False  # killed or retiring: it takes no more calls
        self.killed = False  # SIGTERM was sent
        self.gone = False  # reaped
        self.reading = -1  # the descriptor the loop watches for it (-1: none)
        self.buffer: bytearray | None = None  # a message read in part
        self.writer: threading.Thread | None = None  # writing the rest of a big call
        self.idle_since = 0.0

    def spawn(
        self,
        context: Any,
        pool: str,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        """Start the process (this blocks: a starter thread runs it)."""
        conn, child_conn = context.Pipe(duplex=True)
        control_reader, control = context.Pipe(duplex=False)
        process = context.Process(
            target=child_main,
            args=(child_conn, control_reader, initializer, initargs),
            name=f"offload-{pool}-process",
        )
        try:
            with _main_path_checked():
                process.start()
        except BaseException:
            for end in (conn, child_conn, control_reader, control):
                end.close()

            raise

        child_conn.close()
        control_reader.close()
        self.conn = conn
        self.control = control
        self.fd = conn.fileno()
        self.pid = process.pid
        self.process = process

    def signal(self, sig: int) -> None:
        if self.gone or self.process is None:
            return  # reaped: its pid may be someone else's now

        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def notify(self, number: int) -> None:
        """Tell the worker that call ``number``'s caller stopped waiting."""
        control = self.control
        if control is None:
            return

        try:
            control.send_bytes(JOB_NUMBER.pack(number))
        except (OSError, ValueError):  # gone already
            pass

    def close_pipes(self) -> None:
        """Close the parent's ends: the worker reads end-of-file and exits."""
        writer = self.writer
        if writer is not None:  # it ends once the worker is gone
            self.writer = None
            writer.join()

        for conn in (self.conn, self.control):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass

        self.conn = self.control = None

    def stop(self) -> None:
        """Make sure the worker is gone, and reap it (blocks; for the end of a pool)."""
        process = self.process
        if process is None or self.gone:
            return

        if self.writer is not None:
            self.signal(_SIGKILL)

        self.close_pipes()
        process.join(KILL_GRACE)
        if process.exitcode is None:
            self.signal(signal.SIGTERM)
            process.join(KILL_GRACE)

        if process.exitcode is None:
            self.signal(_SIGKILL)
            process.join()

        self.reaped()

    def end_call(self) -> None:
        """Its call is over here (a retry pickles it again): forget it, and unlink the shared
        memory of its arguments."""
        self.job = None
        self.pickling = self.unpickling = False
        if self.segments:
            _payloads.release(self.segments)
            self.segments = ()

    def reaped(self) -> None:
        self.gone = True
        _payloads.sweep_worker(self.pid)  # segments of an answer it never sent
        try:
            self.process.close()
        except ValueError:  # pragma: no cover - it is reaped: close() does not refuse
            pass

    def crash(self, function: str, code: int | None) -> WorkerCrashed:
        """Describe how the worker died, from its exit code."""
        if code is not None and code < 0:
            return WorkerCrashed(function, self.pid, None, -code, not self.ready)

        return WorkerCrashed(function, self.pid, code, None, not self.ready)


class ProcessWorkers:
    """The worker processes of one pool in one event loop, driven by that loop.

    ``submit`` queues a job; a process runs it and the loop hands it to ``deliver``. Every
    method runs on the loop's thread. Stopping a running call is this kind's own capability
    (:meth:`notify`, :meth:`terminate`, :meth:`kill`).
    """

    def __init__(
        self,
        pool: str,
        deliver: Callable[[Job], None],
        loop: Loop,
        settings: ProcessSettings,
    ) -> None:
        check_min_workers(settings.min_workers, settings.max_workers, pool)
        self.pool = pool
        self._deliver = deliver
        self._loop = loop
        self.queue = queue = JobQueue(settings.max_workers)
        self.withdraw = queue.withdraw
        self.withdraw_all = queue.withdraw_all
        self._apply(settings)
        self._numbers = itertools.count(1)
        self.running: dict[Job, _Process] = {}  # calls given to a process, by job
        self._processes: set[_Process] = set()  # every process not yet reaped
        self._live = 0  # processes that take calls (not doomed), started or starting
        self._idle: list[_Process] = []  # ready, without a call; newest last
        self._unassigned: list[_Process] = []  # starting, without a call yet
        # The helper thread, and what it is asked to do: start a process, or reap one.
        self._helper: threading.Thread | None = None
        self._asks: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._terminated: dict[Job, _Process] = {}  # SIGTERMed for a job: kill() may follow
        self._tries: dict[Job, int] = {}  # re-runs after a crash, of calls with retries
        self._later: list[Job] = []  # outcomes to deliver from a fresh loop callback
        # Big calls the helper thread has pickled, for the loop to send (or shutdown to free).
        self._pickled: deque[tuple[_Process, Job, bytes, SerializationError | None]] = deque()
        self._idle_check_due = False
        self._start_failed = False  # a start failed: keep no spares until one succeeds
        self._closing = False
        self._top_up()

    def _apply(self, settings: ProcessSettings) -> None:
        self._context = multiprocessing.get_context(settings.start_method)
        self.max_tasks_per_worker = settings.max_tasks_per_worker
        self._initializer = settings.initializer
        self._initargs = settings.initargs
        self._idle_timeout = settings.idle_timeout
        self._min_workers = settings.min_workers

    def reconfigure(self, settings: PoolSettings) -> None:
        """Apply new settings: sizes at once, the rest to worker processes that start next.

        Raises:
            ValueError: ``min_workers`` is more than ``max_workers``.
        """
        assert isinstance(settings, ProcessSettings)
        check_min_workers(settings.min_workers, settings.max_workers, self.pool)
        self._apply(settings)
        with self.queue.lock:
            self.queue.capacity = settings.max_workers

        while self._live > settings.max_workers and self._idle:  # idle ones over the size exit
            self._retire(self._idle[0], replace=False)

        self._top_up()
        self._dispatch()
        self._check_idle()

    # -- gauges ------------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """How many worker processes are alive (or starting)."""
        return len(self._processes)

    @property
    def pending(self) -> int:
        """How many queued jobs wait for a worker (see :attr:`JobQueue.pending`)."""
        return self.queue.pending

    def gauges(self) -> tuple[int, int, int, int]:
        """Return processes alive, processes running a call (killed ones included until
        they are gone), jobs waiting, and processes running a call whose caller is gone."""
        queue = self.queue
        abandoned = sum(1 for job in list(self.running) if job.abandoned)  # any thread
        return len(self._processes), queue.busy, queue.pending, abandoned

    # -- calls -------------------------------------------------------------------------------

    def submit(self, job: Job, max_pending: int | None, elsewhere: int = 0) -> bool:
        """Queue ``job`` and send it to a process if one is free.

        Returns:
            False if the pending bound refuses it (:meth:`JobQueue.refuses`): the job was not
            queued.
        """
        queue = self.queue
        with queue.lock:
            if max_pending is not None and queue.refuses(max_pending, elsewhere, True):
                return False

            queue.jobs.append(job)

        if queue.busy < queue.capacity:
            self._dispatch()

        return True

    def _dispatch(self) -> None:
        """Give queued jobs to free processes, starting processes where there is room."""
        queue = self.queue
        jobs = queue.jobs
        while jobs and queue.busy < queue.capacity:
            if not (self._idle or self._unassigned or self._live < queue.capacity):
                return

            with queue.lock:
                job = jobs.popleft()

            big = _payloads.holds_big(job.args, job.kwargs)
            payload = self._prepare(job, big)
            if payload is None:
                continue  # refused before any process is used

            if self._idle:
                process = self._idle.pop()
            elif self._unassigned:
                process = self._unassigned.pop(0)  # the oldest start is the nearest done
            else:
                process = self._start()
                self._unassigned.remove(process)

            with queue.lock:
                queue.busy += 1

            process.job = job
            self.running[job] = process
            if big:  # pickled off the loop, then sent: calls behind it may go first
                process.pickling = True
                self._ask(functools.partial(self._pickle, process, job))
                continue

            process.payload = payload
            process.segments = _payloads.segment_names(payload)
            if process.ready:
                self._send(process, job)

    def _prepare(self, job: Job, big: bool) -> bytes | None:
        """Pickle the call (``big``: leave that to the helper thread, and return ``b""``), or
        set its outcome (to deliver soon) if it cannot be sent."""
        if job.caller_gone:  # cancelled as it waited: it never runs
            self._deliver_soon(job)
            return None

        fn: object = job.fn  # a FunctionRef for a decorated function: never a coroutine
        if not isinstance(fn, FunctionRef) and inspect.iscoroutinefunction(fn):
            job.error = refuse_awaitable(fn, None)
            self._deliver_soon(job)
            return None

        if big:
            return b""

        try:
            return _dumps_call(job)
        except SerializationError as exc:
            job.error = exc
            self._deliver_soon(job)
            return None

    def _pickle(self, process: _Process, job: Job) -> None:
        """Pickle a big call (in the helper thread): the loop sends it (:meth:`_take_pickled`).

        Its copies into shared memory release the GIL, so the loop runs on meanwhile.
        """
        payload = b""
        error: SerializationError | None = None
        if not (job.caller_gone or self._closing):  # else: it never runs, nothing to pickle
            try:
                payload = _dumps_call(job)
            except SerializationError as exc:
                error = exc

        self._pickled.append((process, job, payload, error))
        self._tell(self._take_pickled)

    def _take_pickled(self) -> None:
        """Send the big calls the helper thread has pickled (their process may be starting)."""
        pickled = self._pickled
        while pickled:
            process, job, payload, error = pickled.popleft()
            if self._closing or process.job is not job or not process.pickling:
                _payloads.release(_payloads.segment_names(payload))  # its call ended meanwhile
                continue

            process.pickling = False
            process.payload = payload
            process.segments = _payloads.segment_names(payload)
            if error is not None:
                job.error = error
                self._unsent(process, job)
            elif process.ready and not process.doomed:
                self._send(process, job)
            # Else it is sent once its process is ready (:meth:`_ready`); a lost process's
            # reaping ends the call (and frees its segments).

    def _send(self, process: _Process, job: Job) -> None:
        """Send ``job`` to its (ready) process: one non-blocking write from the loop."""
        payload, process.payload = process.payload, b""
        if job.caller_gone:  # cancelled while its process started: it never runs
            self._unsent(process, job)
            return

        number = process.number = next(self._numbers)
        size = JOB_NUMBER.size + len(payload)
        if size < _READ:  # the common case: one small message, one write
            parts = [_SMALL_HEAD.pack(size, number) + payload]
            total = len(parts[0])
        else:
            parts = [_frame(size), JOB_NUMBER.pack(number), payload]
            total = sum(map(len, parts))

        del payload
        job.started = perf_counter()
        try:
            written = os.writev(process.fd, parts)
        except BlockingIOError:
            written = 0
        except OSError:  # the worker died: the loop reads its end of file next
            return

        if written < total:
            process.writer = writer = threading.Thread(
                target=_write_rest,
                args=(process.fd, parts, written),
                name=f"offload-{self.pool}-writer",
                daemon=True,
            )
            writer.start()

    def _unsent(self, process: _Process, job: Job) -> None:
        """A job whose caller left while its process started, or which could not be pickled:
        free the process."""
        self.running.pop(job, None)
        process.end_call()
        with self.queue.lock:
            self.queue.busy -= 1

        if process.ready:
            self._idle.append(process)
            process.idle_since = monotonic()
        elif not process.doomed:
            self._unassigned.append(process)

        self._deliver_soon(job)

    def _deliver_soon(self, job: Job) -> None:
        """Deliver a job that no process ran from a fresh loop callback (never from inside
        ``submit``, whose caller has not seen the job accepted yet)."""
        self._later.append(job)
        if len(self._later) == 1:
            self._loop.call_soon_threadsafe(self._deliver_later)

    def _deliver_later(self) -> None:
        later, self._later = self._later, []
        for job in later:
            self._deliver(job)

        self._dispatch()
        self._check_idle()

    def _done(self, process: _Process, job: Job, ran: bool = True) -> None:
        """The job has its outcome: free its process (or retire it) and deliver the job."""
        self.running.pop(job, None)
        self._tries.pop(job, None)
        self._terminated.pop(job, None)
        process.end_call()
        with self.queue.lock:
            self.queue.busy -= 1

        if ran:
            process.calls += 1

        if process.doomed:
            if process.reading == process.fd:  # its call ended as it was killed: make sure
                self._stop_reading(process)  # it exits (end of its input), and reap it
                process.close_pipes()
                self._reap(process, None)
        else:
            limit = self.max_tasks_per_worker
            if (limit is not None and process.calls >= limit) or self._closing:
                self._retire(process, replace=not self._closing)
            elif self._live > self.queue.capacity:  # max_workers was lowered: one too many
                self._retire(process, replace=False)
            else:
                process.idle_since = monotonic()
                self._idle.append(process)

        self._dispatch()  # the next queued call goes out before this one is delivered
        self._deliver(job)
        if not self._idle_check_due:
            self._check_idle()

    # -- processes: start, read, lose, retire ------------------------------------------------

    def _start(self) -> _Process:
        """Start a process in the background (the helper thread); it takes calls once ready."""
        process = _Process()
        self._processes.add(process)
        self._unassigned.append(process)
        self._live += 1
        self._ask(
            functools.partial(
                self._spawn, process, self._context, self._initializer, self._initargs
            )
        )
        return process

    def _ask(self, task: Callable[[], None]) -> None:
        """Have the helper thread run ``task``.

        One helper thread per pool and loop, asleep on its queue between tasks: starting a
        thread from the loop would make the loop wait for it to run (``Thread.start()``),
        on a busy machine for milliseconds. It alone starts and reaps processes:
        multiprocessing's process handles are not safe to use from two threads at once (a
        start polls the other children, and two polls of one forkserver child race for its
        exit status).
        """
        self._asks.put(task)
        if self._helper is None:
            self._helper = threading.Thread(
                target=self._help, name=f"offload-{self.pool}-helper", daemon=True
            )
            self._helper.start()

    def _help(self) -> None:
        """The helper thread: run what it is asked, in order, until shutdown."""
        while True:
            task = self._asks.get()
            if task is None:
                return

            task()

    def _spawn(
        self,
        process: _Process,
        context: Any,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        if self._closing:
            return  # shutdown() forgets it

        error: BaseException | None = None
        try:
            before_worker_start(context)
            process.spawn(context, self.pool, initializer, initargs)
        except BaseException as exc:
            error = exc

        self._tell(functools.partial(self._started, process, error))

    def _tell(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the loop (from the helper thread)."""
        try:
            self._loop.call_soon_threadsafe(callback)
        except Exception:  # the loop is gone; its end stopped the processes
            pass

    def _started(self, process: _Process, error: BaseException | None) -> None:
        if self._closing or process.gone:
            return  # shutdown() stopped it

        if error is not None:
            self._processes.discard(process)
            process.gone = True
            self._failed_start(process, error)
            return

        os.set_blocking(process.fd, False)
        process.reading = process.fd
        self._loop.add_reader(process.fd, functools.partial(self._readable, process))

    def _failed_start(self, process: _Process, error: BaseException) -> None:
        """A process could not start (or its initializer failed): its call, if any, fails."""
        self._start_failed = True
        self._doom(process)
        job = process.job
        if job is not None:
            job.error = error
            self._done(process, job, ran=False)
        else:
            self._dispatch()

    def _readable(self, process: _Process) -> None:
        """The loop saw the process's pipe readable: read, and act on whole messages."""
        try:
            self._read_messages(process)
        except Exception:  # never let a bug here end the event loop's run
            logger.exception("pool %r: reading worker process %s failed", self.pool, process.pid)

    def _read_messages(self, process: _Process) -> None:
        try:
            data = os.read(process.fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""

        if not data:
            self._lost(process)
            return

        buffer = process.buffer
        if buffer is None:
            if len(data) >= 4 and len(data) - 4 == _SIZE.unpack_from(data)[0]:
                self._message(process, data[4:])  # the common case: one whole message
                return

            buffer = process.buffer = bytearray(data)
        else:
            buffer += data

        while len(buffer) >= 4 and process.reading == process.fd:
            (size,) = _SIZE.unpack_from(buffer)
            start = 4
            if size == -1:
                if len(buffer) < 12:
                    break

                (size,) = _BIG_SIZE.unpack_from(buffer, 4)
                start = 12

            if len(buffer) < start + size:
                break

            message = bytes(buffer[start : start + size])
            del buffer[: start + size]
            self._message(process, message)

        if not buffer:
            process.buffer = None

    def _message(self, process: _Process, message: bytes) -> None:
        if not process.ready:  # its start: the initializer ran
            _, ok, value = pickle.loads(message)
            if ok:
                process.ready = True
                self._start_failed = False
                self._ready(process)
            else:
                error, text = value
                error.__cause__ = RemoteTraceback(text)
                self._stop_reading(process)
                process.close_pipes()
                self._reap(process, None)
                self._failed_start(process, error)

            return

        job = process.job
        if job is None or process.number == 0:
            return  # not an answer to a call: ignore it

        process.number = 0
        writer = process.writer
        if writer is not None:  # the worker read the whole call: the writer is done
            process.writer = None
            writer.join()

        job.ended = perf_counter()
        if _payloads.has_segments(message):  # mapping and copying: off the loop
            process.unpickling = True
            self._ask(functools.partial(self._unpickle, process, job, message))
            return

        _read(job, message)
        self._done(process, job)

    def _unpickle(self, process: _Process, job: Job, message: bytes) -> None:
        """Unpickle a big answer (in the helper thread; it takes its segments over)."""
        _read(job, message)
        self._tell(functools.partial(self._unpickled, process, job))

    def _unpickled(self, process: _Process, job: Job) -> None:
        if process.job is job and process.unpickling and not self._closing:
            self._done(process, job)

    def _ready(self, process: _Process) -> None:
        if process in self._unassigned:
            self._unassigned.remove(process)

        job = process.job
        if job is not None:
            if not process.pickling:
                self._send(process, job)
        elif not process.doomed:
            process.idle_since = monotonic()
            self._idle.append(process)
            self._dispatch()
            self._check_idle()

    def _stop_reading(self, process: _Process) -> None:
        if process.reading >= 0:
            self._loop.remove_reader(process.reading)
            process.reading = -1

    def _doom(self, process: _Process) -> None:
        """The process takes no more calls (it is killed, retiring, or lost)."""
        if process.doomed:
            return

        process.doomed = True
        self._live -= 1
        if process in self._idle:
            self._idle.remove(process)

        if process in self._unassigned:
            self._unassigned.remove(process)

    def _replace(self) -> None:
        """Start a process for one that was lost, at once, so no call waits for it later."""
        if not self._closing and self._live < self.queue.capacity and not self._start_failed:
            self._start()
            self._dispatch()

    def _top_up(self) -> None:
        """Keep ``min_workers`` processes started."""
        while not self._closing and not self._start_failed and self._live < self._min_workers:
            self._start()

    def _lost(self, process: _Process) -> None:
        """The process closed its pipe: it died (a crash, or killed), or it exits."""
        self._stop_reading(process)
        was_live = not process.doomed
        self._doom(process)
        process.close_pipes()
        if was_live and process.ready:
            self._replace()  # a crash: replace it now (a kill replaced it already)

        self._reap(process, process.job)

    def _reap(self, process: _Process, job: Job | None) -> None:
        """Once the process has exited (its sentinel, watched by the loop), have the helper
        thread reap it, then settle ``job`` (None: none)."""
        sentinel = process.process.sentinel
        process.reading = sentinel

        def exited() -> None:
            if process.reading == sentinel:
                self._stop_reading(process)
                self._ask(functools.partial(self._join, process, job))

        self._loop.add_reader(sentinel, exited)
        # A worker that closed its pipe yet runs on is killed after the grace.
        self._loop.call_later(KILL_GRACE, functools.partial(process.signal, _SIGKILL))

    def _join(self, process: _Process, job: Job | None) -> None:
        """Reap an exited process (in the helper thread)."""
        process.process.join()
        code = process.process.exitcode
        process.reaped()
        self._tell(functools.partial(self._reaped, process, job, code))

    def _reaped(self, process: _Process, job: Job | None, code: int | None) -> None:
        crash = process.crash("worker" if job is None else job.name, code)
        self._processes.discard(process)
        if job is None or process.job is not job or process.unpickling:  # answered
            self._check_idle()
            return

        if not process.ready:  # died as it started (its initializer, say)
            self._failed_start(process, crash)
            return

        retries = 0 if job.options is None else job.options.retries
        tries = self._tries.get(job, 0)
        if job.caller_gone or process.killed or tries >= retries or self._closing:
            job.error = crash
            job.ended = perf_counter()
            self._done(process, job)
            return

        self._tries[job] = tries + 1
        logger.warning(
            "pool %r: the worker process (pid %s) running %s() died (exit code %s, signal "
            "%s); running it again on a fresh worker (retry %d of %d)",
            self.pool,
            crash.pid,
            job.name,
            crash.exitcode,
            crash.signal,
            tries + 1,
            retries,
        )
        # Back to the head of the queue, keeping its place: a fresh process takes it next.
        self.running.pop(job, None)
        process.end_call()
        queue = self.queue
        with queue.lock:
            queue.busy -= 1
            queue.jobs.appendleft(job)

        self._dispatch()

    def _retire(self, process: _Process, replace: bool) -> None:
        """Let an idle process exit (end of its input); start another if ``replace``."""
        self._doom(process)
        self._stop_reading(process)
        process.close_pipes()
        self._reap(process, None)
        if replace:
            self._replace()

    def _check_idle(self) -> None:
        """Make sure idle processes above ``min_workers`` exit after ``idle_timeout``."""
        if self._idle_check_due or not self._idle or self._live <= self._min_workers:
            return

        self._idle_check_due = True
        delay = self._idle[0].idle_since + self._idle_timeout - monotonic()
        # Held weakly: a pending check must not keep a closed pool alive for idle_timeout.
        self._loop.call_later(max(0.0, delay), functools.partial(_idle_check, weakref.ref(self)))

    def _idle_check(self) -> None:
        self._idle_check_due = False
        if self._closing:
            return

        now = monotonic()
        idle = self._idle
        while idle and self._live > self._min_workers:
            if now - idle[0].idle_since < self._idle_timeout:
                break

            self._retire(idle[0], replace=False)

        self._check_idle()

    # -- stopping a running call (set job.caller_gone first) -------------------------------

    def notify(self, job: Job) -> None:
        """Tell the process running ``job`` that its caller is gone (``offload.cancelled()``)."""
        process = self.running.get(job)
        if process is not None and process.number:
            process.notify(process.number)
        # Not sent yet: it never will be (the caller is gone).

    def terminate(self, job: Job) -> None:
        """SIGTERM the process running ``job``, and start its replacement at once."""
        process = self.running.get(job)
        if process is None or not process.number:
            return  # done, or not sent yet (it never will be)

        process.killed = True
        process.signal(signal.SIGTERM)
        self._terminated[job] = process
        if not process.doomed:
            self._doom(process)
            # Its replacement starts once the caller has control back.
            self._loop.call_soon_threadsafe(self._replace)

    def kill(self, job: Job) -> None:
        """SIGKILL the process that ran ``job`` if SIGTERM did not end it."""
        process = self._terminated.pop(job, None)
        if process is not None:
            process.signal(_SIGKILL)

    # -- the end -----------------------------------------------------------------------------

    def shutdown(self) -> list[object]:
        """Stop every process (they exit on end of input; stragglers are killed), and wait.

        Returns:
            Nothing left running: an empty list (every process is gone).
        """
        self._closing = True
        helper = self._helper
        if helper is not None:
            self._helper = None
            self._asks.put(None)
            helper.join()  # done with the start or reaping under way

        for _, _, payload, _ in self._pickled:  # big calls pickled for nobody now
            _payloads.release(_payloads.segment_names(payload))

        self._pickled.clear()

        processes = list(self._processes)
        for process in processes:
            self._stop_reading(process)
            if process.writer is not None:
                process.signal(_SIGKILL)

            process.close_pipes()  # all at once: they exit side by side

        for process in processes:
            process.stop()
            process.end_call()

        self._processes.clear()
        self._idle.clear()
        self._unassigned.clear()
        self._live = 0
        return []
