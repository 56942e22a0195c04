"""CPU-heavy report code, run in worker processes by ``@offload.process``.

A module of its own, so that a worker process imports this and nothing of the web app: the
function is sent to the worker by reference (``reports.count_primes``) and runs there.
"""

from __future__ import annotations

import offload


@offload.process
def count_primes(below: int) -> int:
    """Count the primes below ``below`` by trial division: pure-Python CPU work."""
    count = 0
    for n in range(2, below):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1

    return count
