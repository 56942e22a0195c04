"""Settings: defaults < ``OFFLOAD_<POOL>_<SETTING>`` < explicit; checked with clear errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from typing import Any

import pytest

import offload
from _support import new_pool
from offload._settings import (
    OPTIONAL_POSITIVE_SECONDS,
    OPTIONAL_WHOLE_AT_LEAST_1,
    SECONDS,
    WHOLE_AT_LEAST_0,
    ProcessOptions,
    ProcessSettings,
    ThreadOptions,
    ThreadSettings,
    env_name,
    setting_of,
    usable_cpus,
)


class TestDefinedOnce:
    """Each setting is defined once, as a field; the rest follows from it."""

    @pytest.mark.parametrize(
        ("options", "settings"),
        [(ThreadOptions, ThreadSettings), (ProcessOptions, ProcessSettings)],
        ids=["thread", "process"],
    )
    def test_keyword_types_match_the_settings(self, options: Any, settings: Any) -> None:
        """The typed keyword arguments of a pool kind name and type exactly its settings."""
        fields = {field.name for field in dataclasses.fields(settings)}
        assert set(typing.get_type_hints(options)) == fields
        assert typing.get_type_hints(options) == {
            name: hint for name, hint in typing.get_type_hints(settings).items() if name in fields
        }

    def test_every_field_carries_its_check(self) -> None:
        """Every settings field says how it is checked and what a valid value is."""
        for field in dataclasses.fields(ProcessSettings):
            setting = setting_of(field)
            assert setting.explain()
            if field.name in ("initializer", "initargs"):
                assert setting.parse is None  # a function cannot come from the environment
            else:
                assert setting.parse is not None

    @pytest.mark.parametrize(
        ("option", "value", "setting"),
        [
            ("limit", 0, OPTIONAL_WHOLE_AT_LEAST_1),
            ("timeout", 0, OPTIONAL_POSITIVE_SECONDS),
            ("retries", -1, WHOLE_AT_LEAST_0),
            ("grace", float("nan"), SECONDS),
        ],
    )
    def test_function_options_are_checked_as_settings_are(
        self, option: str, value: object, setting: Any
    ) -> None:
        """A decorated function's bad option is refused in the words of the same checker."""
        pool = new_pool("process")
        with pytest.raises(ValueError, match=r"is not valid: it must be ") as caught:
            pool(**{option: value})  # type: ignore[call-overload, arg-type, unused-ignore]

        assert (
            str(caught.value) == f"{option}={value!r} is not valid: it must be {setting.explain()}"
        )


class TestDefaults:
    def test_built_in_defaults(self) -> None:
        """A pool with no settings uses the documented defaults."""
        settings = new_pool().settings()
        assert settings.max_workers == min(32, usable_cpus() + 4)
        assert settings.max_pending is None
        assert settings.idle_timeout == 10.0
        assert settings.shutdown_timeout == 10.0

    def test_default_pool_is_named_thread(self) -> None:
        """``offload.thread`` is the default thread pool, named ``thread``."""
        assert isinstance(offload.thread, offload.ThreadPool)
        assert offload.thread.name == "thread"

    def test_settings_are_frozen(self) -> None:
        """A settings snapshot cannot be changed in place."""
        settings = new_pool().settings()
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.max_workers = 1  # type: ignore[misc]


