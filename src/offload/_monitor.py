"""Placeholder: the blocking monitor is being written (issue 4)."""

from __future__ import annotations

__all__ = ("BlockingEvent", "Monitor", "monitor")


class BlockingEvent:
    """Placeholder."""


class Monitor:
    """Placeholder."""


def monitor() -> Monitor:
    """Placeholder."""
    raise NotImplementedError
