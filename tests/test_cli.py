from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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


def starve(
    args: list[str], cwd: Path, named: Callable[[subprocess.CompletedProcess[str]], bool]
) -> subprocess.CompletedProcess[str]:
    """Watch a script whose offloaded threads starve the loop, until the monitor names them.

    Whether the loop lags past the threshold, and whether the watchdog (itself starved of the
    GIL) catches the busy threads in their own code, is up to the OS and the GIL's
    scheduling: a run may show no stall at all. So the scenario runs up to five times, and the
    test fails if no run names the busy function.
    """
    result = offload("watch", *args, cwd=cwd)
    for _ in range(4):
        assert result.returncode == 0, result.stderr
        if named(result):
            break

        result = offload("watch", *args, cwd=cwd)

    assert result.returncode == 0, result.stderr
    return result


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
        assert "fix: await asyncio.sleep(0.3)" in result.stderr

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
        assert "in fetch_report" in out
        assert "fix: decorate fetch_report() with @offload.thread and await it" in out
        assert textwrap.dedent(out).count("blocking    ") == 1


# The blog posts' example, as people first run it: main() blocks on its first line, and the
# script has no ``if __name__ == "__main__":`` guard.
BLOG = {
    "asyncio": ("import asyncio", "await asyncio.sleep(0.05)", "asyncio.run(main())"),
    "asyncio+uvloop": ("import uvloop", "await asyncio.sleep(0.05)", "uvloop.run(main())"),
    "trio": ("import trio", "await trio.sleep(0.05)", "trio.run(main)"),
}
BLOG_SCRIPT = """\
import asyncio
import time
{imports}


def cpu_bound_task(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


async def main():
    cpu_bound_task(6_000_000)
    time.sleep(0.15)
    {sleep}


{run}
"""
BLOG_LINES = BLOG_SCRIPT.splitlines()
LOOP_LINE = BLOG_LINES.index("        total += i * i") + 1
SLEEP_LINE = BLOG_LINES.index("    time.sleep(0.15)") + 1
GUARD = 'put the code that starts the program under if __name__ == "__main__":'

STARVING_SCRIPT = """\
import asyncio
import threading
import time
{imports}

import offload

stop = threading.Event()


@offload.thread
def crunch():
    while not stop.is_set():
        pass


async def ticks():
    until = time.perf_counter() + 1.0
    while time.perf_counter() < until:
        {sleep}
    stop.set()


async def main():
    {gather}


if __name__ == "__main__":
    {run}
"""
GATHER = {
    "asyncio": "await asyncio.gather(ticks(), *(crunch() for _ in range(8)))",
    "trio": (
        "async with trio.open_nursery() as nursery:\n"
        "        nursery.start_soon(ticks)\n"
        "        for _ in range(8):\n"
        "            nursery.start_soon(crunch)"
    ),
}
CRUNCH_LINE = STARVING_SCRIPT.splitlines().index("    while not stop.is_set():") + 1


def blog(backend: str, **replace: str) -> str:
    imports, sleep, run = BLOG[backend]
    return BLOG_SCRIPT.format(imports=imports, sleep=sleep, run=run, **replace)


