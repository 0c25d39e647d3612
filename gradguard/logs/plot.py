"""``gradguard report --plot``: the relative difference per tensor over the steps of a run.

matplotlib is an optional dependency (``pip install 'gradguard[plot]'``); it is imported
only here, only when a plot is asked for. The figure is drawn with matplotlib's object API
(``Figure`` and the Agg canvas), never through ``pyplot``, so the caller's backend, open
figures and rc settings are left alone.
"""

from __future__ import annotations

import os
from typing import Any

from gradguard.errors import MissingDependencyError
from gradguard.logs.reader import NO_RUN, LogRecords

__all__ = ["plot_differences"]

_FLOOR = 1e-18  # where a difference of exactly 0 is drawn on the log scale
_MAX_PANELS = 6


def plot_differences(logs: LogRecords, path: str | os.PathLike[str]) -> str:
    """Draw every tensor's difference over the steps, with tolerances and failures, to a PNG.

    Returns:
        The path written.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "plotting needs matplotlib: pip install 'gradguard[plot]' (or pip install matplotlib)"
        ) from exc

    # One panel per run (in order of appearance), sharing both axes; within a panel one line
    # per tensor. Runs past the first few share the last panel, so the figure stays readable.
    runs: list[str] = []
    for check in logs.checks:
        run = check.get("run_id") or NO_RUN
        if run not in runs:
            runs.append(run)
    panels = runs[: _MAX_PANELS - 1] + (["(other runs)"] if len(runs) >= _MAX_PANELS else runs[-1:])
    panels = list(dict.fromkeys(panels))
    series: dict[str, dict[str, dict[str, list[Any]]]] = {panel: {} for panel in panels}
    counts: dict[str, list[int]] = {panel: [0, 0] for panel in panels}
    tolerances: set[float] = set()
    for index, check in enumerate(logs.checks):
        step = check.get("step")
        x = step if isinstance(step, int) else index
        run = check.get("run_id") or NO_RUN
        panel = run if run in series else "(other runs)"
        counts[panel][0] += 1
        counts[panel][1] += check.get("passed") is not True
        for param in check.get("params") or []:
            label = str(param.get("name"))
            if panel == "(other runs)":
                label = f"{run}: {label}"
            entry = series[panel].setdefault(label, {"x": [], "y": [], "fail_x": [], "fail_y": []})
            difference = param.get("difference")
            if not isinstance(difference, int | float):
                continue
            y = max(float(difference), _FLOOR)
            entry["x"].append(x)
            entry["y"].append(y)
            if param.get("status") == "fail":
                entry["fail_x"].append(x)
                entry["fail_y"].append(y)
            tolerance = param.get("tolerance")
            if isinstance(tolerance, int | float) and tolerance > 0:
                tolerances.add(float(tolerance))

    height = 1.2 + 2.6 * len(panels)
    figure = Figure(figsize=(9, height), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(panels), 1, sharex=True, sharey=True, squeeze=False)
    # Red is kept for the failure markers: the lines cycle through tab10 without it.
    tab10 = colormaps["tab10"]
    palette = [tab10(i) for i in range(10) if i != 3]  # tab10's fourth colour is red
    for axes, panel in zip(grid[:, 0], panels, strict=True):
        axes.set_prop_cycle(color=palette)
        for label, entry in sorted(series[panel].items()):
            axes.plot(entry["x"], entry["y"], marker="o", markersize=4, label=label)
            if entry["fail_x"]:
                axes.scatter(
                    entry["fail_x"],
                    entry["fail_y"],
                    marker="X",
                    s=110,
                    color="crimson",
                    zorder=5,
                    edgecolors="black",
                    linewidths=0.5,
                )
        for tolerance in sorted(tolerances):
            axes.axhline(tolerance, color="gray", linestyle="--", linewidth=1)
            axes.annotate(
                f"tolerance {tolerance:g}",
                xy=(0.0, tolerance),
                xycoords=("axes fraction", "data"),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=8,
                color="dimgray",
            )
        checks, failed = counts[panel]
        verdict = f"{failed} failed" if failed else "all passed"
        noun = "check" if checks == 1 else "checks"
        axes.set_title(f"run {panel}: {checks} {noun}, {verdict}", fontsize=10, loc="left")
        axes.set_yscale("log")
        axes.set_ylabel("relative difference")
        axes.grid(True, which="major", alpha=0.3)
        if series[panel]:
            axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    grid[-1, 0].set_xlabel("training step")
    failed_total = sum(1 for c in logs.checks if c.get("passed") is not True)
    figure.suptitle(
        f"gradguard: {len(logs.checks)} checks, {failed_total} failed "
        "(red X: a failing tensor; dashed: tolerance)",
        fontsize=11,
    )
    target = os.fspath(path)
    figure.savefig(target, dpi=120)
    return target
