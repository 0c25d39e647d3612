"""Reading gradient-check logs back: records, a summary, a DataFrame.

Real log files are messy: a run that crashed mid-write leaves a truncated last line, other
tools share the file, several runs append to it. :func:`load` keeps every gradguard record
it can read and says, in ``notes``, what it skipped and why; it never raises on content.

>>> logs = load("gradcheck.jsonl")  # doctest: +SKIP
>>> summary = summarize(logs)  # doctest: +SKIP
>>> print(format_summary(summary))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from gradguard.errors import LogError
from gradguard.logs.records import EVENT, SCHEMA_VERSION

if TYPE_CHECKING:
    import pandas

__all__ = [
    "LogRecords",
    "RunSummary",
    "Summary",
    "TensorSummary",
    "format_summary",
    "load",
    "summarize",
]

NO_RUN = "(no run id)"
DATAFRAME_COLUMNS = (
    "run_id",
    "source",
    "step",
    "timestamp",
    "check_passed",
    "tensor",
    "status",
    "passed",
    "difference",
    "tolerance",
    "coordinates",
    "directions",
    "worst_index",
    "worst_analytic",
    "worst_numeric",
)


@attrs.frozen
class LogRecords:
    """The gradguard records read from one or more JSON-lines files.

    Attributes:
        checks: The ``gradcheck`` records, in file order (each a dict, as written).
        events: Lifecycle records (``guard_disabled``, ...), in file order.
        notes: What was skipped or worth knowing, one line each (``file:line: why``).
        sources: The files read.
    """

    checks: tuple[dict[str, Any], ...]
    events: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.checks) + len(self.events)

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per (check, tensor): run_id, step, timestamp, tensor, status, difference, ...

        Raises:
            ImportError: pandas is not installed (``pip install pandas``).
        """
        try:
            import pandas
        except ImportError as exc:  # pragma: no cover - pandas is a dev dependency
            raise ImportError("LogRecords.to_dataframe() needs pandas: pip install pandas") from exc
        rows: list[dict[str, Any]] = []
        for check in self.checks:
            for param in check.get("params") or []:
                rows.append(
                    {
                        "run_id": check.get("run_id"),
                        "source": check.get("source"),
                        "step": check.get("step"),
                        "timestamp": check.get("timestamp"),
                        "check_passed": check.get("passed"),
                        "tensor": param.get("name"),
                        "status": param.get("status"),
                        "passed": param.get("passed"),
                        "difference": param.get("difference"),
                        "tolerance": param.get("tolerance"),
                        "coordinates": param.get("coordinates"),
                        "directions": param.get("directions"),
                        "worst_index": param.get("worst_index"),
                        "worst_analytic": param.get("worst_analytic"),
                        "worst_numeric": param.get("worst_numeric"),
                    }
                )
        frame = pandas.DataFrame(rows, columns=list(DATAFRAME_COLUMNS))
        # ISO8601: records written by older versions may lack the fractional second.
        frame["timestamp"] = pandas.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
        return frame


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().split("\n")
    except IsADirectoryError as exc:
        raise LogError(f"{path} is a directory, not a JSON-lines log file") from exc
    except FileNotFoundError as exc:
        raise LogError(f"{path} does not exist") from exc
    except OSError as exc:
        raise LogError(f"{path} cannot be read: {exc.strerror or exc}") from exc


def load(*paths: str | os.PathLike[str]) -> LogRecords:
    """Read gradguard records from JSON-lines files, skipping what is not one, with notes.

    Raises:
        LogError: a file cannot be opened at all. Unreadable *content* never raises.
    """
    checks: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    notes: list[str] = []
    for raw_path in paths:
        path = os.fspath(raw_path)
        lines = _read_lines(path)
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        foreign = 0
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                if number - 1 == last:
                    notes.append(
                        f"{path}:{number}: truncated last line skipped (a crash mid-write?)"
                    )
                else:
                    notes.append(f"{path}:{number}: not JSON, skipped")
                continue
            if not isinstance(record, dict) or "schema" not in record or "event" not in record:
                foreign += 1
                continue
            if not isinstance(record["schema"], int) or record["schema"] > SCHEMA_VERSION:
                notes.append(
                    f"{path}:{number}: schema {record['schema']!r} is newer than this gradguard "
                    f"reads ({SCHEMA_VERSION}); read as far as it matches"
                )
            record["_source"] = f"{path}:{number}"
            (checks if record["event"] == EVENT else events).append(record)
        if foreign:
            notes.append(f"{path}: {foreign} line(s) from other tools skipped")
    return LogRecords(
        checks=tuple(checks),
        events=tuple(events),
        notes=tuple(notes),
        sources=tuple(os.fspath(p) for p in paths),
    )


@attrs.frozen
class TensorSummary:
    """One tensor across every check that probed it.

    Attributes:
        name: The tensor's name.
        checks: How many checks probed it.
        failures: How many of those it failed.
        first_failure_step: The step of its first failing check (``None``: never failed,
            or the failing check had no step).
        first_failure_run: The run of that check.
        worst_difference: Its largest relative difference.
        tolerance: The tolerance it was judged against (the last one seen).
        statuses: How often each status occurred.
    """

    name: str
    checks: int
    failures: int
    first_failure_step: int | None
    first_failure_run: str | None
    worst_difference: float | None
    tolerance: float | None
    statuses: dict[str, int]


@attrs.frozen
class RunSummary:
    """One run (one guard, callback or test session) in the logs."""

    run_id: str
    checks: int
    failed: int
    first_step: int | None
    last_step: int | None
    disabled: str | None  # why the front door switched itself off, if it did


