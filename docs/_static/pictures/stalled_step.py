"""A request handler whose one step blocks its event loop at three sites.

The scenario of docs/_static/pictures/monitor.png: ``make.py --measure`` runs it as a user
would, ``python -m offload watch --json FILE stalled_step.py``, and draws the split of the
longest stall from that file.
"""

from __future__ import annotations

import asyncio
import json
import time


def fetch_rates() -> dict[str, float]:
    # Stands for requests.get(...): the loop thread waits in the kernel.
    time.sleep(0.25)
    return {"EUR": 1.0, "USD": 1.08}


def build_rows(n: int, rates: dict[str, float]) -> list[dict[str, float]]:
    # Pure-Python work on the loop thread.
    return [{"id": i, "eur": i * rates["EUR"], "usd": i * rates["USD"]} for i in range(n)]


async def handle_request() -> int:
    rates = fetch_rates()
    rows = build_rows(200_000, rates)
    # CPU-bound, still on the loop thread.
    body = json.dumps(rows, indent=2)
    await asyncio.sleep(0)
    return len(body)


async def main() -> None:
    await asyncio.sleep(0.05)
    await handle_request()
    await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
