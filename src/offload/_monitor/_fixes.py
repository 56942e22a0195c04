"""What the monitor tells a user to do about a site that blocked the loop.

Advice must work when pasted in:

* ``time.sleep(x)`` in a coroutine becomes the running backend's own sleep
  (``await asyncio.sleep(x)``, ``await trio.sleep(x)``): a thread spent on a sleep is waste.
* A blocking sync call becomes ``await offload.call(fn, ...)``, or a decorated function.
* Computation that holds the GIL goes to a process, but only what a process can receive: a
  class (its instance would come back pickled), a lambda, a local function, or a method of an
  object that does not pickle go to a thread instead.
* An async callable is never offloaded: awaiting it is how it runs. A library coroutine that
  blocks inside is named as such.
* Advice that starts processes from a script without ``if __name__ == "__main__":`` names the
  guard: worker processes import the script, and would run its program again.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import os
import pickle
import sys
import threading
import time
import types
from typing import Any, Final, Literal, cast

__all__ = ("advice", "busy_advice", "positions")

_ASYNC: Final = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
_MISSING: Final = object()
_PLAIN: Final = (int, float, complex, str, bytes, bool, type(None), range, slice)
_CONTAINERS: Final = (list, tuple, dict, set, frozenset, bytearray)
_GUARD: Final = (
    'and put the code that starts the program under if __name__ == "__main__": '
    "(worker processes import this script)"
)

if sys.version_info >= (3, 11):

    def positions(code: types.CodeType, lasti: int) -> tuple[int | None, int | None, int | None]:
        """Return (end_lineno, colno, end_colno) of the instruction at ``lasti``."""
        if lasti >= 0:
            for index, position in enumerate(code.co_positions()):
                if index == lasti // 2:
                    return position[1], position[2], position[3]

        return None, None, None

else:

    def positions(code: types.CodeType, lasti: int) -> tuple[int | None, int | None, int | None]:
        """Return (end_lineno, colno, end_colno): unknown before Python 3.11."""
        return None, None, None


def advice(
    kind: Literal["blocking", "cpu"],
    frame: types.FrameType,
    lineno: int | None,
    lasti: int,
    *,
    user: bool,
    gil_free: bool,
    callee: types.CodeType | None,
    backend: str,
) -> str:
    """Say how to stop a site from blocking the loop, with offload's API.

    Args:
        kind: what the site did: waited (``blocking``) or computed (``cpu``).
        frame: the site's frame; ``lineno`` and ``lasti`` where it was then.
        user: the frame is user code (else a library's).
        gil_free: the computation let go of the GIL (hashing, compression): a thread will do.
        callee: the code the site had called, one frame in, if any.
        backend: ``"asyncio"`` or ``"trio"``, whose sleep replaces ``time.sleep``.
    """
    code = frame.f_code
    process = kind == "cpu" and not gil_free
    if callee is not None and callee.co_flags & _ASYNC:
        return _async_library(_called(frame, lineno, lasti) or f"{callee.co_name}()", callee)

    if not code.co_flags & _ASYNC:
        if not user:
            decorator = "@offload.process" if process else "@offload.thread"
            return _guarded(f"run the code that calls it with {decorator}", frame, process)

        return _function(code, frame, process)

    if not user:
        return _async_library(f"{code.co_name}()", code)

    source = _call_source(code, lineno, lasti)
    call = _find_call(source) if source else None
    if call is None or isinstance(call.func, ast.Lambda):
        if process:
            return _guarded(
                "move this computation into a module-level function decorated with "
                "@offload.process and await it",
                frame,
                process,
            )

        return "run the blocking call with await offload.call(fn, *args)"

    target = _resolve(call.func, frame)
    arguments = [ast.unparse(argument) for argument in call.args]
    arguments.extend(
        f"{keyword.arg}={ast.unparse(keyword.value)}"
        if keyword.arg
        else f"**{ast.unparse(keyword.value)}"
        for keyword in call.keywords
    )
    if target is time.sleep:
        return f"await {'trio' if backend == 'trio' else 'asyncio'}.sleep({', '.join(arguments)})"

    if _is_async(target):
        return _async_library(f"{ast.unparse(call.func)}()", None)

    if process and not _sendable(call, frame, target):
        process = False

    text = ", ".join([ast.unparse(call.func), *arguments])
    if len(text) > 72:
        text = f"{ast.unparse(call.func)}, ..."

    pool = "offload.process.call" if process else "offload.call"
    return _guarded(f"await {pool}({text})", frame, process)


def busy_advice(frame: types.FrameType | None, thread: str) -> str:
    """Say how to stop the function that ``thread`` runs in ``frame`` from starving the loop."""
    if frame is None:
        return (
            f"thread {thread!r} holds the GIL or the CPUs; run its CPU-bound work with "
            "@offload.process instead of a thread"
        )

    code = frame.f_code
    name = _qualname(code, frame)
    return _guarded(
        f"{name}() in thread {thread!r} holds the GIL or the CPUs while the loop waits: "
        f"{_process_text(code, frame)} instead of a thread",
        frame,
        process=True,
    )


def _function(code: types.CodeType, frame: types.FrameType, process: bool) -> str:
    if code.co_name == "<module>":  # a module's own code, as it is imported
        name = frame.f_globals.get("__name__", "the module")
        return (
            f"importing {name} blocks the loop while its code runs: import it at startup, "
            f"before the loop, or await offload.call(importlib.import_module, {name!r})"
        )

    if not process:
        return f"decorate {code.co_name}() with @offload.thread and await it"

    return _guarded(f"{_process_text(code, frame)} and await it", frame, process)


def _qualname(code: types.CodeType, frame: types.FrameType) -> str:
    """Return the qualified name of the function running in ``frame``.

    Python 3.11+ keeps it on the code object. On 3.10 it is found where a module-level
    function or a method would be; anything else is taken for a local function (which the
    advice then never sends to a process as it is).
    """
    qualname: str | None = getattr(code, "co_qualname", None)
    if qualname is not None:
        return qualname

    name = code.co_name
    candidate = frame.f_globals.get(name)
    for function in (candidate, getattr(candidate, "__wrapped__", None)):
        if getattr(function, "__code__", None) is code:
            return name

    if code.co_argcount and code.co_varnames[0] in ("self", "cls"):
        owner = frame.f_locals.get(code.co_varnames[0])
        cls = owner if isinstance(owner, type) else type(owner)
        return f"{cls.__qualname__}.{name}"

    return f"<locals>.{name}"


def _process_text(code: types.CodeType, frame: types.FrameType) -> str:
    """Send a function's work to a process: as it is only if a process can receive it."""
    qualname = _qualname(code, frame)
    if "<locals>" in qualname or code.co_name == "<lambda>":
        return f"move {code.co_name}() to module level and decorate it with @offload.process"

    if "." in qualname:  # a method: its object would travel too, if it pickles at all
        return (
            f"move the work of {qualname}() into a module-level function decorated with "
            "@offload.process"
        )

    return f"decorate {code.co_name}() with @offload.process"


def _async_library(what: str, code: types.CodeType | None) -> str:
    where = f" inside {_package(code.co_filename)}" if code is not None else ""
    return (
        f"{what} is async and blocks the loop{where}: do not offload it (awaiting it is how "
        "it runs); use that library's non-blocking option or API, or its synchronous API "
        "through await offload.call(...)"
    )


def _package(filename: str) -> str:
    parts = os.path.normpath(filename).split(os.sep)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in ("site-packages", "dist-packages"):
            return parts[index + 1].removesuffix(".py")

    return os.path.basename(filename)


def _guarded(text: str, frame: types.FrameType, process: bool) -> str:
    """Add the ``__main__`` guard to advice that starts processes from a script without one."""
    if not process or frame.f_globals.get("__name__") != "__main__":
        return text

    filename = frame.f_globals.get("__file__")
    if not isinstance(filename, str) or _has_main_guard(filename):
        return text

    return f"{text}, {_GUARD}"


_guards: dict[tuple[str, float], bool] = {}
_guards_lock = threading.Lock()


def _has_main_guard(filename: str) -> bool:
    """Whether the script has an ``if __name__ == "__main__":`` at top level (True if unread)."""
    try:
        key = (filename, os.stat(filename).st_mtime)
    except OSError:
        return True

    with _guards_lock:
        known = _guards.get(key)

    if known is not None:
        return known

    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except (SyntaxError, ValueError):
        return True

    found = any(isinstance(node, ast.If) and _is_main_test(node.test) for node in tree.body)
    with _guards_lock:
        _guards[key] = found

    return found


def _is_main_test(test: ast.expr) -> bool:
    if not isinstance(test, ast.Compare) or len(test.comparators) != 1:
        return False

    sides = [test.left, test.comparators[0]]
    names = [side for side in sides if isinstance(side, ast.Name) and side.id == "__name__"]
    mains = [side for side in sides if isinstance(side, ast.Constant) and side.value == "__main__"]
    return bool(names and mains) and isinstance(test.ops[0], ast.Eq)


def _resolve(node: ast.expr, frame: types.FrameType) -> object:
    """Find what a name or a dotted name means in ``frame``, running no code (or _MISSING)."""
    if isinstance(node, ast.Name):
        for namespace in (frame.f_locals, frame.f_globals, frame.f_builtins):
            if node.id in namespace:
                return namespace[node.id]

        return _MISSING

    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, frame)
        if base is _MISSING:
            return _MISSING

        try:
            found = inspect.getattr_static(base, node.attr)
        except AttributeError:
            return _MISSING

        if isinstance(found, (staticmethod, classmethod)):
            return cast("Any", found).__func__

        return found

    return _MISSING


