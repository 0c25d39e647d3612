"""Reading logs back: load() on real, messy files; summarize(); format_summary(); DataFrames."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import os
import pathlib
import tracemalloc
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_records import mutated_records, record_template, write_check
from toy import Params, grad, loss

import gradguard as gg
from gradguard import cli
from gradguard.guard import DISABLE_ENV
from gradguard.logs import reader as analysis
from gradguard.logs import records
from gradguard.logs.records import SCHEMA_VERSION


def make_params() -> Params:
    rng = np.random.default_rng(2)
    return {"W": rng.normal(size=(3, 2)), "b": np.zeros(2)}


def grad_wrong_once_b_grows(p: Params) -> Params:
    """The backward pass with a bug that only shows once training has moved b past 0.75."""
    g = grad(p)
    if float(np.mean(p["b"])) > 0.75:
        g["b"] = 2.0 * g["b"]
    return g


def passing_log(path: pathlib.Path, checks: int = 2) -> pathlib.Path:
    """A log of ``checks`` passing single checks (no run id, no step)."""
    for seed in range(checks):
        gg.check(loss, make_params(), grad, seed=seed, log_file=str(path))
    return path


def train(
    log: pathlib.Path,
    run_id: str,
    backward: Callable[[Params], Params],
    *,
    steps: int,
    every: int,
    max_checks: int | None,
) -> gg.Guard:
    """A NumPy "training loop" with a guard: b moves by 0.25 per step, in place."""
    params = make_params()
    guard = gg.Guard(
        loss,
        params,
        backward,
        every=every,
        max_checks=max_checks,
        on_failure="log",
        log_file=log,
        run_id=run_id,
        seed=0,
    )
    for _ in range(steps):
        guard.step()
        params["b"] += 0.25
    return guard


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One file, two guards: run-a passes twice and switches off at step 1; run-b checks at
    steps 0, 2, 4, 6 and its b gradient is wrong from step 4 on (on_failure="log")."""
    log = tmp_path_factory.mktemp("two_runs") / "train.jsonl"
    train(log, "run-a", grad, steps=5, every=1, max_checks=2)
    train(log, "run-b", grad_wrong_once_b_grows, steps=8, every=2, max_checks=3)
    return log


