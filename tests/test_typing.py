"""Static typing: decorated functions keep their signatures for mypy --strict and pyright.

The ``assert_type`` lines are checked by the type checkers in CI; at run time they only
return their argument. The lines that must not type-check carry an ignore comment that
the checkers would report as unused if the error went away.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Generator
from typing import Any

from typing_extensions import assert_type

import offload
from _support import new_pool


@offload.thread
def fetch(url: str, *, retries: int = 3) -> bytes:
    return url.encode() * retries


@offload.thread(limit=2, timeout=1.0, cancel="wait")
def query(sql: str, *params: object) -> list[tuple[object, ...]]:
    return [(sql, *params)]


@offload.thread
def lines(text: str) -> Generator[str, None, None]:
    yield from text.splitlines()


class Repository:
    @offload.thread
    def load(self, key: int) -> str:
        return str(key)

    @staticmethod
    @offload.thread
    def version() -> int:
        return 1

    @classmethod
    @offload.thread
    def make(cls, value: int) -> Repository:
        return cls()


def parse(text: str, base: int = 10) -> int:
    return int(text, base)


async def test_decorated_signatures() -> None:
    """Decorated functions type-check as coroutine functions with the original parameters."""
    decorated: Callable[..., Coroutine[Any, Any, bytes]] = fetch
    assert decorated is fetch
    assert_type(await fetch("a", retries=2), bytes)
    assert_type(await query("select ?", 1), list[tuple[object, ...]])
    assert_type(fetch("x"), Coroutine[Any, Any, bytes]).close()
    assert_type(lines("a\nb"), AsyncGenerator[str, None])
    assert_type([line async for line in lines("a\nb")], list[str])
    assert_type(await Repository().load(3), str)
    assert_type(await Repository.version(), int)
    assert_type(await Repository.make(2), Repository)


async def test_call_signatures() -> None:
    """``call`` takes ``fn``'s own arguments and returns its result type."""
    assert_type(await offload.call(parse, "10", base=2), int)
    assert_type(await offload.thread.call(parse, "7"), int)
    pool = new_pool()
    assert_type(await pool.call(len, "abc"), int)


async def test_wrong_arguments_are_type_errors() -> None:
    """Wrong arguments to a decorated function or to ``call`` are type errors."""
    with contextlib.suppress(Exception):
        await fetch(1)  # type: ignore[arg-type]

    with contextlib.suppress(Exception):
        await fetch("a", retry=2)  # type: ignore[call-arg]

    with contextlib.suppress(Exception):
        await offload.call(parse, "1", bass=2)  # type: ignore[call-arg]


async def _words() -> AsyncIterator[str]:
    yield "11"


async def test_map_signatures() -> None:
    """``map`` yields ``fn``'s result type, for sync and async inputs and decorated
    functions alike."""
    pool = new_pool()
    assert_type(pool.map(parse, ["1"]), offload.MapIterator[int])
    assert_type([n async for n in pool.map(parse, ["1", "2"], ordered=False)], list[int])
    assert_type([n async for n in pool.map(parse, _words(), max_in_flight=2)], list[int])
    assert_type([b async for b in offload.thread.map(fetch, ["u"])], list[bytes])
    async with pool.map(len, ["ab"]) as results:
        assert_type(results, offload.MapIterator[int])
        assert_type(await results.__anext__(), int)
        await results.aclose()


def test_map_wrong_items_are_type_errors() -> None:
    """Items of the wrong type for ``fn`` are a type error."""
    pool = new_pool()
    with contextlib.suppress(Exception):
        pool.map(parse, [1, 2])  # type: ignore[arg-type]


def test_public_types() -> None:
    """Settings and stats are typed snapshots."""
    stats = new_pool().stats()
    assert_type(stats, offload.PoolStats)
    assert_type(stats.run_time.p99, float)
    assert_type(new_pool().settings(), offload.ThreadSettings)
    assert_type(offload.cancelled(), bool)
