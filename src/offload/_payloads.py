"""Pickling for worker processes: big buffers travel in shared memory, not through the pipe.

A call and its outcome are pickled with protocol 5. A buffer of at least :data:`THRESHOLD`
bytes goes out-of-band: a NumPy array's data anywhere; ``bytes``, a ``bytearray`` or a
``memoryview`` that is an argument, the result, or an item of a tuple, list or dict there.
It is copied once into a shared-memory segment of its own, and the receiver maps that
segment, so the pipe carries a few hundred bytes. A NumPy array or a ``memoryview`` arrives
as a view on the mapping (no further copy); ``bytes`` and ``bytearray`` own their memory, so
the receiver copies once more to make one (a ``bytes`` is read with ``pread``, not mapped).
Both copies, ``pwrite`` into the segment and ``pread`` out of it, release the GIL: a thread
that makes them does not hold up the event loop.

What goes over the pipe is either a plain pickle (it starts with ``\\x80``, the PROTO opcode)
or, with segments, ``\\x00``, the segments' count, each segment's size (its top bit set for
a ``bytes``) and name, then the pickle.

**Who removes a segment** (none may outlive the call that made it, whatever happens):

* A segment's name says who made it for whom: ``offload_<parent pid>_<creator pid>_<n>``,
  where the parent is the process that owns the pool (for a worker: the process that
  started it, ``multiprocessing.parent_process()``).
* An argument's segment belongs to the parent: a worker maps it privately (copy-on-write:
  what the function writes into an argument stays in that worker, and a retry sees the
  original) and the parent unlinks it when the call ends, whatever the outcome
  (:func:`release`).
* A result's segment is made by the worker and taken over by the parent, which unlinks it
  as soon as it has mapped it (:func:`loads` with ``take=True``), before unpickling.
* A worker that dies (killed, crashed) after it made a segment and before the parent read
  its answer leaves a name the parent never saw: when the parent reaps a worker it removes
  every ``offload_<its pid>_<worker pid>_*`` left (:func:`sweep_worker`).
* Every segment is registered with multiprocessing's resource tracker (one per program,
  shared by the workers) before it is created, and unregistered when it is unlinked: if the
  whole program dies, the tracker removes what is left, and otherwise it has nothing to
  warn about. Receivers map segments without ``SharedMemory``, which on Python 3.10-3.12
  would register them again and could unlink them early.

Shared memory needs a ``/dev/shm`` to sweep (Linux); elsewhere everything goes through the
pipe, as before.
"""

from __future__ import annotations

import importlib
import io
import itertools
import mmap
import multiprocessing
import os
import pickle
import struct
import sys
from typing import Any

__all__ = (
    "THRESHOLD",
    "check",
    "dumps",
    "dumps_call",
    "dumps_result",
    "holds_big",
    "loads",
    "loads_call",
    "loads_result",
    "release",
    "segments",
    "sweep_worker",
)

THRESHOLD = 1 << 20
"""A buffer of this many bytes or more travels in shared memory."""

PROTOCOL = 5
PREFIX = "offload_"
SHM_DIR = "/dev/shm"

# Shared memory where the parent can list (and so sweep) what a dead worker left.
ENABLED = sys.platform == "linux" and os.path.isdir(SHM_DIR)

_TAG = b"\x00"
_COUNT = struct.Struct("!I")
_SEGMENT = struct.Struct("!QH")  # size in bytes (top bit: _OWNED), length of the name
_OWNED = 1 << 63  # the receiver rebuilds ``bytes`` from it: read it, do not map it
_numbers = itertools.count(1)

# What ``_swap`` looks into for bytes and memoryviews: containers this small, this deep.
_SCAN_ITEMS = 64
_SCAN_DEPTH = 3

# The C module behind ``SharedMemory`` on POSIX: create, open and unlink by name.
_posixshmem: Any = importlib.import_module("_posixshmem") if ENABLED else None


def _tracker() -> Any:
    # Imported when a first segment is made: most programs never make one.
    from multiprocessing import resource_tracker

    return resource_tracker


# -- bytes, bytearray and memoryview: out-of-band by wrapping ---------------------------------
#
# The C pickler writes bytes and bytearray in-band without asking ``reducer_override``, and a
# memoryview does not pickle at all: the values themselves are swapped for wrappers that
# reduce to a ``PickleBuffer``. (NumPy arrays reduce to one by themselves.)


