"""Rebuild the pictures of the docs from measurements (matplotlib, in the ``bench`` group).

    python docs/_static/pictures/make.py                 # redraw from data/*.json
    python docs/_static/pictures/make.py --measure       # measure heartbeat and monitor again
    python docs/_static/pictures/make.py --threads T.json --processes P.json

The pictures and the measurements behind them, all in this directory:

* ``heartbeat.png`` from ``data/heartbeat.json``: the story of ``python -m offload demo``. A
  task ticks every 10 ms while two calls of a blocking function (``time.sleep(1)``) run, first
  called directly, then with ``offload.call`` in two tasks. ``--measure`` runs it again.
* ``benchmarks.png`` from ``data/threads.json`` and ``data/processes.json``: what
  ``python benchmarks/threads.py --backend asyncio --workloads abc --json T.json`` and
  ``python benchmarks/processes.py --json P.json`` wrote; ``--threads`` and ``--processes``
  copy new ones into ``data/``.
* ``monitor.png`` from ``data/monitor.json``: what
  ``python -m offload watch --json FILE stalled_step.py`` wrote for the scenario beside this
  script, whose one step blocks at three sites. ``--measure`` runs it again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

import offload

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

OFFLOAD = "#2a7ab0"
PEER = "#b9c3cc"
BLOCKING = "#d2553f"
KINDS = {"blocking": "#d2553f", "cpu": "#e3a23b", "saturation": "#8c6bb1", "starvation": "#6b8e23"}

TICK = 0.01  # the heartbeat's period, as in the demo
CALL = 1.0  # seconds of each blocking call, as in the demo


# -- measurements ---------------------------------------------------------------------------


def fetch_report() -> None:
    time.sleep(CALL)


async def _heartbeat_run() -> dict[str, Any]:
    start = time.perf_counter()
    beats: list[tuple[float, float]] = []
    calls: list[dict[str, Any]] = []

    def now() -> float:
        return time.perf_counter() - start

    async def heartbeat() -> None:
        while True:
            before = time.perf_counter()
            await anyio.sleep(TICK)
            beats.append((now(), time.perf_counter() - before - TICK))

    async def offloaded(i: int) -> None:
        began = now()
        await offload.call(fetch_report)
        calls.append({"phase": "offloaded", "call": i, "start": began, "end": now()})

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(heartbeat)
        await anyio.sleep(0.3)
        phases = {"blocking": [now()]}
        for i in range(2):
            began = now()
            fetch_report()  # called directly: the loop stops
            calls.append({"phase": "blocking", "call": i, "start": began, "end": now()})

        phases["blocking"].append(now())
        await anyio.sleep(0.3)
        phases["offloaded"] = [now()]
        async with anyio.create_task_group() as pair:
            pair.start_soon(offloaded, 0)
            pair.start_soon(offloaded, 1)

        phases["offloaded"].append(now())
        await anyio.sleep(0.3)
        tasks.cancel_scope.cancel()

    return {"tick": TICK, "call": CALL, "beats": beats, "calls": calls, "phases": phases}


def measure_heartbeat() -> None:
    data = anyio.run(_heartbeat_run)
    (DATA / "heartbeat.json").write_text(json.dumps(data, indent=1) + "\n")


def measure_monitor() -> None:
    out = DATA / "monitor.json"
    subprocess.run(
        [sys.executable, "-m", "offload", "watch", "--json", str(out), "stalled_step.py"],
        cwd=HERE,
        check=True,
    )


# -- pictures -------------------------------------------------------------------------------


def draw_heartbeat() -> None:
    data = json.loads((DATA / "heartbeat.json").read_text())
    fig, (calls_ax, lag_ax) = plt.subplots(
        2, 1, figsize=(10, 5.2), sharex=True, height_ratios=[1, 2.4], layout="constrained"
    )
    for phase, color in (("blocking", BLOCKING), ("offloaded", OFFLOAD)):
        for call in (c for c in data["calls"] if c["phase"] == phase):
            calls_ax.barh(
                call["call"],
                call["end"] - call["start"],
                left=call["start"],
                color=color,
                height=0.6,
            )

    blocking, offloaded = data["phases"]["blocking"], data["phases"]["offloaded"]
    calls_ax.text(
        sum(blocking) / 2, 1.75, "called directly: one after the other", ha="center", fontsize=10
    )
    calls_ax.text(
        sum(offloaded) / 2, 1.75, "await offload.call(...): together", ha="center", fontsize=10
    )
    calls_ax.set_yticks([0, 1], ["call 1", "call 2"])
    calls_ax.set_ylim(-0.6, 2.3)
    calls_ax.invert_yaxis()
    calls_ax.set_title(
        "Two calls of a blocking function (1 s each) beside a heartbeat that ticks every 10 ms",
        loc="left",
        fontsize=11,
    )

    times = [t for t, _ in data["beats"]]
    lags = [max(lag * 1000, 0.01) for _, lag in data["beats"]]
    colors = [
        BLOCKING
        if blocking[0] <= t <= blocking[1] + 0.05
        else OFFLOAD
        if offloaded[0] <= t <= offloaded[1]
        else "#555555"
        for t in times
    ]
    lag_ax.vlines(times, 0.01, lags, colors=colors, linewidth=1)
    lag_ax.scatter(times, lags, c=colors, s=9, zorder=3)
    lag_ax.set_yscale("log")
    lag_ax.set_ylim(0.01, 5000)
    lag_ax.set_ylabel("how late each beat woke (ms)")
    lag_ax.set_xlabel("time (s)")
    for ax in (calls_ax, lag_ax):
        ax.axvspan(*blocking, color=BLOCKING, alpha=0.08)
        ax.axvspan(*offloaded, color=OFFLOAD, alpha=0.08)
        ax.spines[["top", "right"]].set_visible(False)

    frozen = max(lag for t, lag in data["beats"] if blocking[0] <= t <= blocking[1] + 0.05)
    worst = max(lag for t, lag in data["beats"] if offloaded[0] <= t <= offloaded[1])
    lag_ax.annotate(
        f"one beat, {frozen:.2f} s late:\nthe loop was frozen",
        xy=(blocking[1], frozen * 1000),
        xytext=(blocking[1] + 0.15, 600),
        fontsize=10,
        color=BLOCKING,
    )
    lag_ax.text(
        sum(offloaded) / 2,
        40,
        f"{sum(1 for t in times if offloaded[0] <= t <= offloaded[1])} beats,"
        f" at most {worst * 1000:.1f} ms late",
        ha="center",
        fontsize=10,
        color=OFFLOAD,
    )
    fig.savefig(HERE / "heartbeat.png", dpi=110)
    plt.close(fig)


Medians = dict[str, tuple[float, float, float]]


def _medians(samples: list[dict[str, Any]], workload: str) -> Medians:
    values: dict[str, list[float]] = {}
    for sample in samples:
        if sample["workload"] == workload and sample.get("backend", "asyncio") == "asyncio":
            values.setdefault(sample["contender"], []).append(sample["value"])

    return {name: (statistics.median(v), min(v), max(v)) for name, v in values.items()}


THREAD_NAMES = {
    "offload": "offload",
    "to_thread": "asyncio.to_thread",
    "run_in_executor": "loop.run_in_executor",
    "anyio": "anyio.to_thread",
    "asyncer": "asyncer.asyncify",
    "starlette": "starlette",
    "asgiref": "asgiref",
}
PROCESS_NAMES = {
    "offload": "offload",
    "executor": "ProcessPoolExecutor",
    "anyio": "anyio.to_process",
    "loky": "loky",
    "pebble": "pebble",
}


def _bars(
    ax: Any,
    medians: dict[str, tuple[float, float, float]],
    names: dict[str, str],
    title: str,
    unit: str,
    higher_is_better: bool,
) -> None:
    order = sorted(
        (key for key in names if key in medians),
        key=lambda key: medians[key][0],
        reverse=not higher_is_better,
    )
    ys = range(len(order))
    mids = [medians[key][0] for key in order]
    lows = [medians[key][0] - medians[key][1] for key in order]
    highs = [medians[key][2] - medians[key][0] for key in order]
    colors = [OFFLOAD if key == "offload" else PEER for key in order]
    ax.barh(ys, mids, color=colors, xerr=[lows, highs], error_kw={"ecolor": "#444", "lw": 0.8})
    ax.set_yticks(list(ys), [names[key] for key in order])
    ax.invert_yaxis()
    for y, value in zip(ys, mids, strict=True):
        text = f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
        ax.text(value, y, f" {text}", va="bottom", fontsize=8, color="#222")

    better = "higher is better" if higher_is_better else "lower is better"
    ax.set_title(f"{title}\n{unit}, {better}", loc="left", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)


def draw_benchmarks() -> None:
    threads = json.loads((DATA / "threads.json").read_text())
    processes = json.loads((DATA / "processes.json").read_text())
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.2), layout="constrained")
    _bars(
        axes[0][0],
        _medians(threads["samples"], "b"),
        THREAD_NAMES,
        "Threads: 20,000 no-op calls from 100 tasks",
        "calls/s",
        True,
    )
    _bars(
        axes[0][1],
        _medians(threads["samples"], "c"),
        THREAD_NAMES,
        "Threads: heartbeat lag while 200 blocking calls run",
        "p99 ms",
        False,
    )
    _bars(
        axes[1][0],
        _medians(threads["samples"], "a"),
        THREAD_NAMES,
        "Threads: 5,000 sequential no-op calls (round trip)",
        "µs per call",
        False,
    )
    _bars(
        axes[1][1],
        _medians(processes["samples"], "a"),
        PROCESS_NAMES,
        "Processes: 1,000 tiny calls, 8 in flight, 2 workers",
        "µs per call",
        False,
    )
    meta = threads["meta"]
    fig.suptitle(
        f"offload against its peers on asyncio: medians of {meta.get('rounds', '?')} interleaved"
        f" rounds (bars: min to max), {meta['cpus']} shared cores, Python {meta['python']}",
        fontsize=11,
    )
    fig.savefig(HERE / "benchmarks.png", dpi=110)
    plt.close(fig)


def _where(frame: dict[str, Any]) -> str:
    return f"{Path(frame['filename']).name}:{frame['lineno']} in {frame['name']}"


def draw_monitor() -> None:
    data = json.loads((DATA / "monitor.json").read_text())
    event = max(data["events"], key=lambda e: e["duration"])
    split = event["split"]
    height = 1.9 + 0.62 * len(split)  # inches
    fig = plt.figure(figsize=(10, height))
    bar = fig.add_axes((0.03, 1 - 1.25 / height, 0.94, 0.55 / height))
    left = 0.0
    for share in split:
        color = KINDS[share["kind"]]
        bar.barh(
            0, share["duration"], left=left, color=color, height=1, edgecolor="white", linewidth=2
        )
        bar.text(
            left + share["duration"] / 2,
            0,
            f"{share['share']:.0%}" if share["share"] > 0.04 else "",
            ha="center",
            va="center",
            color="white",
            fontsize=10,
            weight="bold",
        )
        left += share["duration"]

    bar.set_xlim(0, left)
    bar.set_yticks([])
    bar.tick_params(axis="x", labelsize=8)
    bar.spines[["top", "right", "left"]].set_visible(False)
    fig.text(
        0.03,
        0.97,
        f"offload.monitor: one step of the event loop blocked it for {event['duration']:.2f} s,"
        f" at {len(split)} sites (seconds below)",
        fontsize=11,
        va="top",
    )
    for i, share in enumerate(split):
        y = 1 - (1.75 + 0.62 * i) / height
        site = share["site"]
        fig.text(
            0.03,
            y,
            f"{share['share']:>4.0%} {share['duration']:.3f} s {share['kind']}",
            family="monospace",
            fontsize=9,
            color=KINDS[share["kind"]],
            weight="bold",
            va="top",
        )
        fig.text(0.29, y, f"{_where(site)}", family="monospace", fontsize=9, va="top")
        fig.text(
            0.29,
            y - 0.2 / height,
            f"    {site['line']}",
            family="monospace",
            fontsize=9,
            va="top",
            color="#333",
        )
        fig.text(
            0.29,
            y - 0.4 / height,
            f"fix: {share['fix']}",
            family="monospace",
            fontsize=8.5,
            color="#2a7a2a",
            va="top",
        )

    fig.savefig(HERE / "monitor.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="measure heartbeat and monitor")
    parser.add_argument("--threads", metavar="FILE", help="benchmarks/threads.py --json output")
    parser.add_argument("--processes", metavar="FILE", help="processes.py --json output")
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    if args.measure:
        measure_heartbeat()
        measure_monitor()

    if args.threads:
        shutil.copyfile(args.threads, DATA / "threads.json")

    if args.processes:
        shutil.copyfile(args.processes, DATA / "processes.json")

    draw_heartbeat()
    draw_benchmarks()
    draw_monitor()


if __name__ == "__main__":
    main()