@attrs.frozen
class Summary:
    """What ``gradguard report`` says: runs, checks, failures by tensor, statuses."""

    runs: tuple[RunSummary, ...]
    checks: int
    failed_checks: int
    tensors: tuple[TensorSummary, ...]
    statuses: dict[str, int]
    notes: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """Whether no check in the logs failed."""
        return self.failed_checks == 0

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-ready dict."""
        return {
            "passed": self.passed,
            "checks": self.checks,
            "failed_checks": self.failed_checks,
            "runs": [attrs.asdict(r) for r in self.runs],
            "tensors": [attrs.asdict(t) for t in self.tensors],
            "statuses": dict(self.statuses),
            "notes": list(self.notes),
        }


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def summarize(logs: LogRecords) -> Summary:
    """Summarize the checks in ``logs``: per run, per tensor, per status."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for check in logs.checks:
        by_run.setdefault(check.get("run_id") or NO_RUN, []).append(check)
    disabled = {
        (event.get("run_id") or NO_RUN): str(event.get("reason"))
        for event in logs.events
        if event.get("event") == "guard_disabled"
    }
    for event in logs.events:  # a front door switched off before its first check is a run too
        by_run.setdefault(event.get("run_id") or NO_RUN, [])
    runs = []
    for run_id, checks in by_run.items():
        steps = [c["step"] for c in checks if isinstance(c.get("step"), int)]
        runs.append(
            RunSummary(
                run_id=run_id,
                checks=len(checks),
                failed=sum(1 for c in checks if c.get("passed") is not True),
                first_step=min(steps) if steps else None,
                last_step=max(steps) if steps else None,
                disabled=disabled.get(run_id),
            )
        )
    tensors: dict[str, dict[str, Any]] = {}
    statuses: Counter[str] = Counter()
    for check in logs.checks:
        params = check.get("params") or []
        if check.get("status") == "nondeterministic":
            statuses["nondeterministic"] += 1
        for param in params:
            name = str(param.get("name"))
            entry = tensors.setdefault(
                name,
                {
                    "checks": 0,
                    "failures": 0,
                    "first": None,
                    "worst": None,
                    "tol": None,
                    "statuses": Counter(),
                },
            )
            status = str(param.get("status"))
            entry["checks"] += 1
            entry["statuses"][status] += 1
            if status != "nondeterministic":
                statuses[status] += 1
            difference = _finite(param.get("difference"))
            if difference is not None and (entry["worst"] is None or difference > entry["worst"]):
                entry["worst"] = difference
            entry["tol"] = _finite(param.get("tolerance")) or entry["tol"]
            if status == "fail":
                entry["failures"] += 1
                if entry["first"] is None:
                    entry["first"] = (check.get("step"), check.get("run_id") or NO_RUN)
    tensor_summaries = tuple(
        TensorSummary(
            name=name,
            checks=e["checks"],
            failures=e["failures"],
            first_failure_step=e["first"][0] if e["first"] else None,
            first_failure_run=e["first"][1] if e["first"] else None,
            worst_difference=e["worst"],
            tolerance=e["tol"],
            statuses=dict(e["statuses"]),
        )
        for name, e in tensors.items()
    )
    return Summary(
        runs=tuple(runs),
        checks=len(logs.checks),
        failed_checks=sum(1 for c in logs.checks if c.get("passed") is not True),
        tensors=tensor_summaries,
        statuses=dict(statuses),
        notes=logs.notes,
    )


def _table(rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_summary(summary: Summary) -> str:
    """The text ``gradguard report`` prints: read at a glance, failures first."""
    if summary.checks == 0:
        verdict = "no gradient checks in these logs"
    elif summary.passed:
        verdict = f"all {summary.checks} checks passed"
    else:
        verdict = f"{summary.failed_checks} of {summary.checks} checks FAILED"
    lines = [
        f"gradguard report: {verdict} ({len(summary.runs)} run{'s' * (len(summary.runs) != 1)})"
    ]
    if summary.runs:
        lines += ["", "runs:"]
        rows: list[tuple[str, ...]] = [("run", "checks", "failed", "steps", "switched off")]
        for run in summary.runs:
            steps = "-" if run.first_step is None else f"{run.first_step}-{run.last_step}"
            rows.append((run.run_id, str(run.checks), str(run.failed), steps, run.disabled or "-"))
        lines += _table(rows)
    failing = [t for t in summary.tensors if t.failures]
    if failing:
        lines += ["", "failures by tensor:"]
        rows = [("tensor", "failed", "of", "first failing step", "run", "worst difference")]
        for t in sorted(failing, key=lambda t: -t.failures):
            rows.append(
                (
                    t.name,
                    str(t.failures),
                    str(t.checks),
                    "-" if t.first_failure_step is None else str(t.first_failure_step),
                    t.first_failure_run or "-",
                    _fmt(t.worst_difference),
                )
            )
        lines += _table(rows)
    if summary.tensors:
        lines += ["", "worst difference per tensor:"]
        rows = [("tensor", "checks", "worst difference", "tolerance", "statuses")]
        for t in summary.tensors:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(t.statuses.items()))
            rows.append(
                (t.name, str(t.checks), _fmt(t.worst_difference), _fmt(t.tolerance), counts)
            )
        lines += _table(rows)
    if summary.statuses:
        lines += [
            "",
            "statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items())),
        ]
    if summary.notes:
        lines += ["", "notes:"] + [f"  {note}" for note in summary.notes]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"
