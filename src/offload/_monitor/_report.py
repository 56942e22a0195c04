"""`Report`: the events of one monitor summed up by site."""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._events import (
    MAX_SPLIT,
    BlockingEvent,
    BlockingKind,
    ThreadShare,
    code_text,
    thread_text,
    where,
)

__all__ = ("Report", "ReportRow", "RowTotals")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRow:
    """Every event at one site (or, for saturation and starvation, of one kind).

    Attributes:
        kind: the kind that took the most time here.
        site: the site, or ``None`` for saturation and starvation.
        count: how many events involved this site (one event can involve several sites).
        total: seconds the loop spent blocked here, over all events.
        max: the longest time in one event.
        fix: how to stop it, in offload's API.
        busy_threads: for starvation (and saturation), the threads that held the GIL or the
            CPUs, by site, each with its share of ``total``.
    """

    kind: BlockingKind
    site: traceback.FrameSummary | None
    count: int
    total: float
    max: float
    fix: str
    busy_threads: tuple[ThreadShare, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """What a monitor saw, by site: ``print(monitor.report())`` shows it as a table.

    Attributes:
        threshold: the monitor's threshold.
        events: how many events the monitor recorded.
        rows: one row per site (and per kind without a site), the most total time first.
    """

    threshold: float
    events: int
    rows: tuple[ReportRow, ...]

    def __str__(self) -> str:
        if not self.rows:
            return f"offload.monitor: the event loop never blocked past {self.threshold:g} s."

        total = sum(row.total for row in self.rows)
        sites = sum(row.site is not None for row in self.rows)
        kinds = [row.kind for row in self.rows if row.site is None]
        shared = sum(row.count for row in self.rows) > self.events
        lines = [
            (
                f"offload.monitor: {_plural(self.events, 'event')} past {self.threshold:g} s, "
                f"{total:.2f} s in all"
                + (f", at {_plural(sites, 'site')}" if sites else "")
                + (" (an event that blocked at several sites counts in each)" if shared else "")
                + (f"; {_and(kinds)}, with no single line to blame" if kinds else "")
                + ":"
            ),
            "",
            f"{'events':>6} {'total':>9} {'max':>9}  {'kind':<11} where",
        ]
        indent = " " * 39
        for row in self.rows:
            where_text = "(no single line)" if row.site is None else where(row.site)
            lines.append(
                f"{row.count:>6} {row.total:>7.3f} s {row.max:>7.3f} s  {row.kind:<11} "
                f"{where_text}"
            )
            if row.site is not None:
                code = code_text(row.site)
                if code:
                    lines.append(f"{indent}  {code}")

            lines.extend(f"{indent}  {thread_text(busy)}" for busy in row.busy_threads)
            lines.append(f"{indent}  fix: {row.fix}")

        return "\n".join(lines)


@dataclass(slots=True)
class RowTotals:
    site: traceback.FrameSummary | None
    fix: str
    count: int = 0
    total: float = 0.0
    longest: float = 0.0
    by_kind: dict[BlockingKind, float] = field(default_factory=dict[BlockingKind, float])
    # Busy threads by site: (name, site) of the busiest, and their seconds on a CPU.
    busy: dict[object, tuple[ThreadShare, float, set[str]]] = field(
        default_factory=dict[object, Any]
    )

    def add(self, kind: BlockingKind, duration: float, fix: str) -> None:
        self.count += 1
        self.total += duration
        if duration >= self.longest:  # the longest event's fix speaks for the row
            self.longest = duration
            self.fix = fix

        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + duration

    def add_busy(self, event: BlockingEvent) -> None:
        for busy in event.busy_threads:
            site = busy.site
            key = (site.filename, site.lineno, site.name) if site is not None else busy.name
            _, seconds, names = self.busy.get(key, (busy, 0.0, set[str]()))
            names.add(busy.name)
            self.busy[key] = (busy, seconds + busy.share * event.duration, names)

    def busy_threads(self) -> tuple[ThreadShare, ...]:
        shares = [
            ThreadShare(
                name=busy.name if len(names) == 1 else f"{len(names)} threads",
                site=busy.site,
                share=min(seconds / self.total, 1.0),
            )
            for busy, seconds, names in self.busy.values()
            if self.total > 0
        ]
        shares.sort(key=lambda busy: busy.share, reverse=True)
        return tuple(shares[:MAX_SPLIT])
