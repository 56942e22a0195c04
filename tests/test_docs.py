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
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

# Generous: bounds how long a broken example hangs, not a timing claim.
WAIT = 60.0

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*?)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not-run:(?P<reason>.*?)-->$")
_PYTHON = {"python", "py", "pycon", "python3"}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """One fenced Python code block of a page."""

    page: str
    line: int
    code: str
    not_run: str | None

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


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=WAIT, check=False)


def _explain(block: Block, result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"the code block at {block.id} failed (exit status {result.returncode}); mark it "
        f"<!-- not-run: reason --> only if it cannot run by design.\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def _run_doctest(block: Block) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block.code, {}, block.id, block.page, block.line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert not runner.failures, f"the doctest at {block.id} failed:\n{''.join(out)}"


def _run_pytest(block: Block, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\nanyio_mode = "auto"\n')
    (tmp_path / "test_example.py").write_text(block.code, encoding="utf-8")
    # anyio's plugin runs the tests, as docs/testing.md sets it up.
    args = ["-q", "-W", "error", "-p", "no:cacheprovider", "-p", "no:asyncio"]
    result = _run([sys.executable, "-m", "pytest", *args], tmp_path)
    assert result.returncode == 0, _explain(block, result)


def _run_script(block: Block, tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(block.code, encoding="utf-8")
    result = _run([sys.executable, "-W", "error", "example.py"], tmp_path)
    assert result.returncode == 0, _explain(block, result)
    assert "Traceback (most recent call last)" not in result.stderr, _explain(block, result)


class TestCodeBlocks:
    """Every Python block in the docs and the README runs, unless marked not-run."""

    @pytest.mark.parametrize("block", [b for b in BLOCKS if b.not_run is None], ids=_block_id)
    def test_block_runs(self, block: Block, tmp_path: Path) -> None:
        """The block runs without an error, as a doctest, a pytest module or a script."""
        if block.kind == "doctest":
            _run_doctest(block)
        elif block.kind == "pytest":
            _run_pytest(block, tmp_path)
        else:
            _run_script(block, tmp_path)

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

    def test_rejects_an_open_fence(self) -> None:
        """A fence that is never closed is reported with its line."""
        with pytest.raises(ValueError, match=r"p\.md:2: a code fence is never closed"):
            blocks("text\n```python\nprint(1)\n", "p.md")
