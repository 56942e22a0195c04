"""Process-wide hooks that tell installed monitors about every loop that starts."""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ("HOOKS", "Hooks")


class TrioImportHook(importlib.abc.MetaPathFinder):
    """Patch trio's entry points as soon as trio is imported."""

    def __init__(self, on_import: Callable[[types.ModuleType], None]) -> None:
        self._on_import = on_import
        self._busy = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "trio" or self._busy:
            return None

        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False

        loader = spec.loader if spec is not None else None
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None

        exec_module = loader.exec_module
        on_import = self._on_import

        def exec_and_patch(module: types.ModuleType) -> None:
            exec_module(module)
            on_import(module)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


class Hooks:
    """Process-wide hooks, on while any monitor is installed.

    * asyncio and uvloop call ``sys.set_asyncgen_hooks`` with the loop's own hook when a loop
      starts running, and again when it stops: the wrapper hears both, for any loop.
    * trio's ``run`` and ``start_guest_run`` take instruments: the wrapped ones add one whose
      ``before_run`` starts the heartbeat. If trio is not imported yet, an import hook wraps
      them when it is.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._monitors: list[Monitor] = []
        self._original_set_hooks: Callable[..., None] | None = None
        self._trio_originals: dict[str, Callable[..., Any]] = {}
        self._import_hook: TrioImportHook | None = None
        self._instrument_class: type[Any] | None = None

    def monitors(self) -> list[Monitor]:
        with self._lock:
            return list(self._monitors)

    def add(self, monitor: Monitor) -> None:
        with self._lock:
            self._monitors.append(monitor)
            if len(self._monitors) == 1:
                self._enable()

    def remove(self, monitor: Monitor) -> None:
        with self._lock:
            if monitor in self._monitors:
                self._monitors.remove(monitor)
                if not self._monitors:
                    self._disable()

    def _enable(self) -> None:
        self._original_set_hooks = original = sys.set_asyncgen_hooks

        def set_asyncgen_hooks(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            firstiter = kwargs["firstiter"] if "firstiter" in kwargs else (args or [None])[0]
            owner = getattr(firstiter, "__self__", None)
            if isinstance(owner, asyncio.AbstractEventLoop):
                self._asyncio_started(owner, sys._getframe(1))
            else:
                self._asyncio_stopped()

        _wraps(set_asyncgen_hooks, original)
        sys.set_asyncgen_hooks = set_asyncgen_hooks
        if "trio" in sys.modules:
            self._patch_trio(sys.modules["trio"])
        elif importlib.util.find_spec("trio") is not None:
            self._import_hook = TrioImportHook(self._patch_trio)
            sys.meta_path.insert(0, self._import_hook)

    def _disable(self) -> None:
        original = self._original_set_hooks
        ours = getattr(sys.set_asyncgen_hooks, "__wrapped__", None) is original
        if original is not None and ours:
            sys.set_asyncgen_hooks = original

        self._original_set_hooks = None
        if self._import_hook is not None:
            try:
                sys.meta_path.remove(self._import_hook)
            except ValueError:  # pragma: no cover - someone else removed it
                pass

            self._import_hook = None

        trio_module = sys.modules.get("trio")
        if trio_module is not None and self._trio_originals:
            lowlevel = trio_module.lowlevel
            for owner, name in ((trio_module, "run"), (lowlevel, "start_guest_run")):
                wrapped = self._trio_originals.get(name)
                if getattr(getattr(owner, name), "__wrapped__", None) is wrapped:
                    setattr(owner, name, wrapped)

        self._trio_originals.clear()

    # asyncio ---------------------------------------------------------------------------------

    def _asyncio_started(self, loop: asyncio.AbstractEventLoop, below: types.FrameType) -> None:
        for monitor in self.monitors():
            monitor._asyncio_started(loop, below)

    def _asyncio_stopped(self) -> None:
        for monitor in self.monitors():
            monitor._asyncio_stopped()

    # trio ------------------------------------------------------------------------------------

    def _patch_trio(self, trio_module: types.ModuleType) -> None:
        with self._lock:
            if not self._monitors or self._trio_originals:
                return

            instrument = self._trio_instrument()
            lowlevel = trio_module.lowlevel
            for owner, name in ((trio_module, "run"), (lowlevel, "start_guest_run")):
                original = getattr(owner, name)
                self._trio_originals[name] = original
                setattr(owner, name, _with_instrument(original, instrument))

    def _trio_instrument(self) -> object:
        import trio

        hooks = self

        class _Instrument(trio.abc.Instrument):
            def before_run(self) -> None:
                hooks._trio_started(sys._getframe(1))

            def after_run(self) -> None:
                hooks._trio_ended()

        return _Instrument()

    def _trio_started(self, below: types.FrameType) -> None:
        for monitor in self.monitors():
            monitor._trio_started(below)

    def _trio_ended(self) -> None:
        for monitor in self.monitors():
            monitor._trio_ended()


def _wraps(wrapper: Callable[..., Any], wrapped: Callable[..., Any]) -> None:
    """Mark ``wrapper`` as a stand-in for ``wrapped`` (as functools.wraps, for builtins too)."""
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        value = getattr(wrapped, name, None)
        if value is not None:
            setattr(wrapper, name, value)

    wrapper.__wrapped__ = wrapped  # type: ignore[attr-defined]


def _with_instrument(original: Callable[..., Any], instrument: object) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = (*kwargs.get("instruments", ()), instrument)
        return original(*args, **kwargs)

    _wraps(run, original)
    return run


HOOKS: Final = Hooks()
