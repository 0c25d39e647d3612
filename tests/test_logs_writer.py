"""The built-in reporter: structlog events without touching the application's configuration."""

from __future__ import annotations

import json
import os
import pathlib
import threading
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
def test_a_device_log_path_warns_once_and_a_guard_trains_on() -> None:
    """A device (/dev/full, which would fail every write with ENOSPC) is not a log: one
    warning that says so; guard checks go on."""
    guard = gg.Guard(
        lambda w: float(np.sum(w**2)),
        np.arange(3.0),
        lambda w: 2 * w,
        every=1,
        max_checks=None,
        log_file="/dev/full",
    )
    reporters.JsonLinesFile._warned.discard("/dev/full")
    with pytest.warns(gg.GradGuardLogWarning, match="/dev/full is a device, not a regular file"):
        assert guard.step() is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(guard.step().passed for _ in range(3))  # type: ignore[union-attr]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_log_path_warns_once_and_never_blocks(tmp_path: pathlib.Path) -> None:
    """A FIFO as log file (appending to it would block until a reader appears): check() and a
    guard return at once, with one warning naming the FIFO; nothing blocks, with or without
    a reader on the other end."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    outcome: dict[str, object] = {}

    def run() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome["check"] = _check(log_file=str(fifo)).passed
            guard = gg.Guard(
                lambda w: float(np.sum(w**2)), np.arange(3.0), lambda w: 2 * w,
                every=1, max_checks=2, log_file=fifo,
            )  # fmt: skip
            outcome["steps"] = [guard.step() is not None for _ in range(3)]
            # With a reader on the other end the FIFO is still refused, without a new warning.
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                outcome["with reader"] = _check(log_file=str(fifo)).passed
            finally:
                os.close(reader)
        outcome["warnings"] = [str(w.message) for w in caught]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():  # unblock a writer stuck in open() before failing
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail("a check with a FIFO log path blocked")
    assert outcome["check"] is True and outcome["with reader"] is True
    assert outcome["steps"] == [True, True, False]
    (message,) = outcome["warnings"]  # type: ignore[misc]
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in message
    assert "checks go on without it" in message


@pytest.mark.parametrize(
    ("log_file", "match"),
    [(123, "got int 123"), (["a.jsonl"], "got list"), (b"a.jsonl", "got bytes"), ("", "empty")],
)
def test_a_log_file_that_is_not_a_path_is_a_settings_error(log_file: object, match: str) -> None:
    """check(log_file=123) raises SettingsError naming the type, not a bare TypeError."""
    with pytest.raises(gg.SettingsError, match=match):
        _check(log_file=log_file)