def _is_async(target: object) -> bool:
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def _sendable(call: ast.Call, frame: types.FrameType, target: object) -> bool:
    """Whether a process can receive the call: the callable, its owner and its arguments."""
    if target is _MISSING or isinstance(target, type):
        return False  # unknown, or a class: its instance would have to come back pickled

    if inspect.isfunction(target) and (
        "<locals>" in target.__qualname__ or target.__name__ == "<lambda>"
    ):
        return False

    owner = getattr(target, "__self__", None)
    if isinstance(call.func, ast.Attribute):
        owner = _resolve(call.func.value, frame)

    if owner is not None and not isinstance(owner, (types.ModuleType, type)):
        if not _pickles(owner):
            return False

    for argument in call.args:
        value = _resolve(argument, frame)
        if value is not _MISSING and not _pickles(value):
            return False

    return True


def _pickles(value: object) -> bool:
    """Whether ``value`` pickles (builtin containers are taken on trust: they may be big)."""
    if isinstance(value, (*_PLAIN, *_CONTAINERS, types.ModuleType)):
        return True

    if inspect.isfunction(value):
        return "<locals>" not in value.__qualname__ and value.__name__ != "<lambda>"

    try:
        pickle.dumps(value)
    except Exception:  # anything a __reduce__ may raise
        return False

    return True


