"""Where code lives: the user's, a library's (site-packages), or the event loop's own."""

from __future__ import annotations

import os
import site
import sysconfig
import threading
import types
from typing import Final

__all__ = ("LIBRARY", "LOOP", "USER", "USER_CODE_MARK", "Places", "get_places")

USER: Final = 0
LIBRARY: Final = 1
LOOP: Final = 2

# Packages in site-packages that run the loop itself: a step made only of their frames is the
# loop's own work, not a library's.
_LOOP_PACKAGES: Final = frozenset({"anyio", "outcome", "sniffio", "trio", "uvloop"})

USER_CODE_MARK: Final = "__offload_user_code__"
"""A module of offload that sets this global to ``True`` stands in for user code (the demo).

As pytest's ``__tracebackhide__``, it is read from the frame's globals.
"""


class Places:
    """Classify code by its file: user code, a library (site-packages), or the loop's own code.

    The standard library, offload and the event loop packages are the loop's own code; a
    module of offload marked with `USER_CODE_MARK` (the demo) stands in for user code, since
    it shows what a user's code does.
    """

    def __init__(self) -> None:
        package = os.path.dirname(os.path.dirname(__file__))  # offload, above _monitor
        self._offload = self._normal(package) + os.sep
        paths = sysconfig.get_paths()
        site_dirs = {paths["purelib"], paths["platlib"]}
        try:
            site_dirs.update(site.getsitepackages())
        except AttributeError:  # pragma: no cover - old virtualenv's site module
            pass

        user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
        if user_site:
            site_dirs.add(user_site)

        self._site = sorted({self._normal(d) + os.sep for d in site_dirs}, key=len, reverse=True)
        std_dirs = {paths["stdlib"], paths["platstdlib"]}
        self._std = sorted({self._normal(d) + os.sep for d in std_dirs}, key=len, reverse=True)
        self._cache: dict[str, int] = {}

    @staticmethod
    def _normal(path: str) -> str:
        return os.path.normcase(os.path.realpath(path))

    def __call__(self, frame: types.FrameType) -> int:
        """Where the code of ``frame`` lives: `USER`, `LIBRARY` or `LOOP`."""
        filename = frame.f_code.co_filename
        place = self._cache.get(filename)
        if place is None:
            place = self._cache[filename] = self._classify(filename, frame.f_globals)

        return place

    def _classify(self, filename: str, module: dict[str, object]) -> int:
        if filename.startswith("<"):
            return LOOP if filename.startswith("<frozen") else USER

        path = self._normal(filename)
        if path.startswith(self._offload):
            return USER if module.get(USER_CODE_MARK) is True else LOOP

        for directory in self._site:
            if path.startswith(directory):
                package = path[len(directory) :].split(os.sep, 1)[0]
                name = package.split(".", 1)[0].lower()
                return LOOP if name in _LOOP_PACKAGES else LIBRARY

        for directory in self._std:
            if path.startswith(directory):
                return LOOP

        return USER


_places_lock = threading.Lock()
_places: Places | None = None


def get_places() -> Places:
    global _places
    with _places_lock:
        if _places is None:
            _places = Places()

        return _places