class TestWatchAsPeopleFirstMeetIt:
    """``watch`` on the blog posts' examples, on asyncio, uvloop and trio."""

    @pytest.mark.parametrize("backend", list(BLOG))
    def test_block_in_the_first_step(self, tmp_path: Path, backend: str) -> None:
        """A block before the first await is reported, at the site that took the most time."""
        (tmp_path / "blog.py").write_text(blog(backend))
        result = offload("watch", "blog.py", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        err = result.stderr
        assert "never blocked" not in err
        assert f"  at blog.py:{LOOP_LINE} in cpu_bound_task" in err
        assert "offload.monitor: 1 event past 0.1 s, " in err
        assert "at 2 sites (an event that blocked at several sites counts in each):" in err
        assert f"blog.py:{SLEEP_LINE} in main" in err
        sleep = "trio" if backend == "trio" else "asyncio"
        assert f"fix: await {sleep}.sleep(0.15)" in err
        assert "offload.call(time.sleep" not in err
        assert (
            f"fix: decorate cpu_bound_task() with @offload.process and await it, and {GUARD}"
        ) in err

    @pytest.mark.parametrize("backend", list(BLOG))
    def test_no_guard_note_with_a_guard(self, tmp_path: Path, backend: str) -> None:
        """With the ``__main__`` guard in place, the process fix does not ask for it."""
        _, _, run = BLOG[backend]
        script = blog(backend).replace(f"\n{run}\n", f'\nif __name__ == "__main__":\n    {run}\n')
        (tmp_path / "blog.py").write_text(script)
        result = offload("watch", "blog.py", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "fix: decorate cpu_bound_task() with @offload.process and await it\n" in (
            result.stderr
        )
        assert GUARD not in result.stderr

    @pytest.mark.parametrize("backend", list(BLOG))
    def test_starvation_names_the_busy_function(self, tmp_path: Path, backend: str) -> None:
        """Offloaded CPU-bound work that starves the loop is named, in the log and the report."""
        imports, sleep, run = BLOG[backend]
        script = STARVING_SCRIPT.format(
            imports=imports,
            sleep=sleep.replace("0.05", "0.005"),
            gather=GATHER["trio" if backend == "trio" else "asyncio"],
            run=run,
        )
        (tmp_path / "starving.py").write_text(script)

        def named(result: subprocess.CompletedProcess[str]) -> bool:
            err = result.stderr
            # A loaded machine can make the start of the offloaded calls one long turn of
            # the loop's own work (saturation); either way, the busy threads are named.
            return ("starvation" in err or "saturation" in err) and (
                f"starving.py:{CRUNCH_LINE} in crunch" in err
                and "thread 'offload-thread-" in err
                and "decorate crunch() with @offload.process instead of a thread" in err
            )

        result = starve(["--threshold", "0.05", "starving.py"], tmp_path, named)
        assert named(result), result.stderr

    def test_json_names_the_busy_threads(self, tmp_path: Path) -> None:
        """``--json`` carries each event's busy threads."""
        imports, sleep, run = BLOG["asyncio"]
        script = STARVING_SCRIPT.format(
            imports=imports,
            sleep=sleep.replace("0.05", "0.005"),
            gather=GATHER["asyncio"],
            run=run,
        )
        (tmp_path / "starving.py").write_text(script)

        def busy_threads(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
            data = json.loads((tmp_path / "out.json").read_text())
            return [thread for event in data["events"] for thread in event["busy_threads"]]

        def named(result: subprocess.CompletedProcess[str]) -> bool:
            return any(thread["site"] for thread in busy_threads(result))

        result = starve(
            ["--threshold", "0.05", "--json", "out.json", "starving.py"], tmp_path, named
        )
        busy = busy_threads(result)
        assert busy, result.stderr
        # A thread caught starting the next one is in offload's code, with no user site.
        assert {thread["site"]["name"] for thread in busy if thread["site"]} == {"crunch"}
        assert all(0 < thread["share"] <= 1 for thread in busy)

    @pytest.mark.parametrize("backend", list(BLOG))
    def test_lazy_import_is_one_line(self, tmp_path: Path, backend: str) -> None:
        """A stall inside a lazy import logs Python's import machinery as one line."""
        package = tmp_path / "lazypkg"
        package.mkdir()
        (package / "__init__.py").write_text("from . import inner\n")
        (package / "inner.py").write_text("import time\n\ntime.sleep(0.3)\n")
        imports, sleep, run = BLOG[backend]
        script = f"import asyncio\n{imports}\n\n\nasync def main():\n    import lazypkg\n"
        (tmp_path / "lazy.py").write_text(f"{script}    {sleep}\n\n\n{run}\n")
        result = offload("watch", "lazy.py", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "at lazypkg/inner.py:3 in <module>" in result.stderr
        assert 'File "lazy.py", line 6, in main' in result.stderr
        assert (
            "fix: importing lazypkg.inner blocks the loop while its code runs: import it at "
            "startup, before the loop, or await offload.call(importlib.import_module, "
            "'lazypkg.inner')"
        ) in result.stderr
        assert "frames of Python's import machinery]" in result.stderr
        assert "importlib._bootstrap" not in result.stderr