def _call_source(code: types.CodeType, lineno: int | None, lasti: int) -> str | None:
    """Return the source of the call the frame is in, e.g. ``time.sleep(0.3)``."""
    filename = code.co_filename
    if lineno is None:
        return None

    end_lineno, colno, end_colno = positions(code, lasti)
    if end_lineno is not None and colno is not None and end_colno is not None:
        lines = [
            linecache.getline(filename, number).encode()
            for number in range(lineno, end_lineno + 1)
        ]
        if lines and all(lines):
            if len(lines) == 1:
                colno, end_colno = _outer_call(lines[0], colno, end_colno)
                text = lines[0][colno:end_colno]
            else:
                text = lines[0][colno:] + b"".join(lines[1:-1]) + lines[-1][:end_colno]

            return text.decode(errors="replace")

    line = linecache.getline(filename, lineno).strip()
    return line or None


def _outer_call(line: bytes, colno: int, end_colno: int) -> tuple[int, int]:
    """Widen a call to the outermost call of its line that takes it as an argument.

    In ``json.dumps(list(range(n)))`` the outer call is the slow one, and the one to offload
    (its arguments go with it); a C call that holds the GIL is seen only when it has returned,
    so the samples cannot always tell the two apart.
    """
    indent = len(line) - len(line.lstrip())
    try:
        tree = ast.parse(line.strip().decode(errors="replace"))
    except SyntaxError:
        return colno, end_colno

    for node in ast.walk(tree):  # outermost first; offsets are in UTF-8 bytes, as colno
        if not isinstance(node, ast.Call) or node.end_col_offset is None:
            continue

        start, end = node.col_offset + indent, node.end_col_offset + indent
        if start <= colno and end_colno <= end:
            return start, end

    return colno, end_colno


def _called(frame: types.FrameType, lineno: int | None, lasti: int) -> str | None:
    """Return the text of the call at this instruction, as ``client.get()``."""
    source = _call_source(frame.f_code, lineno, lasti)
    call = _find_call(source) if source else None
    return f"{ast.unparse(call.func)}()" if call is not None else None


def _find_call(source: str) -> ast.Call | None:
    tree: ast.AST
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        try:
            tree = ast.parse(source.strip())
        except SyntaxError:
            return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            return node

    return None
