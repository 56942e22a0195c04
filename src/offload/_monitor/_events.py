"""What the monitor records: one `BlockingEvent` per stall, and how events read as text."""

from __future__ import annotations

import importlib
import os
import tokenize
import traceback
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

__all__ = ("BlockingEvent", "BlockingKind", "SiteShare", "SiteKind", "ThreadShare")

BlockingKind: TypeAlias = Literal["blocking", "cpu", "saturation", "starvation"]
"""What stopped the loop: see `BlockingEvent.kind`."""

SiteKind: TypeAlias = Literal["blocking", "cpu"]

_KIND_TEXT: Final[dict[BlockingKind, str]] = {
    "blocking": "a blocking call: the loop thread waited in the kernel",
    "cpu": "CPU-bound work on the loop thread",
    "saturation": "saturation: many short steps, none blocking alone",
    "starvation": (
        "starvation: the loop thread was ready to run, but other threads held the GIL or the CPUs"
    ),
}

MAX_SPLIT: Final = 8
"""The most sites (and busy threads) one event or report row names."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteShare:
    """The time one site took within one blocking step.

    Attributes:
        site: the innermost frame of user code at this site.
        duration: seconds the loop spent here.
        share: ``duration`` as a fraction of the event's duration.
        kind: ``"blocking"`` or ``"cpu"``, for this site alone.
        fix: how to stop this site from blocking the loop, in offload's API.
    """

    site: traceback.FrameSummary
    duration: float
    share: float
    kind: SiteKind
    fix: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadShare:
    """A thread that kept the CPUs or the GIL while the loop starved.

    Attributes:
        name: the thread's name (``threading.Thread.name``).
        site: its innermost frame of user code where it spent the most time (for an
            offloaded function, that function), or ``None`` if it ran no user code.
        share: the fraction of the stall it spent on a CPU.
    """

    name: str
    site: traceback.FrameSummary | None
    share: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockingEvent:
    """The event loop did not turn for longer than the monitor's threshold.

    ``str(event)`` reads as a short report: duration, kind, site, fix and stack.

    Attributes:
        duration: seconds the loop did not turn (for ``blocking`` and ``cpu``: the one step).
        kind: what the step did most: ``"blocking"`` (the loop thread waited in a blocking
            call), ``"cpu"`` (it computed), ``"saturation"`` (many short steps, none blocking
            alone) or ``"starvation"`` (it was ready to run, but other threads held the GIL or
            the CPUs).
        site: the innermost frame of user code (not the standard library, site-packages or
            offload) where the step spent the most time (its kind is in ``split``); ``None``
            for saturation and starvation, which no line causes.
        leaf: the innermost Python frame at that site, wherever it is.
        stack: the step's stack at that site, outermost first (empty without a site).
        split: how the time split between sites when one step blocked in several, in the
            order they ran.
        fix: how to stop it, in offload's API.
        threshold: the monitor's threshold.
        detected_after: seconds after the loop stopped turning that the monitor knew it was
            past the threshold (a C call that holds the GIL is seen when it returns).
        cpu: the fraction of ``duration`` the loop thread spent on a CPU, or ``None`` where the
            platform has no per-thread CPU clock.
        loop: which loop it was, e.g. ``"asyncio loop in thread 'MainThread'"``.
        started: when the loop stopped turning, as a ``time.time()`` timestamp.
        busy_threads: for starvation (and saturation that other threads slowed down), the
            other threads that held the GIL or the CPUs, the busiest first.
    """

    duration: float
    kind: BlockingKind
    site: traceback.FrameSummary | None
    leaf: traceback.FrameSummary | None
    stack: traceback.StackSummary = field(repr=False)
    split: tuple[SiteShare, ...]
    fix: str
    threshold: float
    detected_after: float
    cpu: float | None
    loop: str
    started: float
    busy_threads: tuple[ThreadShare, ...] = ()

    def __str__(self) -> str:
        lines = [f"event loop blocked for {self.duration:.3f} s: {_KIND_TEXT[self.kind]}"]
        if self.site is not None:
            lines.append(f"  at {where(self.site)}")
            code = code_text(self.site)
            if code:
                lines.append(f"    {code}")

        lines.append(f"  fix: {self.fix}")
        if len(self.split) > 1:
            lines.append("  time split between the sites of this step:")
            lines.extend(
                f"    {share.share:4.0%} {share.duration:7.3f} s  {share.kind:<8}  "
                f"{where(share.site)}: {code_text(share.site)}"
                for share in self.split
            )

        if self.busy_threads:
            lines.append("  threads that held the GIL or the CPUs:")
            lines.extend(f"    {thread_text(busy)}" for busy in self.busy_threads)

        if self.stack:
            lines.append("Stack (most recent call last):")
            lines.append(format_stack(self.stack))

        return "\n".join(lines)


def _import_machinery(frame: traceback.FrameSummary) -> bool:
    filename = frame.filename
    return filename.startswith("<frozen importlib.") or filename == _IMPORTLIB


_IMPORTLIB: Final = importlib.__file__


def format_stack(stack: traceback.StackSummary) -> str:
    """Format a stack as a traceback does, with Python's import machinery folded."""
    parts: list[str] = []
    folded = 0
    for frame in stack:
        if _import_machinery(frame):
            folded += 1
            continue

        if folded:
            parts.append(f"  [{folded} frames of Python's import machinery]\n")
            folded = 0

        parts.extend(traceback.StackSummary.from_list([frame]).format())

    if folded:
        parts.append(f"  [{folded} frames of Python's import machinery]\n")

    return "".join(parts).rstrip("\n")


def thread_text(busy: ThreadShare) -> str:
    place = "no user code" if busy.site is None else where(busy.site)
    code = code_text(busy.site) if busy.site is not None else ""
    name = busy.name if busy.name.endswith(" threads") else f"thread {busy.name!r}"
    return f"{busy.share:4.0%} {name}  {place}" + (f": {code}" if code else "")


def where(site: traceback.FrameSummary) -> str:
    filename = site.filename
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive, on Windows
        relative = filename

    if not relative.startswith(os.pardir):
        filename = relative

    return f"{filename}:{site.lineno} in {site.name}"


def code_text(site: traceback.FrameSummary) -> str:
    """Return the site's source line without a trailing comment."""
    line = (site.line or "").strip()
    if "#" not in line:
        return line

    try:
        tokens = list(tokenize.generate_tokens(iter([line + "\n"]).__next__))
    except (tokenize.TokenError, SyntaxError):
        return line

    for token in tokens:
        if token.type == tokenize.COMMENT:
            return line[: token.start[1]].rstrip()

    return line
