"""What ``import offload`` and a worker process import: the monitor and anyio's backends wait."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Modules that neither ``import offload`` nor a worker process may import: the monitor (and
# what only it needs) and anyio's backends, which anyio imports when a loop first uses it.
HEAVY = ("offload._monitor", "anyio._backends")


def heavy(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(HEAVY))


def run_python(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


class TestImportOffload:
    """``import offload`` leaves the monitor and anyio's backends unimported."""

    def test_import_is_light(self) -> None:
        """A fresh interpreter that imports offload has neither the monitor nor anyio's backend."""
        code = "import json, sys, offload; print(json.dumps(list(sys.modules)))"
        modules = run_python("-c", code)
        assert "offload" in modules
        assert heavy(modules) == []

    def test_no_asyncio_of_its_own(self) -> None:
        """``import offload`` imports asyncio only if anyio does (a trio program needs none)."""
        code = (
            "import json, sys, anyio\n"
            "by_anyio = 'asyncio' in sys.modules\n"
            "import offload\n"
            "print(json.dumps([by_anyio, 'asyncio' in sys.modules]))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        by_anyio, after_offload = json.loads(done.stdout)
        assert after_offload == by_anyio

    def test_monitor_loads_on_first_use(self) -> None:
        """The monitor loads when first used, and its names read ``offload.X``."""
        code = (
            "import json, sys, offload\n"
            "assert offload.Monitor.__module__ == 'offload', offload.Monitor.__module__\n"
            "assert callable(offload.monitor)\n"
            "print(json.dumps(list(sys.modules)))"
        )
        modules = run_python("-c", code)
        assert "offload._monitor" in modules

    def test_unknown_name(self) -> None:
        """A name offload does not have is an ``AttributeError``, as for any module."""
        import offload

        with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
            getattr(offload, "nothing_here")  # noqa: B009


class TestWorkerImports:
    """A worker process imports offload's worker side and the user's function, not the rest."""

    @pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
    def test_worker_is_light(self, tmp_path: Path, start_method: str) -> None:
        """A worker's ``sys.modules`` holds neither the monitor nor anyio's backends."""
        script = tmp_path / "worker_imports.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import asyncio
                import json
                import sys

                import offload


                def loaded() -> list[str]:
                    return list(sys.modules)


                async def main() -> None:
                    pool = offload.ProcessPool("imports", max_workers=1,
                                               start_method={start_method!r})
                    async with pool:
                        modules = await pool.call(loaded)

                    print(json.dumps(modules))


                if __name__ == "__main__":
                    asyncio.run(main())
                """
            )
        )
        modules = run_python(str(script))
        assert "offload._child" in modules
        assert heavy(modules) == []