class _Bytes:
    """A ``bytes`` or ``bytearray`` value, rebuilt as its own type from a buffer."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        return (type(self.value), (pickle.PickleBuffer(self.value),))


class _View:
    """A ``memoryview``, rebuilt with its format, shape and read-only flag."""

    __slots__ = ("value",)

    def __init__(self, value: memoryview) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        view = self.value
        data: Any = view if view.c_contiguous else view.tobytes()
        shape = tuple(view.shape or ())
        return (_rebuild_view, (pickle.PickleBuffer(data), view.format, shape, view.readonly))


def _rebuild_view(buffer: Any, format: str, shape: tuple[int, ...], readonly: bool) -> memoryview:
    view: memoryview = memoryview(buffer)
    if view.format != format or tuple(view.shape or ()) != shape:
        cast: Any = view.cast("B").cast
        view = cast(format, shape)

    return view.toreadonly() if readonly else view


_BUFFERS = frozenset((bytes, bytearray, memoryview))
_CONTAINERS = frozenset((tuple, list, dict))


def _swap(value: object, depth: int = 0) -> object:
    """Return ``value`` with big bytes and every memoryview wrapped, near the top only.

    Most calls carry none: one look at each item's type, and ``value`` comes back as it is.
    """
    kind = type(value)
    if kind in _BUFFERS:
        if kind is memoryview:
            return _View(value)  # type: ignore[arg-type]

        return _Bytes(value) if len(value) >= THRESHOLD else value  # type: ignore[arg-type]

    if kind not in _CONTAINERS or depth >= _SCAN_DEPTH:
        return value

    container: Any = value
    items: Any = container.values() if kind is dict else container
    if len(items) > _SCAN_ITEMS:
        return value

    for item in items:
        if type(item) in _BUFFERS or type(item) in _CONTAINERS:
            break
    else:
        return value

    if kind is dict:
        return {key: _swap(item, depth + 1) for key, item in container.items()}

    swapped = [_swap(item, depth + 1) for item in items]
    return tuple(swapped) if kind is tuple else swapped


_SCALARS = frozenset((int, float, bool, str, type(None)))


def _big(value: object, top: bool) -> bool:
    kind = type(value)
    if kind in _BUFFERS:
        sized: Any = value
        return (sized.nbytes if kind is memoryview else len(sized)) >= THRESHOLD

    if kind in _CONTAINERS:
        container: Any = value
        if not top or len(container) > _SCAN_ITEMS:
            return False

        items = container.values() if kind is dict else container
        return any(_big(item, False) for item in items)

    if kind in _SCALARS:
        return False

    try:  # a NumPy array, or anything that says its size
        nbytes = getattr(value, "nbytes", None)
    except Exception:  # a property that fails: pickling will say what is wrong
        return False

    return isinstance(nbytes, int) and nbytes >= THRESHOLD


def holds_big(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Return whether a call carries a buffer of :data:`THRESHOLD` bytes or more.

    A cheap look, for the loop thread: each argument, and the items of a small tuple, list or
    dict argument; a buffer is what has ``nbytes`` (or is ``bytes``, ``bytearray``).
    """
    if not ENABLED:
        return False

    for value in args:
        if type(value) not in _SCALARS and _big(value, True):
            return True

    if kwargs:
        for value in kwargs.values():
            if type(value) not in _SCALARS and _big(value, True):
                return True

    return False


def has_segments(data: bytes) -> bool:
    """Return whether a payload names segments (reading it maps or copies big buffers)."""
    return bool(data) and data[0] == _TAG[0]


# -- segments ---------------------------------------------------------------------------------


def _name(parent: int, creator: int) -> str:
    # Short: macOS allows 31 characters (with the leading slash).
    return f"/{PREFIX}{parent}_{creator}_{next(_numbers)}"


def _create(name: str, raw: memoryview) -> None:
    """Create segment ``name`` holding ``raw``; registered before it exists.

    The copy is a ``pwrite`` into the segment, which releases the GIL (an mmap slice
    assignment would hold it, and so stall the event loop, for the whole copy).
    """
    tracker = _tracker()
    tracker.register(name, "shared_memory")
    try:
        fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    except BaseException:
        tracker.unregister(name, "shared_memory")
        raise

    try:
        size = raw.nbytes
        os.ftruncate(fd, size)
        done = 0
        while done < size:
            done += os.pwrite(fd, raw[done:], done)
    except BaseException:
        _unlink(name)
        raise
    finally:
        os.close(fd)


def _map(name: str, size: int) -> mmap.mmap:
    """Map segment ``name`` copy-on-write: writes stay in this process."""
    fd = _posixshmem.shm_open(name, os.O_RDWR, mode=0o600)
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _read_bytes(name: str, size: int) -> bytes:
    """Read segment ``name`` into ``bytes`` with ``pread``, which releases the GIL."""
    fd = _posixshmem.shm_open(name, os.O_RDONLY, mode=0o600)
    try:
        data = os.pread(fd, size, 0)
        while len(data) < size:
            more = os.pread(fd, size - len(data), len(data))
            if not more:
                raise EOFError(f"shared memory segment {name} is shorter than {size} bytes")

            data += more

        return data
    finally:
        os.close(fd)


def _unlink(name: str) -> None:
    try:
        _posixshmem.shm_unlink(name)
    except FileNotFoundError:
        return  # someone removed it already, and unregistered it then

    _tracker().unregister(name, "shared_memory")


# -- the public surface -----------------------------------------------------------------------


