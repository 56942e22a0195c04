"""``@pool`` and ``@pool(...)``: what the decorated object is and keeps."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Generator

import pytest

import offload
from _support import new_pool


@offload.thread
def add(a: int, b: int = 0) -> int:
    """Add two numbers."""
    return a + b


@offload.thread(limit=2, timeout=5.0, cancel="wait")
def scaled(x: float, *, factor: float = 2.0) -> float:
    """Scale a number."""
    return x * factor


class Service:
    def __init__(self, base: int) -> None:
        self.base = base

    @offload.thread
    def method(self, x: int) -> int:
        return self.base + x

    @staticmethod
    @offload.thread
    def static_above(x: int) -> int:
        return x * 10

    @offload.thread
    @staticmethod
    def static_below(x: int) -> int:
        return x * 100

    @classmethod
    @offload.thread
    def class_above(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @offload.thread
    @classmethod
    def class_below(cls, x: int) -> str:
        return f"{cls.__name__}/{x}"


class TestForms:
    async def test_bare_decorator(self) -> None:
        """``@offload.thread`` makes an async function that returns ``fn``'s result."""
        assert await add(2, b=3) == 5

    async def test_decorator_with_options(self) -> None:
        """``@offload.thread(limit=..., timeout=..., cancel=...)`` works the same way."""
        assert await scaled(1.5, factor=4.0) == 6.0

    async def test_decorator_with_empty_parentheses(self) -> None:
        """``@offload.thread()`` is the same as ``@offload.thread``."""

        @offload.thread()
        def double(x: int) -> int:
            return 2 * x

        assert await double(21) == 42

    async def test_named_pool_decorator(self) -> None:
        """A named pool decorates too, and runs the function in its own threads."""
        pool = new_pool(max_workers=1)

        @pool
        def where() -> str:
            return threading.current_thread().name

        assert (await where()).startswith(f"offload-{pool.name}-")

    async def test_each_call_runs_again(self) -> None:
        """Calling the decorated function twice runs ``fn`` twice."""
        calls: list[int] = []

        @offload.thread
        def record(x: int) -> None:
            calls.append(x)

        await record(1)
        await record(2)
        assert calls == [1, 2]


class TestMetadata:
    def test_name_doc_and_wrapped(self) -> None:
        """The result keeps ``__name__``, ``__qualname__``, ``__doc__`` and ``__wrapped__``."""
        assert add.__name__ == "add"
        assert add.__qualname__ == "add"
        assert add.__doc__ == "Add two numbers."
        assert add.__wrapped__(1, 2) == 3  # type: ignore[attr-defined]

    def test_is_a_coroutine_function(self) -> None:
        """``inspect.iscoroutinefunction`` is true for the decorated function."""
        assert inspect.iscoroutinefunction(add)
        assert inspect.iscoroutinefunction(scaled)
        assert inspect.iscoroutinefunction(Service.method)

    def test_signature_is_preserved(self) -> None:
        """``inspect.signature`` shows the original parameters."""
        assert str(inspect.signature(add)) == "(a: 'int', b: 'int' = 0) -> 'int'"
        assert list(inspect.signature(scaled).parameters) == ["x", "factor"]

    def test_calling_outside_a_loop_makes_a_coroutine(self) -> None:
        """Calling the decorated function returns a coroutine; nothing runs until awaited."""
        coro = add(1, 2)
        assert inspect.iscoroutine(coro)
        coro.close()


class TestMethods:
    async def test_method_binds_self(self) -> None:
        """A decorated method receives ``self``."""
        assert await Service(5).method(3) == 8

    async def test_staticmethod_above_and_below(self) -> None:
        """``@staticmethod`` works above or below the offload decorator."""
        assert await Service.static_above(2) == 20
        assert await Service(0).static_above(3) == 30
        assert await Service.static_below(2) == 200
        assert await Service(0).static_below(3) == 300

    async def test_classmethod_above_and_below(self) -> None:
        """``@classmethod`` works above or below the offload decorator."""

        class Child(Service):
            pass

        assert await Service.class_above(1) == "Service:1"
        assert await Child.class_above(2) == "Child:2"
        assert await Service.class_below(3) == "Service/3"
        assert await Child(0).class_below(4) == "Child/4"

    def test_static_and_class_methods_are_coroutine_functions(self) -> None:
        """Decorated static and class methods are coroutine functions when looked up."""
        assert inspect.iscoroutinefunction(Service.static_below)
        assert inspect.iscoroutinefunction(Service.class_below)


class TestBadInput:
    def test_async_function_is_refused(self) -> None:
        """Decorating an ``async def`` function raises ``TypeError`` that says to await it."""

        async def already_async() -> None:
            pass

        with pytest.raises(TypeError, match="already async"):
            offload.thread(already_async)  # type: ignore[arg-type, unused-ignore]

    def test_non_callable_is_refused(self) -> None:
        """Decorating something that is not callable raises ``TypeError``."""
        with pytest.raises(TypeError, match="decorates a function"):
            offload.thread(42)  # type: ignore[call-overload]

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"limit": 0}, "limit=0 is not valid"),
            ({"limit": 1.5}, "limit=1.5 is not valid"),
            ({"limit": True}, "limit=True is not valid"),
            ({"timeout": 0}, "timeout=0 is not valid"),
            ({"timeout": -1.0}, "timeout=-1.0 is not valid"),
            ({"timeout": "5"}, "timeout='5' is not valid"),
            ({"cancel": "kill"}, "cancel='kill' is not a cancellation policy"),
        ],
    )
    def test_bad_options_are_refused(self, options: dict[str, object], message: str) -> None:
        """A bad option raises ``ValueError`` naming the option and what it must be."""
        with pytest.raises(ValueError, match=message):
            offload.thread(**options)  # type: ignore[call-overload]


class TestGenerators:
    async def test_generator_becomes_async_generator(self) -> None:
        """A decorated generator function becomes an async generator function."""

        @offload.thread
        def count(n: int) -> Generator[int, None, None]:
            yield from range(n)

        assert inspect.isasyncgenfunction(count)
        assert [x async for x in count(5)] == [0, 1, 2, 3, 4]
