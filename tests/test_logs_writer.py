"""The built-in reporter: structlog events without touching the application's configuration."""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

import gradguard as gg
from gradguard.logs import writer as reporters
from gradguard.logs.records import SCHEMA_VERSION


def _strict(text: str) -> dict[str, object]:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    record = json.loads(text, parse_constant=refuse)
    assert isinstance(record, dict)
    return record


def _check(**kw: object) -> gg.CheckReport:
    return gg.check(lambda w: float(np.sum(w**2)), np.arange(4.0), lambda w: 2 * w, seed=3, **kw)  # type: ignore[arg-type]


def test_reporter_never_configures_structlog() -> None:
    """A check leaves structlog unconfigured, with the very same configuration as before."""
    structlog.reset_defaults()
    before = structlog.get_config()
    _check()
    assert not structlog.is_configured()
    assert structlog.get_config() == before


def test_reporter_sends_the_event_to_an_application_that_configured_structlog() -> None:
    """Where the application configured structlog, it receives one gradcheck event per check."""
    with capture_logs() as logs:
        report = _check()
    events = [e for e in logs if e["event"] == "gradcheck"]
    assert len(events) == 1
    event = events[0]
    assert event["passed"] is True
    assert event["schema"] == SCHEMA_VERSION
    assert event["seed"] == report.seed
    assert [p["name"] for p in event["params"]] == ["params"]


def test_log_file_gets_one_strict_json_line_per_check(tmp_path: pathlib.Path) -> None:
    """Each check appends one strict-JSON record with the documented top-level fields."""
    log = tmp_path / "checks.jsonl"
    _check(log_file=str(log))
    gg.check(lambda w: float(np.sum(w**2)), np.arange(4.0), lambda w: 3 * w, log_file=str(log))
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    first, second = (_strict(line) for line in lines)
    for key in (
        "schema",
        "event",
        "timestamp",
        "run_id",
        "passed",
        "difference",
        "tolerance",
        "eps",
        "failed",
        "params",
        "evaluations",
        "duration_s",
        "adapter",
        "dtype",
        "seed",
    ):
        assert key in first
    assert first["event"] == "gradcheck" and first["passed"] is True
    assert str(first["timestamp"]).endswith("+00:00")
    assert second["passed"] is False and second["failed"] == ["params"]


def test_an_unwritable_log_warns_once_and_checks_go_on(tmp_path: pathlib.Path) -> None:
    """A directory given as log file: one warning, then silence; the checks still run."""
    target = tmp_path / "a-directory"
    target.mkdir()
    with pytest.warns(gg.GradGuardLogWarning, match="cannot write its log"):
        assert _check(log_file=str(target)).passed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _check(log_file=str(target)).passed


@pytest.mark.skipif(not pathlib.Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_warns_once_and_a_guard_trains_on() -> None:
    """Writing to a full disk (/dev/full: ENOSPC) warns once; guard checks go on."""
    guard = gg.Guard(
        lambda w: float(np.sum(w**2)),
        np.arange(3.0),
        lambda w: 2 * w,
        every=1,
        max_checks=None,
        log_file="/dev/full",
    )
    reporters.JsonLinesFile._warned.discard("/dev/full")
    with pytest.warns(gg.GradGuardLogWarning, match="No space left"):
        assert guard.step() is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(guard.step().passed for _ in range(3))  # type: ignore[union-attr]
