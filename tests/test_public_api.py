"""The public surface: small, typed, and named ``offload.X``."""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect
import typing

import offload


class TestSurface:
    def test_all_is_sorted_and_complete(self) -> None:
        """``__all__`` is sorted and every name in it exists."""
        assert list(offload.__all__) == sorted(offload.__all__)
        for name in offload.__all__:
            assert hasattr(offload, name), name

    def test_no_private_module_leaks(self) -> None:
        """Public classes and functions say they come from ``offload`` (dataclasses excepted,
        so that their annotations resolve)."""
        for name in offload.__all__:
            obj = getattr(offload, name)
            if dataclasses.is_dataclass(obj):
                continue

            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert obj.__module__ == "offload", name

    def test_type_hints_resolve(self) -> None:
        """``typing.get_type_hints`` works on every public class (tools inspect them)."""
        for name in offload.__all__:
            obj = getattr(offload, name)
            if inspect.isclass(obj):
                typing.get_type_hints(obj)

    def test_monitor_records(self) -> None:
        """The monitor's records, ``ThreadShare`` among them, are public frozen dataclasses."""
        for record in (
            offload.BlockingEvent,
            offload.SiteShare,
            offload.ThreadShare,
            offload.Report,
            offload.ReportRow,
        ):
            assert record.__name__ in offload.__all__
            assert dataclasses.is_dataclass(record)
            assert getattr(record, "__dataclass_params__").frozen  # noqa: B009

        assert [field.name for field in dataclasses.fields(offload.ThreadShare)] == [
            "name",
            "site",
            "share",
        ]

    def test_error_tree(self) -> None:
        """Every offload error is an ``OffloadError``."""
        for error in (
            offload.Overloaded,
            offload.PoolClosed,
            offload.WorkerCrashed,
            offload.SerializationError,
        ):
            assert issubclass(error, offload.OffloadError)

    def test_call_is_the_default_pools_call(self) -> None:
        """``offload.call`` is ``offload.thread.call``."""
        assert offload.call == offload.thread.call

    def test_package_is_typed(self) -> None:
        """The package ships ``py.typed``."""
        assert importlib.resources.files("offload").joinpath("py.typed").is_file()


class TestErrorMessages:
    def test_overloaded_message(self) -> None:
        """``Overloaded`` says which pool, which bound, and what to do."""
        error = offload.Overloaded("db", 10)
        assert (error.pool, error.max_pending) == ("db", 10)
        assert "max_pending=10" in str(error)
        assert "Retry later" in str(error)

    def test_worker_crashed_message(self) -> None:
        """``WorkerCrashed`` names the function, the pid and the signal or exit code."""
        by_signal = offload.WorkerCrashed("render", 123, None, 9)
        assert "render()" in str(by_signal)
        assert "pid 123" in str(by_signal)
        assert "SIGKILL" in str(by_signal)
        by_exit = offload.WorkerCrashed("render", 123, 3, None)
        assert "exited with code 3" in str(by_exit)

    def test_errors_pickle(self) -> None:
        """Errors survive pickling (they cross process boundaries)."""
        import pickle

        for error in (
            offload.Overloaded("db", 10),
            offload.PoolClosed("db"),
            offload.WorkerCrashed("f", 1, None, 15),
            offload.SerializationError("argument", "f", "a lock", "pass a path instead"),
        ):
            copy = pickle.loads(pickle.dumps(error))
            assert type(copy) is type(error)
            assert str(copy) == str(error)
