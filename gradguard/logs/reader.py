"""Reading gradient-check logs back: records, a summary, a DataFrame.

Real log files are messy: a run that crashed mid-write leaves a truncated last line, other
tools share the file, several runs append to it, and a file handed to ``gradguard report``
may be anything at all. The reader streams: it reads one line at a time (at most
:data:`MAX_LINE_BYTES`; longer lines are skipped without being held), refuses lines nested
deeper than :data:`MAX_DEPTH`, parses strict JSON only (no ``NaN`` or ``Infinity``),
validates each record against the shipped JSON Schema (:mod:`gradguard.logs.validate`) and
passes on only valid records. What it skips is counted by kind, with the first
:data:`NOTE_EXAMPLES` lines of each kind named, in ``notes``; it never raises on content.

Memory: :func:`summarize_files` (what ``gradguard report`` uses) keeps the summary only, one
entry per run, per (test, tensor) name and per test, plus one line of input: it does not grow
with the number of records. :func:`load` keeps every record, for :meth:`LogRecords.to_dataframe`
and your own analysis.

>>> logs = load("gradcheck.jsonl")  # doctest: +SKIP
>>> summary = summarize(logs)  # doctest: +SKIP
>>> print(format_summary(summary))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs
import numpy as np

from gradguard.errors import LogError
from gradguard.logs.paths import NotRegularFileError, open_regular
from gradguard.logs.records import EVENT, SCHEMA_VERSION
from gradguard.logs.validate import finite, record_error

if TYPE_CHECKING:
    import pandas

__all__ = [
    "MAX_DEPTH",
    "MAX_LINE_BYTES",
    "LogRecords",
    "RunSummary",
    "Summary",
    "TensorSummary",
    "TestSummary",
    "format_summary",
    "iter_records",
    "load",
    "summarize",
    "summarize_files",
]

NO_RUN = "(no run id)"
STDIN = "-"
MAX_LINE_BYTES = 4 * 2**20
"""Longest line read (4 MiB: a record of about 9,000 tensors); a longer one is skipped."""
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects read (a record nests 4 deep); deeper is skipped."""
NOTE_EXAMPLES = 5
"""How many skipped lines of each kind the notes name; the rest are counted."""
LIFECYCLE_EVENTS = ("guard_disabled",)
_EVENTS = frozenset({EVENT, *LIFECYCLE_EVENTS})
_BAD_STATUSES = ("fail", "nondeterministic")  # a check that ended so FAILED
DATAFRAME_COLUMNS = (
    "run_id",
    "source",
    "label",
    "step",
    "timestamp",
    "check_passed",
    "check_status",
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
        checks: The valid ``gradcheck`` records, in file order (each a dict, as written).
        events: Valid lifecycle records (``guard_disabled``, ...), in file order.
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
        """One row per (check, tensor): run_id, source, label (a pytest test's node id), step,
        timestamp, the check's passed and status, the tensor's name, status, difference, ...

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
                        "label": check.get("label"),
                        "step": check.get("step"),
                        "timestamp": check.get("timestamp"),
                        "check_passed": _check_outcome(check) == "pass",
                        "check_status": _check_outcome(check),
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
        # ISO8601: records written by older versions may lack the fractional second; a
        # timestamp that matches the schema's pattern but is no date (month 13) becomes NaT.
        frame["timestamp"] = pandas.to_datetime(
            frame["timestamp"], utc=True, format="ISO8601", errors="coerce"
        )
        return frame


# -- reading: bounded lines, strict JSON, schema-valid records ---------------------------------


class _Notes:
    """What the reader skipped, by kind: the first few lines of each named, the rest counted."""

    def __init__(self) -> None:
        self.examples: dict[str, list[str]] = {}
        self.counts: Counter[str] = Counter()
        self.order: list[str] = []

    def add(self, kind: str, line: str) -> None:
        if kind not in self.counts:
            self.order.append(kind)
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < NOTE_EXAMPLES:
            examples.append(line)

    def lines(self) -> tuple[str, ...]:
        out: list[str] = []
        for kind in self.order:
            out += self.examples[kind]
            more = self.counts[kind] - len(self.examples[kind])
            if more:
                out.append(f"... and {more} more line(s): {kind}")
        return tuple(out)


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not strict JSON")


_BRACKETS = np.zeros(256, dtype=np.int8)
_BRACKETS[[ord("["), ord("{")]] = 1
_BRACKETS[[ord("]"), ord("}")]] = -1


def _too_deep(text: bytes) -> bool:
    """Whether ``text`` nests arrays and objects deeper than :data:`MAX_DEPTH`.

    Checked before parsing: Python's parser recurses, and a line of ten thousand ``[`` would
    exhaust the stack. Brackets inside strings count too, which can only over-estimate; a
    record's strings hold names, so that never refuses a real record.
    """
    if text.count(b"[") + text.count(b"{") <= MAX_DEPTH:
        return False
    depth = np.cumsum(_BRACKETS[np.frombuffer(text, dtype=np.uint8)], dtype=np.int64)
    return bool(depth.max() > MAX_DEPTH)


def _lines(handle: BinaryIO) -> Iterator[tuple[int, bytes | None, bool]]:
    """``(line number, line or None when too long, whether the line ended with a newline)``."""
    number = 0
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES:
            ended = line.endswith(b"\n")
            while not ended:  # skip the rest of the line, a bounded piece at a time
                rest = handle.readline(1 << 20)
                ended = not rest or rest.endswith(b"\n")
            yield number, None, True
            continue
        yield number, line, line.endswith(b"\n")


def _open(path: str) -> BinaryIO:
    if path == STDIN:
        try:
            return os.fdopen(os.dup(0), "rb")  # fd 0 itself, whatever sys.stdin was replaced by
        except OSError as exc:
            raise LogError(f"standard input cannot be read: {exc.strerror or exc}") from exc
    try:
        return open_regular(path, allow_stdin=True)
    except NotRegularFileError as exc:
        raise LogError(
            f"{exc}; gradguard report reads log files (pipe into it with: ... | gradguard report -)"
        ) from exc
    except IsADirectoryError as exc:
        raise LogError(f"{path} is a directory, not a JSON-lines log file") from exc
    except FileNotFoundError as exc:
        raise LogError(f"{path} does not exist") from exc
    except OSError as exc:
        raise LogError(f"{path} cannot be read: {exc.strerror or exc}") from exc


def _parse(line: bytes | None, ended: bool) -> tuple[str, Any]:
    """One line: ``("record", dict)``, ``("blank", None)``, ``("foreign", None)`` (JSON, not
    a gradguard record), or ``(kind of problem, message)``."""
    if line is None:
        return f"longer than {MAX_LINE_BYTES} bytes", "line too long, skipped"
    text = line.strip()
    if not text:
        return "blank", None
    if _too_deep(text):
        return f"nested deeper than {MAX_DEPTH}", f"nested deeper than {MAX_DEPTH}, skipped"
    try:
        # A number beyond a float (1e999) parses as infinity: valid JSON, and every use of a
        # number in the summary and the plot goes through validate.finite().
        record = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # bad UTF-8, NaN, a 5,000-digit int: ValueError
        if not ended:
            return "truncated", "truncated last line skipped (a crash mid-write?)"
        return "not JSON", "not JSON, skipped"
    if not isinstance(record, dict) or "schema" not in record or "event" not in record:
        return "foreign", None
    version, event = record["schema"], record["event"]
    checked = record
    if type(version) is int and version > SCHEMA_VERSION:
        checked = {**record, "schema": SCHEMA_VERSION}  # read where it matches this schema
    elif version == SCHEMA_VERSION and isinstance(event, str) and event not in _EVENTS:
        return "unknown event", f"event {event[:40]!r} is not one this gradguard reads, skipped"
    error = record_error(checked)
    if error is not None and checked is not record:
        return "newer schema, unreadable", (
            f"schema {version} record that schema {SCHEMA_VERSION} cannot read ({error}), skipped"
        )
    if error is not None:
        return "invalid record", f"not a valid gradguard record ({error}), skipped"
    if isinstance(record["step"], float):  # JSON Schema's integer: 3.0 is 3
        record["step"] = int(record["step"])
    return ("newer" if checked is not record else "record"), record


def _read_file(path: str, notes: _Notes) -> Iterator[dict[str, Any]]:
    foreign = 0
    newer: list[int] = []
    with _open(path) as handle:
        try:
            for number, line, ended in _lines(handle):
                kind, value = _parse(line, ended)
                if kind == "blank":
                    continue
                if kind == "foreign":
                    foreign += 1
                elif kind in ("record", "newer"):
                    if kind == "newer":
                        newer.append(number)
                    value["_source"] = f"{path}:{number}"
                    yield value
                else:
                    notes.add(kind, f"{path}:{number}: {value}")
        except OSError as exc:
            raise LogError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if newer:
        notes.add(
            "newer schema",
            f"{path}:{newer[0]}: schema newer than this gradguard reads ({SCHEMA_VERSION}) in "
            f"{len(newer)} record(s); read where they match schema {SCHEMA_VERSION}",
        )
    if foreign:
        notes.add("foreign", f"{path}: {foreign} line(s) from other tools skipped")


def iter_records(
    *paths: str | os.PathLike[str], notes: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The valid gradguard records of ``paths``, one at a time, in file order.

    ``"-"`` reads standard input. Each record carries ``_source`` (``file:line``).

    Args:
        paths: JSON-lines files.
        notes: A list that receives, once the records are exhausted, what was skipped.

    Raises:
        LogError: a file cannot be opened at all (missing, a directory, a FIFO or device
            that is not standard input). Unreadable *content* never raises.
    """
    collected = _Notes()
    for raw in paths:
        yield from _read_file(os.fspath(raw), collected)
    if notes is not None:
        notes.extend(collected.lines())


def load(*paths: str | os.PathLike[str]) -> LogRecords:
    """Read every valid gradguard record of JSON-lines files into memory, with notes.

    Raises:
        LogError: a file cannot be opened at all. Unreadable *content* never raises.
    """
    checks: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    notes: list[str] = []
    for record in iter_records(*paths, notes=notes):
        (checks if record["event"] == EVENT else events).append(record)
    return LogRecords(
        checks=tuple(checks),
        events=tuple(events),
        notes=tuple(notes),
        sources=tuple(os.fspath(p) for p in paths),
    )


# -- summaries ---------------------------------------------------------------------------------


def _check_outcome(check: dict[str, Any]) -> str:
    """A check's status, ``pass`` only when it says both ``passed`` and ``status`` pass."""
    status = str(check.get("status"))
    if status == "pass" and check.get("passed") is not True:
        return "fail"
    return status


@attrs.frozen
class TensorSummary:
    """One tensor (of one test, for pytest records) across every check that probed it.

    Attributes:
        name: The tensor's name.
        checks: How many checks probed it.
        failures: How many of those it failed.
        first_failure_step: The step of its first failing check (``None``: never failed,
            or the failing check had no step).
        first_failure_run: The run of that check.
        worst_difference: Its largest relative difference where it was judged (``pass`` or
            ``fail``; a ``zero`` tensor's difference is noise over noise, an inconclusive
            one's unresolved).
        tolerance: The tolerance it was judged against (the last one seen).
        statuses: How often each status occurred.
        inconclusive: How many checks could not judge it.
        test: The record's ``label`` (a pytest test's node id), or ``None``: tensors of the
            same name in different tests are different tensors.
        first_failure_owners: For a sharded model, the worst element of its first failing
            check and the ranks that hold it (``"[6, 3] on rank 1"``); ``None`` otherwise.
    """

    name: str
    checks: int
    failures: int
    first_failure_step: int | None
    first_failure_run: str | None
    worst_difference: float | None
    tolerance: float | None
    statuses: dict[str, int]
    inconclusive: int = 0
    test: str | None = None
    first_failure_owners: str | None = None


@attrs.frozen
class RunSummary:
    """One run (one guard, callback or test session) in the logs.

    ``failed`` counts checks that failed (a wrong or nondeterministic gradient),
    ``inconclusive`` those that could not judge some tensor: neither is a pass.
    """

    run_id: str
    checks: int
    failed: int
    first_step: int | None
    last_step: int | None
    disabled: str | None  # why the front door switched itself off, if it did
    inconclusive: int = 0


@attrs.frozen
class TestSummary:
    """One test of a pytest session (records with a ``label``): its checks and verdict.

    Attributes:
        test: The label: the test's node id.
        run_id: The session's run id.
        checks: Checks the test made.
        status: Its worst check status (``fail`` > ``nondeterministic`` > ``inconclusive``
            > ``pass``).
        tensors: The tensors that failed or were inconclusive in it, in order of appearance.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    test: str
    run_id: str
    checks: int
    status: str
    tensors: tuple[str, ...]


@attrs.frozen
class Summary:
    """What ``gradguard report`` says: runs, tests, checks, failures by tensor, statuses."""

    runs: tuple[RunSummary, ...]
    checks: int
    failed_checks: int
    tensors: tuple[TensorSummary, ...]
    statuses: dict[str, int]
    notes: tuple[str, ...]
    inconclusive_checks: int = 0
    check_statuses: dict[str, int] = attrs.field(factory=dict)
    tests: tuple[TestSummary, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether every check passed: none failed and none was inconclusive."""
        return self.failed_checks == 0 and self.inconclusive_checks == 0

    @property
    def exit_code(self) -> int:
        """``gradguard report``'s exit code for these logs: 0 passed, 1 failed or inconclusive."""
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-ready dict."""
        return {
            "passed": self.passed,
            "checks": self.checks,
            "failed_checks": self.failed_checks,
            "inconclusive_checks": self.inconclusive_checks,
            "check_statuses": dict(self.check_statuses),
            "runs": [attrs.asdict(r) for r in self.runs],
            "tests": [attrs.asdict(t) for t in self.tests],
            "tensors": [attrs.asdict(t) for t in self.tensors],
            "statuses": dict(self.statuses),
            "notes": list(self.notes),
        }


_SEVERITY = {"pass": 0, "inconclusive": 1, "nondeterministic": 2, "fail": 3}


def _owners_text(param: dict[str, Any]) -> str | None:
    """``"[6, 3] on rank 1"`` for a sharded check's tensor record, else ``None``."""
    owners, index = param.get("worst_owners"), param.get("worst_index")
    if not isinstance(owners, list) or not owners or not isinstance(index, list):
        return None
    where = "[" + ", ".join(str(i) for i in index) + "]"
    ranks = ",".join(str(r) for r in owners)
    return f"{where} on rank{'s' if len(owners) > 1 else ''} {ranks}"


class Summarizer:
    """Builds a :class:`Summary` one record at a time: memory grows with the number of runs,
    tests and tensor names, never with the number of records."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, Any]] = {}
        self._tests: dict[tuple[str, str], dict[str, Any]] = {}
        self._tensors: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._statuses: Counter[str] = Counter()
        self._check_statuses: Counter[str] = Counter()
        self._checks = 0

    def _run(self, run_id: str) -> dict[str, Any]:
        return self._runs.setdefault(
            run_id,
            {
                "checks": 0,
                "failed": 0,
                "inconclusive": 0,
                "first": None,
                "last": None,
                "disabled": None,
            },
        )

    def add(self, record: dict[str, Any]) -> None:
        """Count one valid record (a check or a lifecycle event)."""
        run_id = record.get("run_id") or NO_RUN
        if record.get("event") != EVENT:
            run = self._run(run_id)  # a front door switched off before its first check
            if record.get("event") == "guard_disabled":
                run["disabled"] = str(record.get("reason"))
            return
        self._checks += 1
        outcome = _check_outcome(record)
        self._check_statuses[outcome] += 1
        run = self._run(run_id)
        run["checks"] += 1
        run["failed"] += outcome in _BAD_STATUSES
        run["inconclusive"] += outcome == "inconclusive"
        step = record.get("step")
        if isinstance(step, int):
            run["first"] = step if run["first"] is None else min(run["first"], step)
            run["last"] = step if run["last"] is None else max(run["last"], step)
        label = record.get("label")
        test = None
        if isinstance(label, str):
            test = self._tests.setdefault(
                (run_id, label), {"checks": 0, "status": "pass", "tensors": {}}
            )
            test["checks"] += 1
            if _SEVERITY.get(outcome, 3) > _SEVERITY.get(test["status"], 3):
                test["status"] = outcome
        if outcome == "nondeterministic":
            self._statuses["nondeterministic"] += 1
        for param in record.get("params") or []:
            name = str(param.get("name"))
            entry = self._tensors.setdefault(
                (label if isinstance(label, str) else None, name),
                {
                    "checks": 0,
                    "failures": 0,
                    "inconclusive": 0,
                    "first": None,
                    "worst": None,
                    "tol": None,
                    "statuses": Counter(),
                    "owners": None,
                },
            )
            status = str(param.get("status"))
            entry["checks"] += 1
            entry["statuses"][status] += 1
            if status != "nondeterministic":
                self._statuses[status] += 1
            difference = finite(param.get("difference"))
            judged = status in ("pass", "fail") and difference is not None
            if judged and (entry["worst"] is None or difference > entry["worst"]):
                entry["worst"] = difference
            entry["tol"] = finite(param.get("tolerance")) or entry["tol"]
            if status in ("fail", "inconclusive"):
                entry["failures" if status == "fail" else "inconclusive"] += 1
                if status == "fail" and entry["first"] is None:
                    entry["first"] = (step, run_id)
                    entry["owners"] = _owners_text(param)
                if test is not None:
                    test["tensors"].setdefault(name, None)

    def summary(self, notes: Iterable[str] = ()) -> Summary:
        """The summary of every record added so far."""
        runs = tuple(
            RunSummary(
                run_id=run_id,
                checks=r["checks"],
                failed=r["failed"],
                first_step=r["first"],
                last_step=r["last"],
                disabled=r["disabled"],
                inconclusive=r["inconclusive"],
            )
            for run_id, r in self._runs.items()
        )
        tests = tuple(
            TestSummary(
                test=label,
                run_id=run_id,
                checks=t["checks"],
                status=t["status"],
                tensors=tuple(t["tensors"]),
            )
            for (run_id, label), t in self._tests.items()
        )
        tensors = tuple(
            TensorSummary(
                name=name,
                checks=e["checks"],
                failures=e["failures"],
                first_failure_step=e["first"][0] if e["first"] else None,
                first_failure_run=e["first"][1] if e["first"] else None,
                worst_difference=e["worst"],
                tolerance=e["tol"],
                statuses=dict(e["statuses"]),
                inconclusive=e["inconclusive"],
                test=test,
                first_failure_owners=e["owners"],
            )
            for (test, name), e in self._tensors.items()
        )
        failed = sum(self._check_statuses[s] for s in self._check_statuses if s != "pass")
        inconclusive = self._check_statuses["inconclusive"]
        return Summary(
            runs=runs,
            checks=self._checks,
            failed_checks=failed - inconclusive,
            tensors=tensors,
            statuses=dict(self._statuses),
            notes=tuple(notes),
            inconclusive_checks=inconclusive,
            check_statuses=dict(self._check_statuses),
            tests=tests,
        )


def summarize(logs: LogRecords) -> Summary:
    """Summarize the checks in ``logs``: per run, per test, per tensor, per status."""
    summarizer = Summarizer()
    files = {source: index for index, source in enumerate(logs.sources)}

    def file_order(record: dict[str, Any]) -> tuple[int, int]:
        path, _, line = str(record.get("_source", "")).rpartition(":")
        return files.get(path, 0), int(line) if line.isdigit() else 0

    for record in sorted((*logs.checks, *logs.events), key=file_order):
        summarizer.add(record)
    return summarizer.summary(logs.notes)


def summarize_files(
    *paths: str | os.PathLike[str], also: Iterable[Any] = ()
) -> tuple[Summary, int]:
    """Stream ``paths`` into a :class:`Summary` without keeping the records.

    Args:
        paths: JSON-lines files (``"-"``: standard input).
        also: Objects with an ``add(record)`` method that see every valid record too (the
            plot's collector).

    Returns:
        The summary, and how many valid records were read.

    Raises:
        LogError: a file cannot be opened at all.
    """
    summarizer = Summarizer()
    consumers = list(also)
    notes: list[str] = []
    count = 0
    for record in iter_records(*paths, notes=notes):
        count += 1
        summarizer.add(record)
        for consumer in consumers:
            consumer.add(record)
    return summarizer.summary(notes), count


# -- the text report ---------------------------------------------------------------------------


def _table(rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _verdict(summary: Summary) -> str:
    if summary.checks == 0:
        return "no gradient checks in these logs"
    if summary.passed:
        return f"all {summary.checks} checks passed"
    parts = []
    if summary.failed_checks:
        parts.append(f"{summary.failed_checks} of {summary.checks} checks FAILED")
    if summary.inconclusive_checks:
        of = "" if parts else f" of {summary.checks} checks"
        parts.append(f"{summary.inconclusive_checks}{of} INCONCLUSIVE")
    return ", ".join(parts)


def format_summary(summary: Summary) -> str:
    """The text ``gradguard report`` prints: read at a glance, failures first."""
    lines = [
        f"gradguard report: {_verdict(summary)} "
        f"({len(summary.runs)} run{'s' * (len(summary.runs) != 1)})"
    ]
    if summary.runs:
        lines += ["", "runs:"]
        rows: list[tuple[str, ...]] = [
            ("run", "checks", "failed", "inconclusive", "steps", "switched off")
        ]
        for run in summary.runs:
            steps = "-" if run.first_step is None else f"{run.first_step}-{run.last_step}"
            rows.append(
                (
                    run.run_id,
                    str(run.checks),
                    str(run.failed),
                    str(run.inconclusive),
                    steps,
                    run.disabled or "-",
                )
            )
        lines += _table(rows)
    if summary.tests:
        lines += ["", "tests:"]
        rows = [("test", "checks", "status", "tensors failed or inconclusive")]
        for test in sorted(summary.tests, key=lambda t: -_SEVERITY.get(t.status, 3)):
            status = test.status if test.status == "pass" else test.status.upper()
            rows.append((test.test, str(test.checks), status, ", ".join(test.tensors) or "-"))
        lines += _table(rows)
    labelled = any(t.test is not None for t in summary.tensors)
    bad = [t for t in summary.tensors if t.failures or t.inconclusive]
    if bad:
        lines += ["", "failures by tensor:"]
        head = ("tensor", *(("test",) if labelled else ()))
        # Sharded checks name where the first failure's worst element lives.
        sharded = any(t.first_failure_owners for t in bad)
        rows = [
            (
                *head,
                "failed",
                "inconclusive",
                "of",
                "first failing step",
                "run",
                "worst difference",
                *(("worst element (first failure)",) if sharded else ()),
            )
        ]
        for t in sorted(bad, key=lambda t: (-t.failures, -t.inconclusive)):
            rows.append(
                (
                    t.name,
                    *((t.test or "-",) if labelled else ()),
                    str(t.failures),
                    str(t.inconclusive),
                    str(t.checks),
                    "-" if t.first_failure_step is None else str(t.first_failure_step),
                    t.first_failure_run or "-",
                    _fmt(t.worst_difference),
                    *((t.first_failure_owners or "-",) if sharded else ()),
                )
            )
        lines += _table(rows)
    if summary.tensors:
        lines += ["", "worst difference per tensor:"]
        head = ("tensor", *(("test",) if labelled else ()))
        rows = [(*head, "checks", "worst difference", "tolerance", "statuses")]
        for t in summary.tensors:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(t.statuses.items()))
            rows.append(
                (
                    t.name,
                    *((t.test or "-",) if labelled else ()),
                    str(t.checks),
                    _fmt(t.worst_difference),
                    _fmt(t.tolerance),
                    counts,
                )
            )
        lines += _table(rows)
    if summary.check_statuses and not summary.passed:
        lines += [
            "",
            "checks: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.check_statuses.items())),
        ]
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
