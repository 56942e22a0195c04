"""Policy: a sync generator function offloaded as an async generator function.

The sync generator lives on one worker thread for its whole life (one job that holds a
worker, admitted and submitted as any call); each ``__anext__``/``asend``/``athrow`` is a
request to that thread and a :class:`_Step` back. The call ends with one outcome, as a
plain call does: completed (exhausted or closed), failed, or its caller gone.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Callable, Generator
from queue import SimpleQueue
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._backends import Waiter
from ._calls import timeout_error
from ._job import qualname
from ._options import Options
from ._runtime import Runtime, Tally

if TYPE_CHECKING:
    from ._pools import _Pool

__all__ = ("offload_generator",)

Y = TypeVar("Y")


class _Step:
    """One item of an offloaded generator, on its way back to the loop."""

    __slots__ = ("kind", "value", "waiter")

    def __init__(self, waiter: Waiter) -> None:
        self.waiter = waiter
        self.kind = ""
        self.value: Any = None

    def deliver(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(self)


def _drive_generator(
    gen_fn: Callable[..., Generator[Any, Any, Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    requests: SimpleQueue[tuple[str, Any, _Step | None]],
    post: Callable[[_Step], None],
) -> None:
    """Run a sync generator on this worker thread, one request from the loop at a time."""
    gen: Generator[Any, Any, Any] | None = None
    try:
        while True:
            op, value, step = requests.get()
            if step is None:  # close
                return

            try:
                if gen is None:
                    gen = gen_fn(*args, **kwargs)

                if op == "send":
                    step.value = gen.send(value)
                else:
                    step.value = gen.throw(value)

                step.kind = "item"
            except StopIteration:
                step.kind = "stop"
            except BaseException as exc:
                step.kind = "error"
                step.value = exc

            post(step)
            if step.kind != "item":
                return

            del step, value
    finally:
        if gen is not None:
            gen.close()


async def _stream(
    runtime: Runtime[Any],
    options: Options,
    gen_fn: Callable[..., Generator[Y, Any, Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncGenerator[Y, Any]:
    """Drive a sync generator that lives on one worker thread, item by item."""
    requests: SimpleQueue[tuple[str, Any, _Step | None]] = SimpleQueue()
    job = await runtime.enter(  # never start a generator for a caller that is gone already
        options,
        _drive_generator,
        (gen_fn, args, kwargs, requests, runtime.post),
        {},
        perf_counter(),
        None,
        label=qualname(gen_fn),
    )
    op, value = "send", None
    ended = False
    try:
        while True:
            step = _Step(runtime.loop.new_waiter())
            requests.put((op, value, step))
            if options.timeout is None:
                await step.waiter
            else:
                with anyio.CancelScope(deadline=anyio.current_time() + options.timeout) as sc:
                    await step.waiter

                if sc.cancelled_caught:
                    raise timeout_error(runtime.name, job.name, options.timeout)

            if step.kind == "stop":
                ended = True
                runtime.counters.completed += 1
                return

            if step.kind == "error":
                ended = True
                runtime.counters.failed += 1
                raise step.value

            try:
                value = yield step.value
                op = "send"
            except GeneratorExit:
                raise
            except BaseException as exc:  # athrow(): raise it inside the sync generator
                op, value = "throw", exc
    except GeneratorExit:
        ended = True
        runtime.counters.completed += 1
        requests.put(("close", None, None))
        await runtime.wait_for_worker(job)
        raise
    except BaseException as exc:
        if not ended:
            ended = True
            requests.put(("close", None, None))
            tally = Tally()
            await runtime.caller_gone(job, options, tally)
            tally.count(timed_out=isinstance(exc, TimeoutError))

        raise
    finally:
        if not ended:  # the consumer stopped without aclose() (e.g. garbage collected)
            requests.put(("close", None, None))
            job.caller_gone = True


def offload_generator(
    pool: _Pool[Any], options: Options, fn: Callable[..., Generator[Any, Any, Any]]
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """Return the async generator function that runs ``fn``'s generators in ``pool``."""

    @functools.wraps(fn)
    async def stream(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        agen = _stream(pool._runtime(), options, fn, args, kwargs)
        try:
            item = await agen.__anext__()
            while True:
                try:
                    value = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:  # athrow(): on to the sync generator
                    item = await agen.athrow(exc)
                else:
                    item = await agen.asend(value)
        except StopAsyncIteration:
            return
        finally:
            await agen.aclose()

    return stream