def lines_of(path: pathlib.Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# -- load(): what it reads --------------------------------------------------------------------


def test_load_reads_checks_and_lifecycle_events_in_file_order(two_runs: pathlib.Path) -> None:
    """Checks and guard_disabled events come back as written, each kind in file order."""
    logs = analysis.load(two_runs)
    assert [(c["run_id"], c["step"]) for c in logs.checks] == [
        ("run-a", 0),
        ("run-a", 1),
        ("run-b", 0),
        ("run-b", 2),
        ("run-b", 4),
        ("run-b", 6),
    ]
    assert [(e["event"], e["run_id"], e["reason"]) for e in logs.events] == [
        ("guard_disabled", "run-a", "passed")
    ]
    assert [c["passed"] for c in logs.checks] == [True, True, True, True, False, False]
    assert len(logs) == len(lines_of(two_runs)) == 7
    assert logs.notes == ()
    assert logs.sources == (str(two_runs),)


def test_load_keeps_interleaved_runs_in_file_order(tmp_path: pathlib.Path) -> None:
    """Two guards stepping in turn into one file come back interleaved, as they were written."""
    log = tmp_path / "shared.jsonl"
    guards = [
        gg.Guard(loss, make_params(), grad, every=1, max_checks=None, log_file=log, run_id=run)
        for run in ("left", "right")
    ]
    for _ in range(2):
        for guard in guards:
            guard.step()
    logs = analysis.load(log)
    assert [(c["run_id"], c["step"]) for c in logs.checks] == [
        ("left", 0),
        ("right", 0),
        ("left", 1),
        ("right", 1),
    ]


def test_load_reads_several_files_in_the_order_given(tmp_path: pathlib.Path) -> None:
    """load(a, b) reads a's records then b's; sources lists both paths, as strings."""
    first = passing_log(tmp_path / "first.jsonl", checks=1)
    second = tmp_path / "second.jsonl"
    train(second, "run-b", grad, steps=3, every=1, max_checks=2)
    logs = analysis.load(first, str(second))
    assert [c["source"] for c in logs.checks] == ["check", "guard", "guard"]
    assert [c["run_id"] for c in logs.checks] == [None, "run-b", "run-b"]
    assert [e["reason"] for e in logs.events] == ["passed"]
    assert logs.sources == (str(first), str(second))


# -- load(): messy real files -----------------------------------------------------------------


def test_truncated_last_line_is_skipped_with_a_note(tmp_path: pathlib.Path) -> None:
    """A crash mid-write (half a record, no newline) loses that line only, and says so."""
    log = passing_log(tmp_path / "crash.jsonl")
    whole = lines_of(log)[0]
    with log.open("a", encoding="utf-8") as handle:
        handle.write(whole[: len(whole) // 2])
    logs = analysis.load(log)
    assert len(logs.checks) == 2
    assert logs.notes == (f"{log}:3: truncated last line skipped (a crash mid-write?)",)


def test_blank_lines_are_skipped_silently(tmp_path: pathlib.Path) -> None:
    """Blank and whitespace-only lines anywhere are not records and not worth a note."""
    source = passing_log(tmp_path / "source.jsonl")
    first, second = lines_of(source)
    log = tmp_path / "blank.jsonl"
    log.write_text(f"\n{first}\n\n   \n{second}\n\n\t\n", encoding="utf-8")
    logs = analysis.load(log)
    assert [c["seed"] for c in logs.checks] == [0, 1]
    assert logs.notes == ()


def test_non_json_lines_in_the_middle_are_skipped_with_a_note(tmp_path: pathlib.Path) -> None:
    """A line that is not JSON (a traceback printed into the file) is skipped, with its line
    number; the records around it are read."""
    source = passing_log(tmp_path / "source.jsonl")
    first, second = lines_of(source)
    log = tmp_path / "mixed.jsonl"
    log.write_text(f"{first}\nTraceback (most recent call last):\n{second}\n", encoding="utf-8")
    logs = analysis.load(log)
    assert len(logs.checks) == 2
    assert logs.notes == (f"{log}:2: not JSON, skipped",)


def test_other_tools_json_lines_are_counted_in_one_note(tmp_path: pathlib.Path) -> None:
    """JSON lines without schema and event (another tool's logs) are skipped, counted once."""
    source = passing_log(tmp_path / "source.jsonl")
    first, second = lines_of(source)
    log = tmp_path / "shared.jsonl"
    foreign = [
        json.dumps({"level": "info", "msg": "x"}),
        json.dumps({"event": "epoch_end", "loss": 0.5}),  # an event but no schema
        json.dumps([1, 2, 3]),
    ]
    log.write_text("\n".join([foreign[0], first, *foreign[1:], second]) + "\n", encoding="utf-8")
    logs = analysis.load(log)
    assert len(logs.checks) == 2 and logs.events == ()
    assert logs.notes == (f"{log}: 3 line(s) from other tools skipped",)


def test_a_newer_schema_is_read_with_a_note(tmp_path: pathlib.Path) -> None:
    """A record from a newer gradguard is still read, and a note says its schema is newer."""
    source = passing_log(tmp_path / "source.jsonl", checks=1)
    record = json.loads(lines_of(source)[0])
    record["schema"] = SCHEMA_VERSION + 1
    record["new_field"] = {"anything": True}
    log = tmp_path / "newer.jsonl"
    log.write_text(lines_of(source)[0] + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    logs = analysis.load(log)
    assert [c["schema"] for c in logs.checks] == [SCHEMA_VERSION, SCHEMA_VERSION + 1]
    (note,) = logs.notes
    assert note == (
        f"{log}:2: schema newer than this gradguard reads ({SCHEMA_VERSION}) in 1 record(s); "
        f"read where they match schema {SCHEMA_VERSION}"
    )


def test_an_empty_file_has_no_records_and_no_notes(tmp_path: pathlib.Path) -> None:
    """An empty log (a run that never checked) loads as nothing, without an error."""
    log = tmp_path / "empty.jsonl"
    log.touch()
    logs = analysis.load(log)
    assert len(logs) == 0
    assert (logs.checks, logs.events, logs.notes) == ((), (), ())
    assert analysis.summarize(logs).checks == 0


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_file_that_cannot_be_opened_raises_log_error(tmp_path: pathlib.Path, kind: str) -> None:
    """A missing path or a directory raises LogError (a GradGuardError), naming the path."""
    path = tmp_path / "logs"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(gg.LogError) as info:
        analysis.load(passing_log(tmp_path / "good.jsonl"), path)
    assert isinstance(info.value, gg.GradGuardError)
    assert str(path) in str(info.value)
    assert ("directory" if kind == "directory" else "does not exist") in str(info.value)


# -- summarize() ------------------------------------------------------------------------------


def test_summarize_separates_runs_sharing_a_file(two_runs: pathlib.Path) -> None:
    """Each run id gets its own checks, failures, step range and why it switched off."""
    summary = analysis.summarize(analysis.load(two_runs))
    assert summary.runs == (
        analysis.RunSummary(
            run_id="run-a", checks=2, failed=0, first_step=0, last_step=1, disabled="passed"
        ),
        analysis.RunSummary(
            run_id="run-b", checks=4, failed=2, first_step=0, last_step=6, disabled=None
        ),
    )
    assert (summary.checks, summary.failed_checks, summary.passed) == (6, 2, False)


def test_summarize_names_the_failing_tensor_and_its_first_failing_step(
    two_runs: pathlib.Path,
) -> None:
    """Failures are counted per tensor, with the step and run of the first failing check."""
    summary = analysis.summarize(analysis.load(two_runs))
    by_name = {t.name: t for t in summary.tensors}
    assert set(by_name) == {"W", "b"}
    b, w = by_name["b"], by_name["W"]
    assert (b.checks, b.failures, b.first_failure_step, b.first_failure_run) == (6, 2, 4, "run-b")
    assert b.statuses == {"pass": 4, "fail": 2}
    assert (w.checks, w.failures, w.first_failure_step, w.first_failure_run) == (6, 0, None, None)
    assert w.statuses == {"pass": 6}


def test_summarize_gives_the_worst_difference_and_tolerance_per_tensor(
    two_runs: pathlib.Path,
) -> None:
    """A tensor's worst difference is the largest one logged for it; its tolerance is logged."""
    logs = analysis.load(two_runs)
    summary = analysis.summarize(logs)
    for tensor in summary.tensors:
        logged = [p for c in logs.checks for p in c["params"] if p["name"] == tensor.name]
        assert tensor.worst_difference == max(p["difference"] for p in logged)
        assert tensor.tolerance == logged[-1]["tolerance"] == 1e-6
    by_name = {t.name: t for t in summary.tensors}
    assert by_name["b"].worst_difference is not None and by_name["b"].worst_difference > 0.1
    assert by_name["W"].worst_difference is not None and by_name["W"].worst_difference < 1e-6


@pytest.fixture(scope="module")
def odd_statuses(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A log with a nondeterministic check (W, b), a non-differentiable one and a passing one."""
    log = tmp_path_factory.mktemp("statuses") / "statuses.jsonl"
    noise = np.random.default_rng()  # no seed: a different value on every call
    gg.check(lambda p: loss(p) + float(noise.normal()), make_params(), grad, log_file=str(log))
    kinked = gg.check(
        lambda x: float(np.sum(np.abs(x))),
        np.array([1e-12, -1e-12] * 8),
        np.sign,
        sample=0,
        directions=3,
        seed=1,
        log_file=str(log),
    )
    assert kinked.params[0].status is gg.Status.NON_DIFFERENTIABLE
    gg.check(loss, make_params(), grad, seed=0, log_file=str(log))
    return log


def test_summarize_counts_statuses_including_the_odd_ones(odd_statuses: pathlib.Path) -> None:
    """Statuses are counted per tensor, except nondeterministic, counted once per check; a
    non-differentiable tensor does not fail its check, a nondeterministic check does."""
    summary = analysis.summarize(analysis.load(odd_statuses))
    assert summary.statuses == {"nondeterministic": 1, "non-differentiable": 1, "pass": 2}
    assert (summary.checks, summary.failed_checks) == (3, 1)
    by_name = {t.name: t for t in summary.tensors}
    assert by_name["params"].statuses == {"non-differentiable": 1}
    assert by_name["params"].failures == 0
    assert by_name["W"].statuses == by_name["b"].statuses == {"nondeterministic": 1, "pass": 1}
    (run,) = summary.runs
    assert (run.run_id, run.checks, run.failed) == (analysis.NO_RUN, 3, 1)
    assert (run.first_step, run.last_step) == (None, None)


def test_summary_to_dict_is_strict_json(two_runs: pathlib.Path) -> None:
    """Summary.to_dict() dumps as strict JSON with the verdict, runs, tensors and statuses."""
    summary = analysis.summarize(analysis.load(two_runs))
    data = json.loads(json.dumps(summary.to_dict(), allow_nan=False))
    assert data["passed"] is False and (data["checks"], data["failed_checks"]) == (6, 2)
    assert [r["run_id"] for r in data["runs"]] == ["run-a", "run-b"]
    assert {t["name"]: t["first_failure_step"] for t in data["tensors"]} == {"W": None, "b": 4}
    assert data["statuses"] == {"pass": 10, "fail": 2}


def test_a_run_switched_off_before_any_check_is_still_a_run(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guard inert under GRADGUARD_DISABLE shows as a run with 0 checks, switched off by
    "environment", next to a run that did check."""
    log = tmp_path / "train.jsonl"
    train(log, "run-a", grad, steps=2, every=1, max_checks=None)
    monkeypatch.setenv(DISABLE_ENV, "1")
    train(log, "run-off", grad, steps=2, every=1, max_checks=None)
    summary = analysis.summarize(analysis.load(log))
    assert [(r.run_id, r.checks, r.disabled) for r in summary.runs] == [
        ("run-a", 2, None),
        ("run-off", 0, "environment"),
    ]


# -- format_summary() -------------------------------------------------------------------------


def _section(text: str, title: str) -> list[list[str]]:
    """The rows (split into words) of the section of ``text`` headed ``title``."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return [line.split() for line in lines[start:end]]


def test_format_summary_says_all_checks_passed(tmp_path: pathlib.Path) -> None:
    """An all-passing log reads "all N checks passed", with no failures section."""
    text = analysis.format_summary(
        analysis.summarize(analysis.load(passing_log(tmp_path / "ok.jsonl", 3)))
    )
    assert text.splitlines()[0] == "gradguard report: all 3 checks passed (1 run)"
    assert "failures by tensor" not in text
    assert "statuses: pass 6" in text


def test_format_summary_of_a_failing_log_names_tensor_step_and_run(two_runs: pathlib.Path) -> None:
    """A failing log reads "M of N checks FAILED", names the failing tensor with its first
    failing step and run, and shows why each run switched off."""
    text = analysis.format_summary(analysis.summarize(analysis.load(two_runs)))
    lines = text.splitlines()
    assert lines[0] == "gradguard report: 2 of 6 checks FAILED (2 runs)"
    assert _section(text, "runs:")[1:] == [
        ["run-a", "2", "0", "0", "0-1", "passed"],
        ["run-b", "4", "2", "0", "0-6", "-"],
    ]
    (failing,) = _section(text, "failures by tensor:")[1:]
    assert failing[:6] == ["b", "2", "0", "6", "4", "run-b"]


def test_format_summary_lists_the_notes(tmp_path: pathlib.Path) -> None:
    """What load() skipped is printed under "notes:"."""
    log = passing_log(tmp_path / "crash.jsonl")
    with log.open("a", encoding="utf-8") as handle:
        handle.write('{"schema": 1, "event": "gradch')
    text = analysis.format_summary(analysis.summarize(analysis.load(log)))
    assert text.splitlines()[0] == "gradguard report: all 2 checks passed (1 run)"
    notes = text.split("\nnotes:\n", 1)[1]
    assert f"{log}:3: truncated last line skipped" in notes


def test_format_summary_of_no_checks_says_so() -> None:
    """A summary of nothing says there are no gradient checks, not that they all passed."""
    empty = analysis.LogRecords(checks=(), events=(), notes=(), sources=())
    text = analysis.format_summary(analysis.summarize(empty))
    assert text == "gradguard report: no gradient checks in these logs (0 runs)"


# -- to_dataframe() ---------------------------------------------------------------------------

COLUMNS = [
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
]


def test_to_dataframe_has_one_row_per_check_and_tensor(two_runs: pathlib.Path) -> None:
    """Each (check, tensor) pair is a row, in file order, with the documented columns."""
    logs = analysis.load(two_runs)
    frame = logs.to_dataframe()
    assert list(frame.columns) == COLUMNS
    expected = [(c["run_id"], c["step"], p["name"]) for c in logs.checks for p in c["params"]]
    assert list(zip(frame["run_id"], frame["step"], frame["tensor"], strict=True)) == expected
    assert len(frame) == 12
    failing = frame[frame["status"] == "fail"]
    assert list(zip(failing["run_id"], failing["step"], failing["tensor"], strict=True)) == [
        ("run-b", 4, "b"),
        ("run-b", 6, "b"),
    ]
    assert not failing["passed"].any() and not failing["check_passed"].any()


def test_to_dataframe_timestamps_are_tz_aware_utc(two_runs: pathlib.Path) -> None:
    """The timestamp column holds tz-aware UTC datetimes equal to the records' timestamps."""
    logs = analysis.load(two_runs)
    frame = logs.to_dataframe()
    assert str(frame["timestamp"].dt.tz) == "UTC"
    first = frame["timestamp"].iloc[0].to_pydatetime()
    assert first.tzinfo is not None
    assert first == dt.datetime.fromisoformat(logs.checks[0]["timestamp"])


def test_to_dataframe_differences_match_the_records(odd_statuses: pathlib.Path) -> None:
    """The difference column is each record's difference; null (nondeterministic) is NaN."""
    logs = analysis.load(odd_statuses)
    frame = logs.to_dataframe()
    logged = [p["difference"] for c in logs.checks for p in c["params"]]
    assert logged[:2] == [None, None]
    for value, expected in zip(frame["difference"], logged, strict=True):
        assert math.isnan(value) if expected is None else value == expected
    assert list(frame["status"]) == [
        "nondeterministic",
        "nondeterministic",
        "non-differentiable",
        "pass",
        "pass",
    ]


class _WholeSecond(dt.datetime):
    """``datetime.now`` at the exact start of a second (microsecond 0), as happens for real."""

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _WholeSecond:
        return cls(2026, 11, 21, 21, 56, 5, tzinfo=tz)


def test_timestamps_written_at_a_whole_second_keep_their_microseconds(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record written at a whole second still carries '.000000', so every line has one format."""
    monkeypatch.setattr(records, "_dt", types.SimpleNamespace(datetime=_WholeSecond, UTC=dt.UTC))
    log = passing_log(tmp_path / "ok.jsonl", checks=1)
    assert analysis.load(log).checks[0]["timestamp"] == "2026-11-21T21:56:05.000000+00:00"


def test_to_dataframe_reads_a_timestamp_without_a_fraction(tmp_path: pathlib.Path) -> None:
    """A record without a fractional second (as the schema allows) parses next to others."""
    log = passing_log(tmp_path / "ok.jsonl", checks=1)
    record = json.loads(log.read_text().splitlines()[0])
    record["timestamp"] = "2026-11-21T21:56:05+00:00"
    with log.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    frame = analysis.load(log).to_dataframe()
    assert list(frame["timestamp"])[-1] == dt.datetime(2026, 11, 21, 21, 56, 5, tzinfo=dt.UTC)


def test_to_dataframe_of_a_log_without_checks_still_has_the_columns(
    tmp_path: pathlib.Path,
) -> None:
    """An empty log gives an empty frame with the same columns, so code on it still runs."""
    log = tmp_path / "empty.jsonl"
    log.touch()
    frame = analysis.load(log).to_dataframe()
    assert len(frame) == 0
    assert list(frame.columns) == COLUMNS


# -- statuses zero and inconclusive ------------------------------------------------------------


@pytest.fixture(scope="module")
def new_statuses(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Three checks of one run: b zero (passes), W inconclusive, then both passing."""
    log = tmp_path_factory.mktemp("new_statuses") / "statuses.jsonl"
    write_check(log, {"b": gg.Status.ZERO}, run_id="r", step=0, source="guard")
    write_check(log, {"W": gg.Status.INCONCLUSIVE}, run_id="r", step=1, source="guard")
    write_check(log, {}, run_id="r", step=2, source="guard")
    return log


def test_zero_and_inconclusive_are_their_own_statuses(new_statuses: pathlib.Path) -> None:
    """A zero tensor passes its check; an inconclusive one leaves the check inconclusive,
    which is not a pass: counted apart from failures, per run, per tensor and per check."""
    summary = analysis.summarize(analysis.load(new_statuses))
    assert summary.check_statuses == {"pass": 2, "inconclusive": 1}
    assert (summary.checks, summary.failed_checks, summary.inconclusive_checks) == (3, 0, 1)
    assert not summary.passed and summary.exit_code == 1
    (run,) = summary.runs
    assert (run.checks, run.failed, run.inconclusive) == (3, 0, 1)
    by_name = {t.name: t for t in summary.tensors}
    assert by_name["b"].statuses == {"zero": 1, "pass": 2}
    assert by_name["W"].statuses == {"inconclusive": 1, "pass": 2}
    assert (by_name["W"].failures, by_name["W"].inconclusive) == (0, 1)
    assert summary.statuses == {"pass": 4, "zero": 1, "inconclusive": 1}


def test_a_zero_or_inconclusive_difference_is_not_the_worst_difference(
    tmp_path: pathlib.Path,
) -> None:
    """Worst differences come from judged probes only: a zero tensor's noise/noise and an
    inconclusive tensor's unresolved difference are left out."""
    log = tmp_path / "z.jsonl"
    write_check(log, {"b": gg.Status.ZERO, "W": gg.Status.INCONCLUSIVE})
    (w, b) = sorted(analysis.summarize(analysis.load(log)).tensors, key=lambda t: t.name)
    assert w.worst_difference is None and b.worst_difference is None


def test_format_summary_shows_inconclusive_checks_and_tensors(new_statuses: pathlib.Path) -> None:
    """The text says INCONCLUSIVE (not passed), lists the tensor with its count, and the
    per-check statuses."""
    text = analysis.format_summary(analysis.summarize(analysis.load(new_statuses)))
    assert text.splitlines()[0] == "gradguard report: 1 of 3 checks INCONCLUSIVE (1 run)"
    assert _section(text, "runs:")[1] == ["r", "3", "0", "1", "0-2", "-"]
    (row,) = _section(text, "failures by tensor:")[1:]
    assert row[:4] == ["W", "0", "1", "3"]
    assert "checks: inconclusive 1, pass 2" in text
    assert "statuses: inconclusive 1, pass 4, zero 1" in text


def test_failed_and_inconclusive_checks_are_both_in_the_verdict(tmp_path: pathlib.Path) -> None:
    """A log with a failing and an inconclusive check says both."""
    log = tmp_path / "both.jsonl"
    write_check(log, {"W": gg.Status.FAIL})
    write_check(log, {"b": gg.Status.INCONCLUSIVE})
    write_check(log, {})
    summary = analysis.summarize(analysis.load(log))
    assert analysis.format_summary(summary).splitlines()[0] == (
        "gradguard report: 1 of 3 checks FAILED, 1 INCONCLUSIVE (1 run)"
    )
    assert summary.to_dict()["check_statuses"] == {"fail": 1, "inconclusive": 1, "pass": 1}


def test_to_dataframe_has_the_check_status_and_the_new_statuses(
    new_statuses: pathlib.Path,
) -> None:
    """check_status says inconclusive where check_passed is False; tensor statuses as written."""
    frame = analysis.load(new_statuses).to_dataframe()
    assert list(frame["check_status"]) == ["pass"] * 2 + ["inconclusive"] * 2 + ["pass"] * 2
    assert list(frame["check_passed"]) == [True, True, False, False, True, True]
    assert list(frame["status"])[:4] == ["pass", "zero", "inconclusive", "pass"]


# -- pytest records: one entry per test ----------------------------------------------------


@pytest.fixture(scope="module")
def pytest_session(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A pytest session's log as the plugin writes it: three tests checking tensors of the same
    names; test_b's W is wrong, test_c's b inconclusive."""
    log = tmp_path_factory.mktemp("pytest_session") / "checks.jsonl"
    for test, statuses in [
        ("test_m.py::test_a", {}),
        ("test_m.py::test_b", {"W": gg.Status.FAIL}),
        ("test_m.py::test_c", {"b": gg.Status.INCONCLUSIVE}),
    ]:
        write_check(log, statuses, run_id="pytest-1", source="pytest", label=test)
    return log


def test_pytest_records_are_summarized_per_test(pytest_session: pathlib.Path) -> None:
    """Each test is one entry with its status and its bad tensors; a tensor name is kept
    apart per test, so "W" failing in test_b is not merged with test_a's passing W."""
    summary = analysis.summarize(analysis.load(pytest_session))
    assert [(t.test, t.checks, t.status, t.tensors) for t in summary.tests] == [
        ("test_m.py::test_a", 1, "pass", ()),
        ("test_m.py::test_b", 1, "fail", ("W",)),
        ("test_m.py::test_c", 1, "inconclusive", ("b",)),
    ]
    w = [(t.test, t.checks, t.failures) for t in summary.tensors if t.name == "W"]
    assert w == [
        ("test_m.py::test_a", 1, 0),
        ("test_m.py::test_b", 1, 1),
        ("test_m.py::test_c", 1, 0),
    ]


def test_format_summary_has_a_tests_section_and_names_the_test_of_each_tensor(
    pytest_session: pathlib.Path,
) -> None:
    """The text lists tests worst first, and the tensor tables gain a test column."""
    text = analysis.format_summary(analysis.summarize(analysis.load(pytest_session)))
    assert _section(text, "tests:") == [
        ["test", "checks", "status", "tensors", "failed", "or", "inconclusive"],
        ["test_m.py::test_b", "1", "FAIL", "W"],
        ["test_m.py::test_c", "1", "INCONCLUSIVE", "b"],
        ["test_m.py::test_a", "1", "pass", "-"],
    ]
    failures = _section(text, "failures by tensor:")
    assert failures[0][:3] == ["tensor", "test", "failed"]
    assert [row[:4] for row in failures[1:]] == [
        ["W", "test_m.py::test_b", "1", "0"],
        ["b", "test_m.py::test_c", "0", "1"],
    ]


def test_summary_json_and_dataframe_carry_the_test(pytest_session: pathlib.Path) -> None:
    """to_dict() has "tests" and each tensor's "test"; the DataFrame has the label column."""
    logs = analysis.load(pytest_session)
    data = json.loads(json.dumps(analysis.summarize(logs).to_dict(), allow_nan=False))
    assert [(t["test"], t["status"]) for t in data["tests"]] == [
        ("test_m.py::test_a", "pass"),
        ("test_m.py::test_b", "fail"),
        ("test_m.py::test_c", "inconclusive"),
    ]
    assert {(t["name"], t["test"]) for t in data["tensors"] if t["failures"]} == {
        ("W", "test_m.py::test_b")
    }
    frame = logs.to_dataframe()
    failing = frame[frame["status"] == "fail"]
    assert list(zip(failing["label"], failing["tensor"], strict=True)) == [
        ("test_m.py::test_b", "W")
    ]


# -- hostile files: never a traceback, bounded memory ----------------------------------------


def good_line(tmp_path: pathlib.Path) -> str:
    return lines_of(passing_log(tmp_path / "one.jsonl", checks=1))[0]


@pytest.mark.parametrize(
    ("line", "note"),
    [
        ("[" * 100_000, "nested deeper than 32"),
        ('{"schema": 1, "event": "gradcheck", "x": ' + "9" * 5000 + "}", "not JSON"),
        ('{"schema": 1, "event": "gradcheck", "loss": NaN}', "not JSON"),
        ('{"schema": 1, "event": "gradcheck", "loss": Infinity}', "not JSON"),
        ("\udcff\udcfe", "not JSON"),  # invalid UTF-8 on disk
    ],
)
def test_lines_the_parser_must_not_see_are_skipped_with_a_note(
    tmp_path: pathlib.Path, line: str, note: str
) -> None:
    """Deep nesting (RecursionError), huge integers, NaN and overflowing floats, bad UTF-8:
    each line is skipped with a note; the good record next to it is read."""
    log = tmp_path / "bad.jsonl"
    log.write_bytes(
        (good_line(tmp_path) + "\n").encode() + line.encode("utf-8", "surrogateescape") + b"\n"
    )
    logs = analysis.load(log)
    assert len(logs.checks) == 1
    (text,) = logs.notes
    assert text.startswith(f"{log}:2: {note}")


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("run_id", math.nan, "not JSON"),
        ("run_id", 3, "record.run_id: 3 is not of type string or null"),
        ("run_id", [1], "record.run_id: list is not of type string or null"),
        ("run_id", {"a": 1}, "record.run_id: dict is not of type string or null"),
        ("params", {"a": 1}, "record.params: dict is not of type array"),
        ("params", [{"name": "W"}], "record.params[0]: missing field(s) shape, dtype"),
        ("step", -(10**400), None),
        ("timestamp", "2026-01-01T00:00:00+00:00\n", "does not match"),
        ("passed", "yes", "record.passed: 'yes' is not of type boolean"),
    ],
)
def test_records_with_wrong_field_types_are_skipped_with_the_reason(
    tmp_path: pathlib.Path, field: str, value: Any, error: str | None
) -> None:
    """A record whose field has the wrong type is not a valid record: counted, the first few
    named with the field and the problem in a short note; the valid records are read."""
    record = json.loads(good_line(tmp_path))
    record[field] = value
    log = tmp_path / "typed.jsonl"
    log.write_text(good_line(tmp_path) + "\n" + json.dumps(record) + "\n")
    logs = analysis.load(log)
    if error is None:  # a valid record after all: a step of 400 digits is an integer
        assert len(logs.checks) == 2 and logs.notes == ()
        summary = analysis.summarize(logs)
        assert summary.runs[0].first_step == -(10**400)
        json.dumps(summary.to_dict(), allow_nan=False)
        return
    assert len(logs.checks) == 1
    (note,) = logs.notes
    assert note.startswith(f"{log}:2: ") and error in note and len(note) < 300


def test_a_number_beyond_a_float_is_read_and_left_out_of_the_numbers(
    tmp_path: pathlib.Path,
) -> None:
    """1e999 is valid JSON (it parses as infinity): the record is read, and the summary, its
    text and its strict JSON leave the number out instead of failing on it."""
    record = json.loads(good_line(tmp_path))
    record["params"][0]["difference"] = 12345.5
    log = tmp_path / "huge.jsonl"
    log.write_text(json.dumps(record).replace("12345.5", "1e999") + "\n")
    logs = analysis.load(log)
    assert logs.checks[0]["params"][0]["difference"] == math.inf
    summary = analysis.summarize(logs)
    assert summary.tensors[0].worst_difference is None
    json.dumps(summary.to_dict(), allow_nan=False)
    analysis.format_summary(summary)


def test_a_newer_schema_whose_field_types_changed_is_skipped_with_a_note(
    tmp_path: pathlib.Path,
) -> None:
    """A schema-2 record whose fields no longer match schema 1 is skipped, and the note says
    it is a newer schema's; it never reaches the summary as garbage."""
    record = json.loads(good_line(tmp_path))
    record.update(schema=SCHEMA_VERSION + 1, params="W,b", step="seven")
    log = tmp_path / "future.jsonl"
    log.write_text(json.dumps(record) + "\n")
    logs = analysis.load(log)
    assert len(logs) == 0
    (note,) = logs.notes
    assert note.startswith(f"{log}:1: schema {SCHEMA_VERSION + 1} record that schema ")


def test_many_bad_lines_give_a_few_notes_and_a_count(tmp_path: pathlib.Path) -> None:
    """Thousands of garbage lines: the first five are named, the rest counted in one line."""
    log = tmp_path / "garbage.jsonl"
    log.write_text(good_line(tmp_path) + "\n" + "garbage\n" * 5000)
    logs = analysis.load(log)
    assert len(logs.checks) == 1
    assert logs.notes == (
        *(f"{log}:{n}: not JSON, skipped" for n in range(2, 7)),
        "... and 4995 more line(s): not JSON",
    )


def test_an_overlong_line_is_skipped_without_being_held(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line longer than MAX_LINE_BYTES is skipped (read in bounded pieces) with a note; the
    records after it are read."""
    monkeypatch.setattr(analysis, "MAX_LINE_BYTES", 4000)
    good = good_line(tmp_path)
    log = tmp_path / "long.jsonl"
    log.write_text("x" * 20_000_000 + "\n" + good + "\n")
    tracemalloc.start()
    try:
        logs = analysis.load(log)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # the 20 MB line was never held whole
    assert logs.notes == (f"{log}:1: line too long, skipped",)
    assert len(logs.checks) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_is_refused_at_once(tmp_path: pathlib.Path, kind: str) -> None:
    """A FIFO with no writer (which would block) and /dev/zero (which never ends) are refused
    with a LogError saying what they are, before anything is read."""
    if kind == "fifo":
        path = str(tmp_path / "log.fifo")
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    with pytest.raises(gg.LogError, match=r"is a FIFO|is a device") as info:
        analysis.load(path)
    assert "not a regular file" in str(info.value)


def test_summarize_files_memory_does_not_grow_with_the_records(tmp_path: pathlib.Path) -> None:
    """Streaming 4,000 records (and 4,000 garbage lines) keeps memory to the summary: the peak
    is a fraction of the file's size (holding the records as dicts would take several times
    the file). The 1 GB measurement is in docs/benchmarks.md."""
    good = good_line(tmp_path)
    log = tmp_path / "big.jsonl"
    with log.open("w") as handle:
        for index in range(4_000):
            handle.write(good.replace('"step":null', f'"step":{index}') + "\nnot json\n")
    size = log.stat().st_size
    tracemalloc.start()
    try:
        summary, count = analysis.summarize_files(log)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (count, summary.checks, summary.runs[0].last_step) == (4_000, 4_000, 3_999)
    assert summary.notes[-1] == "... and 3995 more line(s): not JSON"
    assert peak < size / 4, (peak, size)


# -- property tests: anything at all in a file -----------------------------------------------


def _report_exit_code(path: pathlib.Path) -> int:
    """``gradguard report PATH`` and ``gradguard report PATH --json``, in-process: an exception
    escaping fails the test; the two exit codes agree; --json prints strict JSON."""
    codes = []
    for extra in ([], ["--json"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            codes.append(cli.main(["report", str(path), *extra]))
        if codes[-1] == 2:
            assert out.getvalue() == "" and err.getvalue().startswith("gradguard: ")
        elif extra:
            json.loads(out.getvalue(), parse_constant=lambda token: 1 / 0)
    assert codes[0] == codes[1]
    return codes[0]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(tmp_path: pathlib.Path, data: bytes) -> None:
    """Any bytes at all, alone or after a valid record: no exception, exit code 0, 1 or 2,
    and the valid record is still read."""
    log = tmp_path / "fuzz.jsonl"
    log.write_bytes(data)
    assert _report_exit_code(log) in (0, 1, 2)
    log.write_bytes(json.dumps(record_template()).encode() + b"\n" + data)
    assert _report_exit_code(log) in (0, 1)
    assert len(analysis.load(log).checks) >= 1


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(record=mutated_records())
def test_arbitrary_json_in_any_field_never_raises(tmp_path: pathlib.Path, record: Any) -> None:
    """A record with arbitrary JSON values in any field: either schema-valid and summarized, or
    skipped with a note; the summary, its text and its JSON never raise; the DataFrame builds."""
    log = tmp_path / "fuzz.jsonl"
    log.write_text(json.dumps(record) + "\n")
    code = _report_exit_code(log)
    logs = analysis.load(log)
    assert code == (2 if len(logs) == 0 else analysis.summarize(logs).exit_code)
    assert len(logs) == 1 or len(logs.notes) == 1
    logs.to_dataframe()


def test_a_sharded_failure_names_its_worst_element_and_owning_rank(tmp_path: pathlib.Path) -> None:
    """A record with ``worst_owners`` (a sharded check) is valid, and the report's failures
    table gains a column naming the first failure's worst element and the rank holding it;
    logs without owners keep their table as it was."""
    import attrs
    from log_records import make_params, relabel

    from gradguard.logs.records import check_record
    from gradguard.logs.writer import emit

    log = tmp_path / "sharded.jsonl"
    report = relabel(gg.check(loss, make_params(), grad, seed=0), {"W": gg.Status.FAIL})
    params = tuple(
        attrs.evolve(p, worst_index=(2, 1), worst_owners=(1,)) if p.name == "W" else p
        for p in report.params
    )
    report = attrs.evolve(report, params=params)
    emit(check_record(report, gg.CheckContext(log_file=str(log), run_id="r")), str(log))
    summary = analysis.summarize(analysis.load(log))
    assert not summary.notes  # the record is valid against the schema
    text = analysis.format_summary(summary)
    header, row = _section(text, "failures by tensor:")
    assert header[-4:] == ["worst", "element", "(first", "failure)"]
    assert row[0] == "W" and " ".join(row[-5:]) == "[2, 1] on rank 1"
    (tensor,) = [t for t in summary.tensors if t.name == "W"]
    assert tensor.first_failure_owners == "[2, 1] on rank 1"
