"""Policy: ``@pool`` and ``@pool(...)``: a blocking function becomes an async one.

What differs between pool kinds (how a function is prepared for the workers, whether they
take generators) comes from the pool's :class:`~offload._kinds.PoolKind`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ._calls import run, run_with_timeout
from ._generators import offload_generator
from ._job import qualname
from ._options import Options

if TYPE_CHECKING:
    from ._pools import _Pool

__all__ = ("decorate",)


def decorate(pool: _Pool[Any], options: Options, fn: Any) -> Any:
    """Return the async version of ``fn`` (a function, method, staticmethod, classmethod or
    generator function) that runs it in ``pool`` with ``options``.

    Raises:
        TypeError: ``fn`` is async already, not callable, or a generator function for a pool
            whose workers take none.
    """
    if isinstance(fn, staticmethod):
        return staticmethod(decorate(pool, options, fn.__func__))

    if isinstance(fn, classmethod):
        return classmethod(decorate(pool, options, cast(Any, fn).__func__))

    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{qualname(fn)} is already async; offload runs blocking (sync) functions. "
            f"Await it directly instead of decorating it with {pool!r}"
        )

    if not callable(fn):
        raise TypeError(f"{pool!r} decorates a function, not {fn!r}")

    kind = pool._kind
    target: Callable[..., Any] = kind.prepare(fn, pool.name)
    if inspect.isgeneratorfunction(fn):
        if not kind.generators:
            raise TypeError(
                f"{qualname(fn)} is a generator function: generators run in thread pools "
                f"(use @offload.thread), since a generator cannot be sent to another process"
            )

        return offload_generator(pool, options, fn)

    if options.timeout is None:

        @functools.wraps(fn)
        async def offloaded(*args: Any, **kwargs: Any) -> Any:
            return await run(pool, options, target, args, kwargs)

    else:

        @functools.wraps(fn)
        async def offloaded(*args: Any, **kwargs: Any) -> Any:
            return await run_with_timeout(pool, options, target, args, kwargs)

    # A process worker finds the wrapper by its module and name, and runs this instead.
    offloaded.__offload_target__ = fn  # type: ignore[attr-defined]
    # pool.map(offloaded, items) runs the target with these options, once per item.
    offloaded.__offload_call__ = (pool, options, target)  # type: ignore[attr-defined]
    return offloaded
