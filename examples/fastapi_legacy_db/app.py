"""A FastAPI service on a legacy sync PostgreSQL driver, offloaded.

Run it (from this directory) with ``uvicorn app:app``. Settings come from the environment:

``DATABASE_URL``       psycopg conninfo (default ``host=127.0.0.1 dbname=example user=postgres``)
``DB_POOL_SIZE``       connections, and the ``db`` pool's ``max_workers`` (default 4)
``DB_MAX_PENDING``     queries that may wait for a connection; more get 503 (default 16)
``DATA_LAYER``         ``offload`` (default); ``threadpool``: FastAPI's ``def`` endpoints;
                       ``direct``: the data layer called in ``async def``, blocking the loop
``MONITOR_THRESHOLD``  seconds the loop may stall before the monitor logs it (default 0.1)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import data
import offload
import reports
from metrics import OffloadCollector

logger = logging.getLogger("example")


@dataclass(frozen=True)
class Settings:
    database_url: str
    db_pool_size: int
    db_max_pending: int
    data_layer: str
    monitor_threshold: float

    @classmethod
    def from_env(cls) -> Settings:
        data_layer = os.environ.get("DATA_LAYER", "offload")
        if data_layer not in ("offload", "threadpool", "direct"):
            raise ValueError(f"DATA_LAYER={data_layer!r}: use offload, threadpool or direct")

        return cls(
            database_url=os.environ.get(
                "DATABASE_URL", "host=127.0.0.1 dbname=example user=postgres"
            ),
            db_pool_size=int(os.environ.get("DB_POOL_SIZE", "4")),
            db_max_pending=int(os.environ.get("DB_MAX_PENDING", "16")),
            data_layer=data_layer,
            monitor_threshold=float(os.environ.get("MONITOR_THRESHOLD", "0.1")),
        )


def create_app(settings: Settings) -> FastAPI:
    registry = CollectorRegistry()
    collector = OffloadCollector([data.db, offload.process], monitor=None)
    registry.register(collector)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every stall of this loop from now on is logged as a warning on the "offload"
        # logger, naming the line that blocked.
        monitor = offload.monitor.install(threshold=settings.monitor_threshold)
        collector.monitor = monitor
        size = settings.db_pool_size
        await data.open_connections(settings.database_url, size, settings.db_max_pending)
        logger.info("ready: data layer %s, %d connections", settings.data_layer, size)
        try:
            yield
        finally:
            # Running queries finish (up to shutdown_timeout), then the connections close.
            await data.db.aclose()
            await offload.process.aclose()
            await data.close_connections()
            await offload.thread.aclose()
            monitor.uninstall()
            left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
            logger.info("stopped: threads left %s", left)

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(offload.Overloaded)
    async def overloaded(request: Request, exc: offload.Overloaded) -> Response:
        # Shed load: the call was never queued; the client may retry elsewhere or later.
        headers = {"Retry-After": "1"}
        return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)

    @app.exception_handler(psycopg.errors.QueryCanceled)
    async def query_canceled(request: Request, exc: psycopg.errors.QueryCanceled) -> Response:
        return JSONResponse({"detail": "the database cancelled the query"}, status_code=504)

    @app.get("/health")
    async def health() -> dict[str, float]:
        return {"answered": time.time()}

    if settings.data_layer == "offload":

        @app.get("/slow")
        async def slow(seconds: float = 1.0) -> dict[str, float]:
            backend = await data.slow_query(seconds)  # a db thread runs it; the loop goes on
            return {"backend": backend, "ended": time.time()}

    elif settings.data_layer == "threadpool":

        @app.get("/slow")
        def slow_in_threadpool(seconds: float = 1.0) -> dict[str, float]:
            # FastAPI runs a def endpoint in anyio's thread pool (40 threads, no queue bound).
            backend = data.slow_query.__wrapped__(seconds)
            return {"backend": backend, "ended": time.time()}

    else:

        @app.get("/slow")
        async def slow_blocking(seconds: float = 1.0) -> dict[str, float]:
            backend = data.slow_query.__wrapped__(seconds)  # blocks the event loop
            return {"backend": backend, "ended": time.time()}

    @app.get("/report")
    async def report(below: int = 20_000) -> dict[str, int]:
        return {"primes": await reports.count_primes(below)}  # a worker process runs it

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
app = create_app(Settings.from_env())
