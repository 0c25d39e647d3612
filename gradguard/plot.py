"""``gradguard report --plot``: the relative difference per tensor over the steps of a run.

matplotlib is an optional dependency (``pip install 'gradguard[plot]'``); it is imported
only here, only when a plot is asked for, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from typing import Any

from gradguard.analysis import NO_RUN, LogRecords
from gradguard.errors import GradGuardError

__all__ = ["MissingDependencyError", "plot_differences"]

_FLOOR = 1e-18  # where a difference of exactly 0 is drawn on the log scale


class MissingDependencyError(GradGuardError, ImportError):
    """An optional dependency is needed for what was asked (matplotlib for plots)."""


def plot_differences(logs: LogRecords, path: str | os.PathLike[str]) -> str:
    """Draw every tensor's difference over the steps, with tolerances and failures, to a PNG.

    Returns:
        The path written.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError(
            "plotting needs matplotlib: pip install 'gradguard[plot]' (or pip install matplotlib)"
        ) from exc

    runs = sorted({c.get("run_id") or NO_RUN for c in logs.checks})
    series: dict[str, dict[str, list[Any]]] = {}
    tolerances: set[float] = set()
    for index, check in enumerate(logs.checks):
        step = check.get("step")
        x = step if isinstance(step, int) else index
        run = check.get("run_id") or NO_RUN
        for param in check.get("params") or []:
            label = str(param.get("name"))
            if len(runs) > 1:
                label = f"{run}: {label}"
            entry = series.setdefault(label, {"x": [], "y": [], "fail_x": [], "fail_y": []})
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

    figure, axes = plt.subplots(figsize=(9, 5), layout="constrained")
    # Red is kept for the failure markers: the lines cycle through tab10 without it.
    tab10 = plt.get_cmap("tab10")
    palette = [tab10(i) for i in range(10) if i != 3]  # tab10's fourth colour is red
    axes.set_prop_cycle(color=palette)
    for label, entry in sorted(series.items()):
        axes.plot(entry["x"], entry["y"], marker="o", markersize=3, label=label)
        if entry["fail_x"]:
            axes.scatter(
                entry["fail_x"],
                entry["fail_y"],
                marker="X",
                s=90,
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
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel("relative difference (analytic vs numeric)")
    failed = sum(1 for c in logs.checks if c.get("passed") is not True)
    axes.set_title(
        f"gradguard: {len(logs.checks)} checks, {failed} failed (red X = failing tensor)"
    )
    axes.grid(True, which="major", alpha=0.3)
    if series:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    target = os.fspath(path)
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target
