"""Every Python code block in the docs runs: the pages in docs/ and the README.

Each fenced block whose language is ``python`` (or ``py``, ``pycon``) is run as a user would
run it after pasting it:

* a block written as a session (its lines start with ``>>>``) runs as a doctest, in this
  process, in a fresh namespace;
* a block that holds pytest tests (``def test_``) runs under pytest, in a subprocess, in a
  directory whose ``pyproject.toml`` sets ``anyio_mode = "auto"`` as docs/testing.md does;
* any other block runs as a script, ``python -W error example.py``, in a subprocess: a real
  ``__main__``, so that ``@offload.process`` functions pickle by reference as they would for
  the reader, and warnings are errors.

A block whose first line names a file (``# work.py: ...``) is that file: it runs under its
name, and the later blocks of its page find it beside them, so that ``from work import crunch``
works as it would for the reader who saved it (the latest block of that name wins).

A block that is deliberately not runnable (a fragment, or another part's API) is marked on
the line just before its fence with ``<!-- not-run: reason -->``; the reason is required, and
a marked block must still be valid Python. Every unmarked block that fails fails its test.
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

# Generous: bounds how long a broken example hangs, not a timing claim.
WAIT = 60.0

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*?)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not-run:(?P<reason>.*?)-->$")
_PYTHON = {"python", "py", "pycon", "python3"}
_FILE_NAME = re.compile(r"^# (?P<name>[A-Za-z_]\w*\.py)\b")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """One fenced Python code block of a page."""

    page: str
    line: int
    code: str
    not_run: str | None

    @property
    def file_name(self) -> str | None:
        """The file that the block is, where its first line names one (``# work.py``)."""
        named = _FILE_NAME.match(self.code)
        return None if named is None else named["name"]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def kind(self) -> str:
        if any(line.lstrip().startswith(">>>") for line in self.code.splitlines()):
            return "doctest"

        if re.search(r"^\s*(async )?def test_", self.code, re.MULTILINE):
            return "pytest"

        return "script"


def _language(info: str) -> str:
    # ```python, ```{code-block} python, ```python {.extra}
    words = info.replace("{code-block}", "").replace("{code}", "").split()
    return words[0].lower() if words else ""


def blocks(text: str, page: str) -> list[Block]:
    """Return the Python blocks of a Markdown page, with their not-run marks.

    Raises:
        ValueError: a not-run mark without a reason, or a fence left open.
    """
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue

        fence = opening["fence"]
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            closing = _FENCE.match(lines[i])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"]
            ):
                break

            body.append(lines[i])
            i += 1
        else:
            raise ValueError(f"{page}:{start + 1}: a code fence is never closed")

        i += 1
        if _language(opening["info"]) not in _PYTHON:
            continue

        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        mark = _NOT_RUN.match(previous.strip())
        reason = None if mark is None else mark["reason"].strip()
        if reason == "":
            raise ValueError(
                f"{page}:{start}: a not-run mark needs a reason: <!-- not-run: why -->"
            )

        code = textwrap.dedent("\n".join(body)) + "\n"  # a block in a list item is indented
        found.append(Block(page=page, line=start + 1, code=code, not_run=reason))

    return found


def _all_blocks() -> list[Block]:
    return [
        block
        for path in PAGES
        for block in blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]


BLOCKS = _all_blocks()


def _block_id(block: Block) -> str:
    return block.id


# Blocks that run in a subprocess start a few at a time ahead of their tests: most of them
# wait (on sleeps, on worker processes starting), so the module takes a fraction of the time
# that running them one by one would.
AHEAD = 4


@dataclasses.dataclass(slots=True, kw_only=True)
class _Run:
    block: Block
    process: subprocess.Popen[bytes]
    directory: Path
    started: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How a block's subprocess ended."""

    returncode: int
    stdout: str
    stderr: str


def _command(block: Block, directory: Path) -> list[str]:
    # The files that the page's earlier blocks are, beside this one.
    for earlier in BLOCKS:
        if earlier.page == block.page and earlier.line < block.line and earlier.file_name:
            (directory / earlier.file_name).write_text(earlier.code, encoding="utf-8")

    if block.kind == "pytest":
        (directory / "pyproject.toml").write_text(
            '[tool.pytest.ini_options]\nanyio_mode = "auto"\n', encoding="utf-8"
        )
        (directory / "test_example.py").write_text(block.code, encoding="utf-8")
        # anyio's plugin runs the tests, as docs/testing.md sets it up.
        options = ["-q", "-W", "error", "-p", "no:cacheprovider", "-p", "no:asyncio"]
        return [sys.executable, "-m", "pytest", *options]

    name = block.file_name or "example.py"
    (directory / name).write_text(block.code, encoding="utf-8")
    return [sys.executable, "-W", "error", name]


