"""``python -m offload``: watch a program for blocking code, or see the demo.

* ``python -m offload watch [--threshold S] [--json FILE] script.py [args...]``
* ``python -m offload watch [--threshold S] [--json FILE] -m module [args...]``
* ``python -m offload demo``
"""

from __future__ import annotations

import argparse

__all__ = ("main",)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None

    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")

    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m offload",
        description="Find the code that blocks your event loop.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    watch = commands.add_parser(
        "watch",
        help="run a program under the blocking monitor and report at exit",
        description=(
            "Run a Python program as 'python script.py' (or 'python -m module') would, watch "
            "every event loop it runs, and print where they blocked to stderr at exit."
        ),
    )
    watch.add_argument(
        "--threshold",
        type=_seconds,
        default=0.1,
        metavar="S",
        help="report a loop that does not turn for longer than S seconds (default 0.1)",
    )
    watch.add_argument("--json", metavar="FILE", help="also write the events and report as JSON")
    watch.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python -m")
    watch.add_argument(
        "program",
        nargs=argparse.REMAINDER,
        metavar="script.py [args...]",
        help="the script and its arguments (or, with -m, the module's arguments)",
    )
    commands.add_parser(
        "demo",
        help="show blocking, its cure and the monitor in a few seconds",
        description=(
            "Two blocking calls freeze a heartbeat, the same two offloaded overlap and the "
            "heartbeat keeps ticking, and the monitor names the blocking line."
        ),
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the command line."""
    parser = _parser()
    options = parser.parse_args(argv)
    if options.command == "demo":
        from ._demo import demo

        demo()
        return

    from ._cli import watch

    program: list[str] = options.program
    if options.module is not None:
        target, args = options.module, program
    elif program:
        target, args = program[0], program[1:]
    else:
        parser.parse_args(["watch", "--help"])
        return

    watch(
        target=target,
        module=options.module is not None,
        args=args,
        threshold=options.threshold,
        json_path=options.json,
    )


if __name__ == "__main__":
    main()
