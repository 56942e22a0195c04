"""Benchmark the example service: ``/health`` latency and ``/slow`` throughput, per data layer.

Not a test: it prints figures. For each data layer (``direct``: the sync data layer called in
``async def``; ``threadpool``: FastAPI's ``def`` endpoints, run in anyio's thread pool;
``offload``: the ``db`` pool) it starts the app under uvicorn, keeps ``--clients`` requests to
``/slow`` (a query of ``--query`` seconds) in flight for ``--seconds``, and meanwhile asks
``/health`` one request at a time. The variants take turns, ``--rounds`` times, in an order
that rotates each round, and the medians over the rounds are printed.

    python bench.py                          # starts a throwaway PostgreSQL (needs pg_ctl)
    python bench.py --database-url "host=127.0.0.1 dbname=example user=postgres"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
VARIANTS = ("direct", "threadpool", "offload")


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start PostgreSQL in a temporary directory (as ``nobody`` when run as root)."""
    from pytest_postgresql.executors import PostgreSQLExecutor
    from pytest_postgresql.janitor import DatabaseJanitor

    found = shutil.which("pg_ctl") or max(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    base = Path(tempfile.mkdtemp(prefix="offload-bench-pg-"))
    try:
        pg_ctl = found
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(base, nobody.pw_uid, nobody.pw_gid)
            base.chmod(0o755)
            wrapper = base / "pg_ctl"
            wrapper.write_text(f'#!/bin/sh\nexec runuser -u nobody -- "{found}" "$@"\n')
            wrapper.chmod(0o755)
            pg_ctl = str(wrapper)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]

        server = PostgreSQLExecutor(
            executable=pg_ctl,
            host="127.0.0.1",
            port=port,
            datadir=str(base / "data"),
            unixsocketdir=str(base),
            logfile=str(base / "postgresql.log"),
            startparams="-w",
            dbname="example",
        )
        server.start()
        try:
            with DatabaseJanitor(user="postgres", host="127.0.0.1", port=port, dbname="example"):
                yield f"host=127.0.0.1 port={port} user=postgres dbname=example"
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def app(database_url: str, data_layer: str, pool_size: int) -> Iterator[str]:
    """Run the app under uvicorn; yield its URL."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DB_POOL_SIZE": str(pool_size),
        "DB_MAX_PENDING": "1000",
        "DATA_LAYER": data_layer,
        "MONITOR_THRESHOLD": "0.1",
    }
    command = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "0"]
    command += ["--no-access-log"]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = None
        for _ in range(3000):
            log.seek(0)
            text = log.read().decode(errors="replace")
            match = re.search(r"Uvicorn running on (http://\S+)", text)
            if match:
                url = match.group(1)
                break

            if process.poll() is not None:
                raise RuntimeError(f"the app exited:\n{text}")

            time.sleep(0.01)

        if url is None:
            raise RuntimeError("uvicorn did not say where it listens")

        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()


async def measure(url: str, clients: int, query: float, seconds: float) -> tuple[float, ...]:
    """Return /health's p50 and p99 latency (s), how many times it answered, and /slow's
    throughput (requests/s)."""
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        await client.get("/slow", params={"seconds": 0})  # warm up: connections, threads
        await client.get("/report", params={"below": 10})
        stop = time.perf_counter() + seconds
        done = 0

        async def load() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                response = await client.get("/slow", params={"seconds": query})
                response.raise_for_status()
                done += 1

        latencies: list[float] = []

        async def probe() -> None:
            await asyncio.sleep(query)  # once the load is on
            while time.perf_counter() < stop:
                started = time.perf_counter()
                (await client.get("/health")).raise_for_status()
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)

        started = time.perf_counter()
        await asyncio.gather(probe(), *(load() for _ in range(clients)))
        elapsed = time.perf_counter() - started

    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return statistics.median(latencies), p99, len(latencies), done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="psycopg conninfo (default: a throwaway server)")
    parser.add_argument("--pool-size", type=int, default=4, help="connections (default 4)")
    parser.add_argument("--clients", type=int, default=16, help="/slow requests in flight")
    parser.add_argument("--query", type=float, default=0.05, help="seconds per query")
    parser.add_argument("--seconds", type=float, default=5.0, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        url = args.database_url or stack.enter_context(throwaway_postgres())
        figures: dict[str, list[tuple[float, ...]]] = {variant: [] for variant in VARIANTS}
        for round_ in range(args.rounds):
            shift = round_ % len(VARIANTS)  # each variant takes each turn: no order bias
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                with app(url, variant, args.pool_size) as base:
                    result = asyncio.run(measure(base, args.clients, args.query, args.seconds))

                figures[variant].append(result)
                p50, p99, answers, rate = result
                print(
                    f"round {round_ + 1} {variant:>10}: /health p50 {p50 * 1000:7.1f} ms, "
                    f"p99 {p99 * 1000:7.1f} ms, {answers:4.0f} answers; /slow {rate:6.1f}/s",
                    file=sys.stderr,
                )

    print(
        f"\n{args.clients} clients on /slow ({args.query * 1000:.0f} ms queries, "
        f"{args.pool_size} connections), {args.rounds} rounds of {args.seconds:.0f} s; medians:\n"
    )
    print("| data layer | /health p50 | /health p99 | /health answers | /slow throughput |")
    print("| --- | ---: | ---: | ---: | ---: |")
    names = {
        "direct": "called directly in `async def`",
        "threadpool": "FastAPI `def` endpoints (anyio threads)",
        "offload": "offload `db` pool",
    }
    for variant in VARIANTS:
        p50 = statistics.median(r[0] for r in figures[variant]) * 1000
        p99 = statistics.median(r[1] for r in figures[variant]) * 1000
        answers = statistics.median(r[2] for r in figures[variant])
        rate = statistics.median(r[3] for r in figures[variant])
        print(
            f"| {names[variant]} | {p50:.1f} ms | {p99:.1f} ms | {answers:.0f} | "
            f"{rate:.0f} req/s |"
        )


if __name__ == "__main__":
    main()