class Runs:
    """The subprocesses of the blocks, started in test order, at most ``AHEAD`` at a time."""

    def __init__(self, blocks: list[Block], directory: Path) -> None:
        self._todo = [b for b in blocks if b.kind != "doctest"]
        self._directory = directory
        self._running: dict[str, _Run] = {}

    def _start(self, block: Block) -> None:
        self._todo.remove(block)
        directory = self._directory / re.sub(r"\W", "_", block.id)
        directory.mkdir()
        with (directory / "out").open("wb") as out, (directory / "err").open("wb") as err:
            process = subprocess.Popen(
                _command(block, directory), cwd=directory, stdout=out, stderr=err
            )

        self._running[block.id] = _Run(
            block=block, process=process, directory=directory, started=time.monotonic()
        )

    def _fill(self) -> None:
        while self._todo and len(self._running) < AHEAD:
            self._start(self._todo[0])

    def outcome(self, block: Block) -> Outcome:
        """Wait for the block's subprocess and return how it ended."""
        if block in self._todo:
            self._start(block)

        self._fill()
        run = self._running.pop(block.id)
        try:
            returncode = run.process.wait(timeout=max(0.0, run.started + WAIT - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()
            returncode = -1

        self._fill()
        stdout = (run.directory / "out").read_text(errors="replace")
        stderr = (run.directory / "err").read_text(errors="replace")
        if returncode == -1:
            stderr += f"\n(killed: still running after {WAIT:g} s)"

        return Outcome(returncode=returncode, stdout=stdout, stderr=stderr)

    def close(self) -> None:
        """Kill what still runs (a test that failed early leaves its followers started)."""
        for run in self._running.values():
            run.process.kill()
            run.process.wait()

        self._running.clear()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Run the blocks' subprocesses a few ahead of their tests."""
    started = Runs([b for b in BLOCKS if b.not_run is None], tmp_path_factory.mktemp("blocks"))
    yield started
    started.close()


def _explain(block: Block, outcome: Outcome) -> str:
    return (
        f"the code block at {block.id} failed (exit status {outcome.returncode}); mark it "
        f"<!-- not-run: reason --> only if it cannot run by design.\n"
        f"--- stdout\n{outcome.stdout}\n--- stderr\n{outcome.stderr}"
    )


def _run_doctest(block: Block) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block.code, {}, block.id, block.page, block.line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert not runner.failures, f"the doctest at {block.id} failed:\n{''.join(out)}"


class TestCodeBlocks:
    """Every Python block in the docs and the README runs, unless marked not-run."""

    @pytest.mark.parametrize("block", [b for b in BLOCKS if b.not_run is None], ids=_block_id)
    def test_block_runs(self, block: Block, runs: Runs) -> None:
        """The block runs without an error, as a doctest, a pytest module or a script."""
        if block.kind == "doctest":
            _run_doctest(block)
            return

        outcome = runs.outcome(block)
        assert outcome.returncode == 0, _explain(block, outcome)
        assert "Traceback (most recent call last)" not in outcome.stderr, _explain(block, outcome)

    def test_marked_blocks_are_valid_python(self) -> None:
        """Each block marked not-run still parses, top-level ``await`` allowed."""
        for block in BLOCKS:
            if block.not_run is None:
                continue

            if block.kind == "doctest":
                doctest.DocTestParser().get_examples(block.code, block.id)
            else:
                compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    def test_marks_are_rare(self) -> None:
        """At most one block in ten is marked not-run, so the docs stay runnable."""
        marked = [b.id for b in BLOCKS if b.not_run is not None]
        assert len(marked) * 10 <= len(BLOCKS), f"too many not-run blocks: {marked}"


class TestExtraction:
    """The extractor finds Python blocks and their marks, and rejects a mark without a reason."""

    def test_finds_python_blocks_only(self) -> None:
        """Python blocks are found with their line; console, text and directive blocks are not."""
        page = "\n".join(
            [
                "# Title",
                "```console",
                "$ python x.py",
                "```",
                "````{eval-rst}",
                "```python",
                "inside another fence",
                "```",
                "````",
                "```python",
                "print(1)",
                "```",
            ]
        )
        assert blocks(page, "p.md") == [
            Block(page="p.md", line=10, code="print(1)\n", not_run=None)
        ]

    def test_reads_a_not_run_mark(self) -> None:
        """A mark on the line before the fence, blank lines between allowed, carries its reason."""
        page = "<!-- not-run: a fragment -->\n\n```python\nx = await f()\n```\n"
        (block,) = blocks(page, "p.md")
        assert block.not_run == "a fragment"

    def test_rejects_a_mark_without_reason(self) -> None:
        """A not-run mark with no reason is an error that says how to write one."""
        with pytest.raises(ValueError, match="needs a reason"):
            blocks("<!-- not-run: -->\n```python\npass\n```\n", "p.md")

    def test_tells_the_kinds_apart(self) -> None:
        """Sessions are doctests, test modules run under pytest, the rest are scripts."""
        kinds = [
            Block(page="p", line=1, code=code, not_run=None).kind
            for code in (">>> 1 + 1\n2\n", "async def test_x() -> None: ...\n", "print(1)\n")
        ]
        assert kinds == ["doctest", "pytest", "script"]

    def test_names_the_file_a_block_is(self) -> None:
        """A block whose first line names a Python file is that file; others are not."""
        named, plain = blocks(
            "```python\n# work.py: a module\nx = 1\n```\n\n```python\n# a comment\n```\n",
            "p.md",
        )
        assert named.file_name == "work.py"
        assert plain.file_name is None

    def test_rejects_an_open_fence(self) -> None:
        """A fence that is never closed is reported with its line."""
        with pytest.raises(ValueError, match=r"p\.md:2: a code fence is never closed"):
            blocks("text\n```python\nprint(1)\n", "p.md")


class TestRuns:
    """The runner starts blocks ahead of their tests and reports how each ended."""

    def test_reports_each_outcome(self, tmp_path: Path) -> None:
        """A block that raises ends with a traceback and status 1, one that works with 0."""
        bad = Block(page="p.md", line=1, code="1 / 0\n", not_run=None)
        good = Block(page="p.md", line=5, code="print('ran')\n", not_run=None)
        runs = Runs([bad, good], tmp_path)
        try:
            failed = runs.outcome(bad)
            worked = runs.outcome(good)
        finally:
            runs.close()

        assert (failed.returncode, "ZeroDivisionError" in failed.stderr) == (1, True)
        assert (worked.returncode, worked.stdout) == (0, "ran\n")
