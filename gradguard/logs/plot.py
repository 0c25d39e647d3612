"""``gradguard report --plot``: the relative difference per tensor over a run, or per test.

matplotlib is an optional dependency (``pip install 'gradguard[plot]'``); it is imported
only here, only when a plot is asked for. The figure is drawn with matplotlib's object API
(``Figure`` and the Agg canvas), never through ``pyplot``, so the caller's backend, open
figures and rc settings are left alone.

A training run is a panel of lines over the steps, one per tensor. A pytest session is a
panel of points, one column per test (its tensors side by side), never joined by lines: the
tests are not a series. In both, a red X marks a failing tensor (two failing at one step or
in one test are set side by side, not on top of each other), an orange diamond an
inconclusive one (at its unresolved difference, or along the top when it has none), a grey
ring along the bottom one whose gradient is zero (its relative difference is noise over
noise, so it is not drawn as a value).

:class:`PlotData` collects what it draws one record at a time with bounded memory: a series
longer than :data:`MAX_POINTS` keeps every second point (and so on), and markers and tests
past their caps are counted in the titles.
"""

from __future__ import annotations

import io
import os
from typing import Any

from gradguard.errors import MissingDependencyError, SettingsError
from gradguard.logs.paths import open_regular
from gradguard.logs.reader import NO_RUN, LogRecords
from gradguard.logs.records import EVENT
from gradguard.logs.validate import finite

__all__ = ["FORMATS", "PlotData", "plot_differences", "plot_target", "write_plot"]

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
"""File name suffixes ``--plot`` writes, and their formats (no suffix: PNG)."""
MAX_POINTS = 2000
"""Points kept per line; past it, a line keeps every second point."""
MAX_MARKERS = 2000
"""Failure, inconclusive and zero markers kept per panel."""
MAX_TESTS = 60
"""Tests drawn per pytest panel; more are counted in its title."""
_MAX_PANELS = 6
_OTHER = "(other runs)"


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "plotting needs matplotlib: pip install 'gradguard[plot]' (or pip install matplotlib)"
        ) from exc