def dumps(obj: object, *, parent: int, creator: int) -> bytes:
    """Pickle ``obj``, its big buffers into new segments named for ``parent`` and ``creator``.

    ``obj`` has been through :func:`_swap` already. On failure the segments made so far are
    removed and the error propagates.
    """
    if not ENABLED:
        return pickle.dumps(obj, PROTOCOL)

    made: list[tuple[str, int]] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        size = raw.nbytes
        if size < THRESHOLD:
            return True  # in the pickle

        name = _name(parent, creator)
        _create(name, raw)
        # ``bytes`` is rebuilt by a copy anyway: the receiver reads it instead of mapping it.
        made.append((name, size | _OWNED if type(raw.obj) is bytes else size))
        return False

    try:
        data = pickle.dumps(obj, PROTOCOL, buffer_callback=out_of_band)
    except BaseException:
        for name, _ in made:
            _unlink(name)

        raise

    if not made:
        return data

    header = io.BytesIO()
    header.write(_TAG)
    header.write(_COUNT.pack(len(made)))
    for name, size in made:
        encoded = name.encode("ascii")
        header.write(_SEGMENT.pack(size, len(encoded)))
        header.write(encoded)

    header.write(data)
    return header.getvalue()


def segments(data: bytes | memoryview, offset: int = 0) -> tuple[list[tuple[str, int]], int]:
    """Return the segments (name, size) that a payload names, and where its pickle starts.

    A size may carry the ``_OWNED`` flag (``size & ~_OWNED`` is the size in bytes).
    """
    view = memoryview(data)
    if len(view) <= offset or view[offset] != _TAG[0]:
        return [], offset

    (count,) = _COUNT.unpack_from(view, offset + 1)
    at = offset + 1 + _COUNT.size
    found: list[tuple[str, int]] = []
    for _ in range(count):
        size, length = _SEGMENT.unpack_from(view, at)
        at += _SEGMENT.size
        found.append((bytes(view[at : at + length]).decode("ascii"), size))
        at += length

    return found, at


def loads(data: bytes, *, take: bool) -> Any:
    """Unpickle a payload, mapping its segments; ``take``: unlink them, now they are mapped."""
    found, start = segments(data)
    if not found:
        return pickle.loads(data)

    buffers: list[object] = []
    try:
        for name, size in found:
            if size & _OWNED:  # bytes: one copy that releases the GIL, and no mapping
                buffers.append(_read_bytes(name, size & ~_OWNED))
            else:
                buffers.append(memoryview(_map(name, size)))
    finally:
        if take:
            for name, _ in found:
                _unlink(name)

    return pickle.loads(memoryview(data)[start:], buffers=buffers)


def segment_names(data: bytes) -> tuple[str, ...]:
    """Return the names of the segments that a payload made (none for a plain pickle)."""
    if not ENABLED or not data or data[0] != _TAG[0]:
        return ()

    return tuple(name for name, _ in segments(data)[0])


def release(names: tuple[str, ...]) -> None:
    """Unlink the segments a call's arguments made (:func:`segment_names`), if still there."""
    for name in names:
        _unlink(name)


def sweep_worker(pid: int) -> None:
    """Remove what worker ``pid`` of this process left: segments of answers never read."""
    if not ENABLED:
        return

    start = f"{PREFIX}{os.getpid()}_{pid}_"
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return

    for name in names:
        if name.startswith(start):
            _unlink("/" + name)


def check(obj: object) -> None:
    """Raise what pickling ``obj`` raises, without making any segment."""
    pickle.dumps(_swap(obj), PROTOCOL, buffer_callback=_never_in_band)


def _never_in_band(buffer: pickle.PickleBuffer) -> bool:
    return False


def _parent_pid() -> int:
    parent = multiprocessing.parent_process()
    return os.getpid() if parent is None or parent.pid is None else parent.pid


def dumps_call(call: tuple[object, tuple[Any, ...], dict[str, Any]]) -> bytes:
    """Pickle a call ``(function, args, kwargs)`` in the parent, which owns its segments."""
    fn, args, kwargs = call
    swapped_args = _swap(args, 1)
    swapped_kwargs = _swap(kwargs, 1)
    if swapped_args is not args or swapped_kwargs is not kwargs:
        call = (fn, swapped_args, swapped_kwargs)  # type: ignore[assignment]

    pid = os.getpid()
    return dumps(call, parent=pid, creator=pid)


def dumps_result(outcome: tuple[int, bool, object]) -> bytes:
    """Pickle an outcome ``(number, ok, value)`` in a worker; the parent takes its segments."""
    number, ok, value = outcome
    swapped = _swap(value, 1)
    if swapped is not value:
        outcome = (number, ok, swapped)

    return dumps(outcome, parent=_parent_pid(), creator=os.getpid())


def loads_call(data: bytes) -> Any:
    """Unpickle a call in a worker (the parent keeps its segments)."""
    return loads(data, take=False)


def loads_result(data: bytes) -> Any:
    """Unpickle an outcome in the parent, which takes its segments over and unlinks them."""
    return loads(data, take=True)
