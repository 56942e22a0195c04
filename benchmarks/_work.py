"""What the executor benchmarks run: module-level functions in an importable module.

A dask worker imports the functions it runs by name, so they cannot live in the ``__main__``
script that starts the benchmark (the worker's ``__main__`` is not that script).
"""

from __future__ import annotations

import time


def sleep_for(seconds: float) -> None:
    """A call that takes ``seconds`` and leaves the CPU free (the overhead benchmark)."""
    time.sleep(seconds)


def crunch(n: int) -> int:
    """Pure-Python CPU work: the sum of the squares below ``n`` (the scale-out benchmark)."""
    total = 0
    for i in range(n):
        total += i * i

    return total
