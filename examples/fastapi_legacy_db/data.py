"""The data layer: psycopg 3's sync API on a ``psycopg_pool.ConnectionPool``, as legacy code is.

Every function here blocks. ``db`` is a named offload thread pool sized to the connection pool
(:func:`open_connections` sets both from one number), so at most as many queries run as there
are connections, and no thread waits inside psycopg's pool for a connection: the calls beyond
that wait in offload's queue, which ``max_pending`` bounds.
"""

from __future__ import annotations

from psycopg_pool import ConnectionPool

import offload

APPLICATION_NAME = "offload-example"  # how the app's connections show in pg_stat_activity

db = offload.ThreadPool("db")  # sized in open_connections(): one thread per connection

_connections: ConnectionPool | None = None


async def open_connections(conninfo: str, size: int, max_pending: int) -> None:
    """Open ``size`` connections, and size the ``db`` pool to them."""
    global _connections
    db.configure(max_workers=size, max_pending=max_pending)
    pool = ConnectionPool(
        conninfo,
        min_size=size,
        max_size=size,
        open=False,
        kwargs={"application_name": APPLICATION_NAME},
    )
    await offload.call(pool.open, wait=True, timeout=30.0)  # connecting blocks too
    _connections = pool


async def close_connections() -> None:
    """Close every connection (the ``db`` pool must be closed first: no query runs)."""
    global _connections
    pool, _connections = _connections, None
    if pool is not None:
        await offload.call(pool.close)


def _pool() -> ConnectionPool:
    if _connections is None:
        raise RuntimeError("the connection pool is not open: call open_connections() first")

    return _connections


@db
def slow_query(seconds: float) -> int:
    """Run a query that takes ``seconds`` in the database; return its backend's pid."""
    with _pool().connection() as conn:
        conn.execute("select pg_sleep(%s)", (seconds,))  # the slow query
        row = conn.execute("select pg_backend_pid()").fetchone()

    assert row is not None
    return int(row[0])


@db
def server_version() -> str:
    """Return the database server's version."""
    with _pool().connection() as conn:
        row = conn.execute("show server_version").fetchone()

    assert row is not None
    return str(row[0])
