"""Sphinx configuration for offload's documentation.

Build: ``sphinx-build -W -n -b html docs docs/_build/html`` (warnings are errors, nitpicky).

No intersphinx: the build must not need the network, so the few references to types that
live elsewhere (the standard library's, typing_extensions', offload's own type variables) are
silenced one by one in ``nitpick_ignore`` below instead of being linked.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

project = "offload"
author = "The offload developers"
copyright = "the offload developers"
release = importlib.metadata.version("offload")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Single backticks in docstrings are references to Python objects (``Monitor``, ``events``).
default_role = "py:obj"

# -- MyST ---------------------------------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc and napoleon ----------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Public type aliases keep their names in signatures (the modules use postponed annotations).
autodoc_type_aliases = {
    "CancelPolicy": "offload.CancelPolicy",
    "ProcessCancelPolicy": "offload.ProcessCancelPolicy",
    "ExecutorCancelPolicy": "offload.ExecutorCancelPolicy",
}

# -- nitpicky: what cannot be linked without intersphinx ----------------------------------------

nitpick_ignore = [
    # The standard library and typing_extensions, in signatures and attribute types.
    ("py:class", "collections.abc.AsyncGenerator"),
    ("py:class", "collections.abc.AsyncIterable"),
    ("py:class", "collections.abc.Callable"),
    ("py:class", "collections.abc.Coroutine"),
    ("py:class", "collections.abc.Generator"),
    ("py:class", "collections.abc.Iterable"),
    ("py:class", "collections.abc.Mapping"),
    ("py:class", "traceback.FrameSummary"),
    ("py:class", "traceback.StackSummary"),
    ("py:class", "typing_extensions.Unpack"),
    ("py:class", "concurrent.futures.Executor"),
    ("py:class", "concurrent.futures._base.Executor"),
    ("py:class", "concurrent.futures.ThreadPoolExecutor"),
    # The keyword arguments of ThreadPool(...) / ProcessPool(...) and configure(...): private
    # TypedDicts with the fields of ThreadSettings / ProcessSettings, which are documented.
    ("py:class", "offload._settings.ThreadOptions"),
    ("py:class", "offload._settings.ProcessOptions"),
    ("py:class", "offload._settings.ExecutorOptions"),
]
nitpick_ignore_regex = [
    # offload's type variables and ParamSpec (P, P.args, P.kwargs), in signatures: bare in
    # the overloads autodoc reads from the source, qualified elsewhere.
    ("py:class", r"(offload\._pools\.)?(P|R|T|Y)(\.args|\.kwargs)?"),
]

# -- signature fixes ----------------------------------------------------------------------------

# Sphinx renders ``*args: P.args`` (a ParamSpec's arguments) as ``*args: ~typing.~P``, which
# its own signature parser then rejects, printing the whole signature as raw text. Write
# ``P.args`` / ``P.kwargs`` as the source does.
_PARAMSPEC_ARGS = re.compile(r"(\*{1,2})(args|kwargs): ~typing\.~P\b")

# ``ThreadPool.settings()`` is declared once, on the generic base, as returning ``SettingsT``.
_SETTINGS_OF = {
    "offload.ThreadPool": "~offload.ThreadSettings",
    "offload.ProcessPool": "~offload.ProcessSettings",
    "offload.ExecutorPool": "~offload.ExecutorSettings",
}

# Sphinx writes ``Callable[P, R]`` (a ParamSpec's callable) as ``Callable[[P], R]``, which is
# another type: a function of one argument of type P.
_PARAMSPEC_CALLABLE = re.compile(r"Callable\[\[(~?(?:[\w.]+\.)?P)\], ")

# Classes shown without a constructor signature: the decorator protocols describe what
# ``@pool(...)`` returns, and nobody builds settings by hand (``pool.settings()`` returns
# them; their fields are listed under Attributes, with their defaults in the settings guide).
_NO_SIGNATURE = {
    "offload.ThreadDecorator",
    "offload.ProcessDecorator",
    "offload.ExecutorDecorator",
    "offload.PoolSettings",
    "offload.ThreadSettings",
    "offload.ProcessSettings",
    "offload.ExecutorSettings",
}


def _fix_signature(
    app: Any,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    if what == "class" and name in _NO_SIGNATURE:
        return "", None

    if signature is None:
        return None

    signature = _PARAMSPEC_ARGS.sub(
        lambda m: f"{m.group(1)}{m.group(2)}: P.{m.group(2)}", signature
    )
    signature = _PARAMSPEC_CALLABLE.sub(r"Callable[\1, ", signature)
    if return_annotation is not None:
        return_annotation = _PARAMSPEC_CALLABLE.sub(r"Callable[\1, ", return_annotation)

    if return_annotation is not None and "SettingsT" in return_annotation:
        pool, _, _ = name.rpartition(".")
        return_annotation = _SETTINGS_OF.get(pool, return_annotation)

    return signature, return_annotation


# offload's docstrings never open with a type (the annotations carry the types), but napoleon
# reads the text before a colon in the first line of a data or property docstring as one
# ("The default thread pool, named ``thread``: ..."). An empty type before it keeps the prose.
_LEADING_TYPE = re.compile(r"(?<!:):(?!:)")


def _keep_prose(
    app: Any, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    if what in ("data", "attribute", "property") and lines:
        first = re.sub(r"``.*?``|`.*?`", "", lines[0])
        if _LEADING_TYPE.search(first):
            lines[0] = f": {lines[0]}"


# napoleon writes an attribute's annotation out in full as its type (``initializer``'s reads
# ``collections.abc.Callable[[...], object] | None``): shorten it, and write ``...`` as Python
# does (``Callable[..., object]``, not a list holding an ellipsis).
_FULL_CALLABLE = re.compile(r"(?<!~)collections\.abc\.Callable\[\[\.\.\.\], ")


def _short_types(
    app: Any, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    lines[:] = [_FULL_CALLABLE.sub("~collections.abc.Callable[..., ", line) for line in lines]


# A pool's ``__call__`` has five overloads, for type checkers (staticmethod, classmethod,
# generator, function, options). Stacked before any prose they hide what a person needs: the
# api page gives it the one signature Python sees instead. Sphinx shows a method's overloads
# whatever signature the directive gives, so they are taken out of its (cached) source
# analysis of the module.
_ONE_SIGNATURE = ("ThreadPool.__call__", "ProcessPool.__call__")


def _drop_overloads(app: Any) -> None:
    from sphinx.pycode import ModuleAnalyzer

    analyzer = ModuleAnalyzer.for_module("offload._pools")
    analyzer.analyze()
    for name in _ONE_SIGNATURE:
        analyzer.overloads.pop(name, None)


def setup(app: Any) -> None:
    app.connect("builder-inited", _drop_overloads)
    app.connect("autodoc-process-signature", _fix_signature)
    # Before napoleon (priority 500), which turns the docstring into reST.
    app.connect("autodoc-process-docstring", _keep_prose, priority=400)
    # After napoleon, which writes the types.
    app.connect("autodoc-process-docstring", _short_types, priority=600)


# -- HTML ----------------------------------------------------------------------------------------

html_theme = "furo"
html_static_path = ["_static"]
html_css_files = ["offload.css"]
html_title = f"offload {release}"
