"""``python -m offload watch``: run a program under the blocking monitor, report at exit."""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import traceback
import types
from typing import Any

from ._monitor import BlockingEvent, Monitor, Report, monitor

__all__ = ("watch",)


def watch(
    *, target: str, module: bool, args: list[str], threshold: float, json_path: str | None
) -> None:
    """Run ``target`` as ``python target args`` (or ``python -m target args``) would.

    The program sees the ``sys.argv`` and ``__main__`` it expects; its exit code and its
    traceback are its own. Every event loop it runs, in any thread, is watched; the report goes
    to stderr when the interpreter exits, after the program's last thread.
    """
    watcher = monitor.install(threshold=threshold)
    atexit.register(_finish, watcher, json_path)
    if module:
        sys.argv = [target, *args]
        _run(lambda: runpy.run_module(target, run_name="__main__", alter_sys=True))
    else:
        if not os.path.exists(target):
            sys.stderr.write(
                f"{sys.executable}: can't open file {os.path.abspath(target)!r}: "
                f"[Errno 2] No such file or directory\n"
            )
            raise SystemExit(2)

        sys.argv = [target, *args]
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        _run(lambda: runpy.run_path(target, run_name="__main__"))


def _run(run: Any) -> None:
    try:
        run()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        # Show the traceback as ``python script.py`` would: from the program's first frame.
        tb = exc.__traceback__
        while tb is not None and _ours(tb.tb_frame):
            tb = tb.tb_next

        traceback.print_exception(type(exc), exc, tb)
        raise SystemExit(1) from None


def _ours(frame: types.FrameType) -> bool:
    filename = frame.f_code.co_filename
    return filename in (__file__, runpy.__file__) or filename.startswith("<frozen runpy")


def _finish(watcher: Monitor, json_path: str | None) -> None:
    watcher.uninstall()
    report = watcher.report()
    sys.stderr.write(f"\n{report}\n")
    if json_path is not None:
        with open(json_path, "w", encoding="utf-8") as file:
            json.dump(_as_json(report, watcher.events), file, indent=2)
            file.write("\n")


def _frame(frame: Any) -> dict[str, Any] | None:
    if frame is None:
        return None

    return {
        "filename": frame.filename,
        "lineno": frame.lineno,
        "name": frame.name,
        "line": frame.line,
    }


def _as_json(report: Report, events: list[BlockingEvent]) -> dict[str, Any]:
    return {
        "threshold": report.threshold,
        "events": [
            {
                "duration": event.duration,
                "kind": event.kind,
                "site": _frame(event.site),
                "leaf": _frame(event.leaf),
                "stack": [_frame(frame) for frame in event.stack],
                "split": [
                    {
                        "site": _frame(share.site),
                        "duration": share.duration,
                        "share": share.share,
                        "kind": share.kind,
                        "fix": share.fix,
                    }
                    for share in event.split
                ],
                "fix": event.fix,
                "detected_after": event.detected_after,
                "cpu": event.cpu,
                "loop": event.loop,
                "started": event.started,
                "busy_threads": [
                    {"name": busy.name, "site": _frame(busy.site), "share": busy.share}
                    for busy in event.busy_threads
                ],
            }
            for event in events
        ],
        "report": [
            {
                "kind": row.kind,
                "site": _frame(row.site),
                "count": row.count,
                "total": row.total,
                "max": row.max,
                "fix": row.fix,
            }
            for row in report.rows
        ],
    }
