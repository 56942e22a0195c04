from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """\
import asyncio
import sys
import time


async def main():
    await asyncio.sleep(0.01)
    time.sleep(0.3)
    await asyncio.sleep(0.01)


if __name__ == "__main__":
    print(repr(sys.argv), __name__)
    asyncio.run(main())
    sys.exit(3)
"""
SCRIPT_LINE = SCRIPT.splitlines().index("    time.sleep(0.3)") + 1

TRIO_MODULE = """\
import sys

IMPORTED_EARLY = "trio" in sys.modules

import time

import trio


async def main():
    await trio.sleep(0.01)
    time.sleep(0.3)
    await trio.sleep(0.01)


print(repr(sys.argv), __name__, IMPORTED_EARLY)
trio.run(main)
"""
TRIO_LINE = TRIO_MODULE.splitlines().index("    time.sleep(0.3)") + 1


def offload(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestWatchScript:
    def test_runs_the_script_and_reports(self, tmp_path: Path) -> None:
        """The script runs as with python, keeps its exit code, and the report names its line."""
        (tmp_path / "app.py").write_text(SCRIPT)
        result = offload("watch", "--threshold", "0.1", "app.py", "one", "--two", cwd=tmp_path)
        assert result.returncode == 3, result.stderr
        assert result.stdout.splitlines() == ["['app.py', 'one', '--two'] __main__"]
        assert "offload.monitor: 1 event past 0.1 s" in result.stderr
        assert f"app.py:{SCRIPT_LINE} in main" in result.stderr
        assert "fix: await offload.call(time.sleep, 0.3)" in result.stderr

    def test_json(self, tmp_path: Path) -> None:
        """``--json FILE`` writes the events and the report."""
        (tmp_path / "app.py").write_text(SCRIPT)
        result = offload("watch", "--json", "out.json", "app.py", cwd=tmp_path)
        assert result.returncode == 3, result.stderr
        data = json.loads((tmp_path / "out.json").read_text())
        assert data["threshold"] == 0.1
        [event] = data["events"]
        assert event["kind"] == "blocking"
        assert event["site"]["lineno"] == SCRIPT_LINE
        assert event["site"]["line"] == "time.sleep(0.3)"
        assert event["stack"][-1] == event["leaf"]
        assert [row["count"] for row in data["report"]] == [1]

    def test_traceback_and_exit_code_of_a_crash(self, tmp_path: Path) -> None:
        """A script that raises exits 1 with its own traceback, and the report still prints."""
        (tmp_path / "crash.py").write_text("def main():\n    raise ValueError('boom')\n\nmain()\n")
        result = offload("watch", "crash.py", cwd=tmp_path)
        assert result.returncode == 1
        lines = result.stderr.splitlines()
        assert lines[0] == "Traceback (most recent call last):"
        assert lines[1].endswith('crash.py", line 4, in <module>')
        assert "runpy" not in result.stderr
        assert "ValueError: boom" in result.stderr
        assert "offload.monitor: the event loop never blocked past 0.1 s." in result.stderr

    def test_missing_script(self, tmp_path: Path) -> None:
        """A script that does not exist is an error, as with python."""
        result = offload("watch", "nowhere.py", cwd=tmp_path)
        assert result.returncode == 2
        assert "can't open file" in result.stderr


class TestWatchModule:
    def test_runs_a_module_under_trio(self, tmp_path: Path) -> None:
        """``-m`` runs a module as ``__main__``; trio, imported by the module, is watched."""
        package = tmp_path / "pkg"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "app.py").write_text(TRIO_MODULE)
        result = offload("watch", "-m", "pkg.app", "x", "-y", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        [line] = result.stdout.splitlines()
        assert line.startswith("['" + str(package / "app.py") + "', 'x', '-y']")
        assert line.endswith("] __main__ False")
        assert f"app.py:{TRIO_LINE} in main" in result.stderr

    def test_usage(self, tmp_path: Path) -> None:
        """Without a command, the usage is printed and the exit code is 2."""
        result = offload(cwd=tmp_path)
        assert result.returncode == 2
        assert "usage: python -m offload" in result.stderr


class TestDemo:
    def test_demo(self, tmp_path: Path) -> None:
        """The demo shows the frozen heartbeat, the cure, and the blocking line."""
        result = offload("demo", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "1. Called directly, one after the other:" in out
        assert "2. Offloaded, in two tasks at the same time:" in out
        assert "_demo.py:" in out
        assert "in _blocking_pair" in out
        assert "fix: await offload.call(time.sleep, 1)" in out
        assert textwrap.dedent(out).count("blocking    ") == 2