def plot_target(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Check a plot's path before any work: ``(path, format)``.

    Raises:
        SettingsError: the suffix is not one of :data:`FORMATS` (or none), the path is a
            directory, or an existing file that is not a regular file (a FIFO, ``/dev/full``).
        MissingDependencyError: matplotlib is not installed.
    """
    target = os.fspath(path)
    if not isinstance(target, str) or not target:
        raise SettingsError("--plot needs a file name, such as gradcheck.png")
    if os.path.isdir(target):
        raise SettingsError(
            f"--plot {target} is a directory: give a file name, such as "
            f"{os.path.join(target, 'gradcheck.png')}"
        )
    suffix = os.path.splitext(target)[1].lower()
    if suffix not in FORMATS and suffix != "":
        raise SettingsError(
            f"--plot {target}: cannot draw a {suffix} file; give a name ending in "
            f"{', '.join(FORMATS)} (or no suffix, for PNG)"
        )
    if os.path.exists(target) and not os.path.isfile(target):
        raise SettingsError(f"--plot {target} exists and is not a regular file")
    _require_matplotlib()
    return target, FORMATS.get(suffix, "png")


def _thin(entry: dict[str, Any]) -> None:
    """Halve a series past MAX_POINTS, keeping every second point, and double its stride."""
    if len(entry["x"]) > MAX_POINTS:
        entry["x"], entry["y"] = entry["x"][::2], entry["y"][::2]
        entry["stride"] *= 2


class PlotData:
    """What the plot draws, collected one record at a time (see the module docstring)."""

    def __init__(self) -> None:
        self.panels: dict[str, dict[str, Any]] = {}
        self.checks = 0
        self.failed = 0

    def _panel(self, run: str, tests: bool) -> dict[str, Any]:
        if run in self.panels:
            return self.panels[run]
        if len(self.panels) >= _MAX_PANELS - 1:  # runs past the first few share the last panel
            run = _OTHER
        return self.panels.setdefault(
            run,
            {"tests": tests, "series": {}, "fail": [], "inconclusive": [], "zero": [],
             "test_names": {}, "points": [], "checks": 0, "failed": 0, "dropped": 0,
             "more_tests": set(), "tolerances": set()},
        )  # fmt: skip

    def add(self, record: dict[str, Any]) -> None:
        """Add one valid check record (other records are ignored)."""
        if record.get("event") != EVENT:
            return
        self.checks += 1
        bad = record.get("status") != "pass" or record.get("passed") is not True
        self.failed += bad
        run = record.get("run_id") or NO_RUN
        label = record.get("label")
        panel = self._panel(run, isinstance(label, str))
        panel["checks"] += 1
        panel["failed"] += bad
        params = record.get("params") or []
        for param in params:
            tolerance = finite(param.get("tolerance"))
            if tolerance is not None and tolerance > 0 and len(panel["tolerances"]) < 4:
                panel["tolerances"].add(tolerance)
        if panel["tests"] and isinstance(label, str):
            self._add_test(panel, label, params)
            return
        step = record.get("step")
        x = float(step) if isinstance(step, int) and abs(step) < 2**53 else float(self.checks)
        failing = 0
        for param in params:
            name = str(param.get("name"))
            if panel is self.panels.get(_OTHER):
                name = f"{run}: {name}"
            status = param.get("status")
            y = finite(param.get("difference"))
            if status == "zero" or (status == "inconclusive" and y is None):
                self._marker(panel, status, (x, None))
                continue
            if status == "inconclusive":
                self._marker(panel, status, (x, max(y, _FLOOR)))  # type: ignore[type-var]
                continue
            if y is None:
                continue
            y = max(y, _FLOOR)
            entry = panel["series"].setdefault(name, {"x": [], "y": [], "stride": 1, "seen": 0})
            if entry["seen"] % entry["stride"] == 0:
                entry["x"].append(x)
                entry["y"].append(y)
                _thin(entry)
            entry["seen"] += 1
            if status == "fail":
                self._marker(panel, "fail", (x, y, failing))
                failing += 1

    def _marker(self, panel: dict[str, Any], kind: str, marker: tuple[Any, ...]) -> None:
        if len(panel[kind]) < MAX_MARKERS:
            panel[kind].append(marker)
        else:
            panel["dropped"] += 1

    def _add_test(self, panel: dict[str, Any], label: str, params: list[Any]) -> None:
        names = panel["test_names"]
        if label not in names:
            if len(names) >= MAX_TESTS:
                if len(panel["more_tests"]) < 10**5:  # counted, up to a bound
                    panel["more_tests"].add(label)
                return
            names[label] = len(names)
        index = names[label]
        for slot, param in enumerate(params):
            status = str(param.get("status"))
            y = finite(param.get("difference"))
            if status in ("zero", "inconclusive") or y is not None:
                point = (index, slot, len(params), status, None if y is None else max(y, _FLOOR))
                if len(panel["points"]) < MAX_MARKERS * 4:
                    panel["points"].append(point)
                else:
                    panel["dropped"] += 1

    def render(self, fmt: str = "png") -> bytes:
        """The figure, encoded as ``fmt`` (``png``, ``svg`` or ``pdf``).

        Raises:
            MissingDependencyError: matplotlib is not installed.
        """
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format=fmt, dpi=120)
        return buffer.getvalue()

    def figure(self) -> Any:
        """The matplotlib ``Figure`` (on an Agg canvas, outside pyplot).

        Raises:
            MissingDependencyError: matplotlib is not installed.
        """
        try:
            from matplotlib import colormaps
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from matplotlib.lines import Line2D
            from matplotlib.transforms import blended_transform_factory, offset_copy
        except ImportError as exc:
            raise MissingDependencyError(
                "plotting needs matplotlib: pip install 'gradguard[plot]' "
                "(or pip install matplotlib)"
            ) from exc
        panels = list(self.panels) or [NO_RUN]
        if not self.panels:
            self._panel(NO_RUN, False)
        height = 1.2 + 2.6 * len(panels)
        figure = Figure(figsize=(9, height), layout="constrained")
        FigureCanvasAgg(figure)
        grid = figure.subplots(len(panels), 1, squeeze=False)
        tab10 = colormaps["tab10"]
        palette = [tab10(i) for i in range(10) if i != 3]  # red is kept for failures
        for axes, name in zip(grid[:, 0], panels, strict=True):
            panel = self.panels[name]
            band = blended_transform_factory(axes.transData, axes.transAxes)
            axes.set_yscale("log")
            if panel["tests"]:
                self._draw_tests(axes, panel, band)
            else:
                axes.set_prop_cycle(color=palette)
                for label, entry in sorted(panel["series"].items()):
                    axes.plot(entry["x"], entry["y"], marker="o", markersize=4, label=label)
                # Two failing tensors of one check: set side by side, 9 points apart.
                for x, y, rank in panel["fail"]:
                    shifted = offset_copy(axes.transData, figure, x=9.0 * rank, units="points")
                    axes.scatter(
                        [x], [y], marker="X", s=110, color="crimson", zorder=5,
                        edgecolors="black", linewidths=0.5, transform=shifted,
                    )  # fmt: skip
                for kind, y_band, style in _BANDS:
                    at = [m[0] for m in panel[kind] if m[1] is not None]
                    if at:  # an inconclusive difference, drawn where it is
                        ys = [m[1] for m in panel[kind] if m[1] is not None]
                        axes.scatter(at, ys, zorder=4, **style)
                    xs = [m[0] for m in panel[kind] if m[1] is None]
                    if xs:
                        axes.scatter(xs, [y_band] * len(xs), transform=band, zorder=4, **style)
                axes.set_xlabel("training step")
                if panel["series"]:
                    axes.legend(
                        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
                    )
            for tolerance in sorted(panel["tolerances"]):
                axes.axhline(tolerance, color="gray", linestyle="--", linewidth=1)
            checks, failed = panel["checks"], panel["failed"]
            verdict = f"{failed} not passed" if failed else "all passed"
            noun = "check" if checks == 1 else "checks"
            kind = "pytest session" if panel["tests"] else "run"
            extra = f"; {panel['dropped']} markers not drawn" if panel["dropped"] else ""
            axes.set_title(
                f"{kind} {name}: {checks} {noun}, {verdict}{extra}", fontsize=10, loc="left"
            )
            axes.set_ylabel("relative difference")
            axes.grid(True, which="major", alpha=0.3)
        handles = [
            Line2D([], [], linestyle="", marker="X", color="crimson", markersize=9, label="fail"),
            *(
                Line2D([], [], linestyle="", label=kind, marker=style["marker"],
                       markersize=7, markerfacecolor=style["c"] if kind != "zero" else "none",
                       markeredgecolor=style.get("edgecolors", style["c"]))
                for kind, _, style in _BANDS
            ),
            Line2D([], [], color="gray", linestyle="--", label="tolerance"),
        ]  # fmt: skip
        figure.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
        figure.suptitle(f"gradguard: {self.checks} checks, {self.failed} not passed", fontsize=11)
        return figure

    def _draw_tests(self, axes: Any, panel: dict[str, Any], band: Any) -> None:
        colours = {"pass": "tab:blue", "fail": "crimson"}
        for index, slot, count, status, y in panel["points"]:
            # The tensors of one test side by side within its column, never on top of each other.
            x = index + (0.0 if count == 1 else -0.2 + 0.4 * slot / (count - 1))
            if status == "inconclusive" and y is not None:
                axes.scatter([x], [y], zorder=4, **_BAND_STYLE[status])
            elif status in ("zero", "inconclusive"):
                axes.scatter(
                    [x], [_BAND_Y[status]], transform=band, zorder=4, **_BAND_STYLE[status]
                )
            elif status == "fail":
                axes.scatter([x], [y], marker="X", s=110, color="crimson", zorder=5,
                             edgecolors="black", linewidths=0.5)  # fmt: skip
            else:
                axes.scatter([x], [y], marker="o", s=22, color=colours.get(status, "gray"))
        names = list(panel["test_names"])
        axes.set_xticks(range(len(names)))
        axes.set_xticklabels([_short_test(n) for n in names], rotation=30, ha="right", fontsize=7)
        axes.set_xlim(-0.6, max(len(names), 1) - 0.4)
        more = len(panel["more_tests"])
        axes.set_xlabel("test" + (f" (and {more} more not drawn)" if more else ""))


def _short_test(nodeid: str) -> str:
    """A test's node id, short enough for a tick label: the file's name and the test's."""
    path, _, name = nodeid.partition("::")
    short = f"{os.path.basename(path)}::{name}" if name else nodeid
    return short if len(short) <= 48 else "..." + short[-45:]


_FLOOR = 1e-18  # where a difference of exactly 0 is drawn on the log scale
_BAND_Y = {"inconclusive": 0.96, "zero": 0.04}
_BAND_STYLE: dict[str, dict[str, Any]] = {
    "inconclusive": {"marker": "D", "s": 40, "c": "darkorange", "edgecolors": "black"},
    "zero": {"marker": "o", "s": 40, "c": "none", "edgecolors": "gray"},
}
_BANDS = [(kind, _BAND_Y[kind], _BAND_STYLE[kind]) for kind in ("inconclusive", "zero")]


def plot_differences(logs: LogRecords, path: str | os.PathLike[str]) -> str:
    """Draw every tensor's difference over the steps (or per test), to a PNG, SVG or PDF.

    Returns:
        The path written.

    Raises:
        SettingsError: the path cannot take a plot (see :func:`plot_target`).
        MissingDependencyError: matplotlib is not installed.
        OSError: the file cannot be written (no permission, a full disk).
    """
    target, fmt = plot_target(path)
    data = PlotData()
    for check in logs.checks:
        data.add(check)
    write_plot(data.render(fmt), target)
    return target


def write_plot(data: bytes, target: str) -> None:
    """Write an encoded figure to ``target``, a regular file; every write error raises.

    Raises:
        OSError: the file cannot be written (no permission, a full disk, not a regular file).
    """
    with open_regular(target, append=True) as handle:
        handle.truncate(0)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())  # a full disk may only say so here