class TestEnvironment:
    def test_variable_name_is_derived_from_the_pool_name(self) -> None:
        """Every character other than A-Z and 0-9 of the upper-cased name becomes ``_``."""
        assert env_name("thread", "max_workers") == "OFFLOAD_THREAD_MAX_WORKERS"
        assert env_name("my-db.v2", "max_pending") == "OFFLOAD_MY_DB_V2_MAX_PENDING"

    def test_environment_beats_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An environment variable overrides the built-in default."""
        pool = new_pool()
        monkeypatch.setenv(env_name(pool.name, "max_workers"), "3")
        monkeypatch.setenv(env_name(pool.name, "max_pending"), "100")
        monkeypatch.setenv(env_name(pool.name, "shutdown_timeout"), "2.5")
        settings = pool.settings()
        assert (settings.max_workers, settings.max_pending) == (3, 100)
        assert settings.shutdown_timeout == 2.5

    def test_explicit_beats_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An explicit argument overrides the environment."""
        pool = new_pool(max_workers=5)
        monkeypatch.setenv(env_name(pool.name, "max_workers"), "3")
        assert pool.settings().max_workers == 5
        pool.configure(max_workers=7)
        assert pool.settings().max_workers == 7

    def test_unbounded_pending_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``none`` in ``OFFLOAD_<POOL>_MAX_PENDING`` means unbounded."""
        pool = new_pool()
        monkeypatch.setenv(env_name(pool.name, "max_pending"), "none")
        assert pool.settings().max_pending is None

    async def test_environment_is_read_when_the_pool_starts(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The environment is read at the pool's first call in a loop, not at declaration."""
        pool = new_pool()
        monkeypatch.setenv(env_name(pool.name, "max_workers"), "2")
        await pool.call(int)
        assert pool.stats().max_workers == 2
        monkeypatch.setenv(env_name(pool.name, "max_workers"), "9")
        await pool.call(int)
        assert pool.stats().max_workers == 2  # read once per loop

    @pytest.mark.parametrize(
        ("setting", "value"),
        [
            ("max_workers", "lots"),
            ("max_workers", "0"),
            ("max_pending", "-1"),
            ("idle_timeout", "0"),
            ("shutdown_timeout", "soon"),
        ],
    )
    async def test_bad_value_fails_the_first_call(
        self, monkeypatch: pytest.MonkeyPatch, setting: str, value: str
    ) -> None:
        """A bad value raises ``ValueError`` from the first call, naming variable and value."""
        pool = new_pool()
        variable = env_name(pool.name, setting)
        monkeypatch.setenv(variable, value)
        with pytest.raises(ValueError, match=f"{variable}={value!r} is not valid"):
            await pool.call(int)

        monkeypatch.delenv(variable)
        assert await pool.call(int, "4") == 4  # fixed: the next call starts the pool

    def test_declaring_a_pool_ignores_a_bad_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bad environment variable does not break import or declaration."""
        monkeypatch.setenv("OFFLOAD_LATER_MAX_WORKERS", "many")
        pool = offload.ThreadPool("later")
        assert pool.name == "later"
        with pytest.raises(ValueError, match="OFFLOAD_LATER_MAX_WORKERS='many'"):
            pool.settings()


class TestExplicit:
    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            ({"max_workers": 0}, "max_workers=0 is not valid"),
            ({"max_workers": 2.5}, "max_workers=2.5 is not valid"),
            ({"max_pending": -1}, "max_pending=-1 is not valid"),
            ({"idle_timeout": 0}, "idle_timeout=0 is not valid"),
            ({"shutdown_timeout": -1}, "shutdown_timeout=-1 is not valid"),
            ({"max_wokers": 3}, "'max_wokers' is not a setting of pool"),
            ({"start_method": "spawn"}, "'start_method' is not a setting of pool"),
        ],
    )
    def test_bad_settings_are_refused(self, settings: dict[str, object], message: str) -> None:
        """A bad or unknown setting raises ``ValueError`` naming it and what it must be."""
        with pytest.raises(ValueError, match=message):
            new_pool(**settings)

        with pytest.raises(ValueError, match=message):
            new_pool().configure(**settings)  # type: ignore[arg-type]

    def test_two_pools_cannot_share_a_name(self) -> None:
        """Declaring a second pool with a taken name raises ``ValueError``."""
        pool = offload.ThreadPool("unique-name")
        with pytest.raises(ValueError, match="a pool named 'unique-name' already exists"):
            offload.ThreadPool("unique-name")

        del pool

    def test_empty_name_is_refused(self) -> None:
        """A pool needs a non-empty name."""
        with pytest.raises(ValueError, match="non-empty string"):
            offload.ThreadPool("")

    def test_name_is_free_again_once_the_pool_is_gone(self) -> None:
        """A name is taken only while its pool exists."""
        offload.ThreadPool("short-lived")
        offload.ThreadPool("short-lived")


class TestConfigureByName:
    def test_configure_several_pools(self) -> None:
        """``offload.configure`` sets the settings of pools by name."""
        db, cache = new_pool(), new_pool()
        offload.configure(**{db.name: {"max_workers": 3}, cache.name: {"max_pending": 10}})
        assert db.settings().max_workers == 3
        assert cache.settings().max_pending == 10

    def test_default_pool_by_name(self) -> None:
        """``offload.configure(thread={...})`` configures the default pool."""
        before = offload.thread.settings().idle_timeout
        try:
            offload.configure(thread={"idle_timeout": 3.0})
            assert offload.thread.settings().idle_timeout == 3.0
        finally:
            offload.configure(thread={"idle_timeout": before})

    def test_unknown_pool_name(self) -> None:
        """Naming a pool that does not exist raises ``ValueError`` listing the pools."""
        with pytest.raises(ValueError, match="no pool is named 'nope'; the pools are: .*thread"):
            offload.configure(nope={"max_workers": 1})

    def test_all_checked_before_any_applied(self) -> None:
        """If one pool's settings are bad, no pool is changed."""
        good, bad = new_pool(max_workers=2), new_pool()
        with pytest.raises(ValueError, match="max_workers=-3"):
            offload.configure(**{good.name: {"max_workers": 9}, bad.name: {"max_workers": -3}})

        assert good.settings().max_workers == 2


def test_import_survives_a_bad_environment() -> None:
    """Importing offload reads no ``OFFLOAD_`` variable: a bad one fails the first call."""
    script = (
        "import asyncio, offload\n"
        "try:\n"
        "    asyncio.run(offload.call(int))\n"
        "except ValueError as exc:\n"
        "    print('first call:', exc)\n"
    )
    env = {**os.environ, "OFFLOAD_THREAD_MAX_WORKERS": "-2"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "first call: environment variable OFFLOAD_THREAD_MAX_WORKERS='-2'" in done.stdout
