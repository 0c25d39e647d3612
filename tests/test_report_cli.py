"""`gradguard report`: the summary of real logs, its exit codes, --json and --plot."""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from toy import Params, grad, grad_with_doubled_b, loss

import gradguard as gg
from gradguard import cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_params() -> Params:
    rng = np.random.default_rng(2)
    return {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A guard's log: three passing checks, then it switches itself off."""
    log = tmp_path_factory.mktemp("passing") / "passing.jsonl"
    guard = gg.Guard(
        loss, make_params(), grad, every=2, max_checks=3, log_file=log, run_id="ok", seed=0
    )
    for _ in range(8):
        guard.step()
    return log


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A guard's log: a wrong b gradient at each of three checks (on_failure="log")."""
    log = tmp_path_factory.mktemp("failing") / "failing.jsonl"
    guard = gg.Guard(
        loss,
        make_params(),
        grad_with_doubled_b,
        every=2,
        max_checks=3,
        on_failure="log",
        log_file=log,
        run_id="bad",
        seed=0,
    )
    for _ in range(6):
        guard.step()
    return log


def report(capsys: pytest.CaptureFixture[str], *argv: str | pathlib.Path) -> tuple[int, str, str]:
    """Run ``gradguard report ARGV...`` in-process: (exit code, stdout, stderr)."""
    code = cli.main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_all_passing_log_exits_0_with_the_summary(
    capsys: pytest.CaptureFixture[str], passing: pathlib.Path
) -> None:
    """An all-passing log exits 0 and prints the summary: verdict, the run, the tensors."""
    code, out, err = report(capsys, passing)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "gradguard report: all 3 checks passed (1 run)"
    assert ["ok", "3", "0", "0", "0-4", "passed"] in [line.split() for line in lines]
    assert "worst difference per tensor:" in out
    assert "statuses: pass 6" in out


def test_log_with_a_failing_check_exits_1_naming_the_tensor(
    capsys: pytest.CaptureFixture[str], failing: pathlib.Path
) -> None:
    """A failing check makes the exit code 1; the summary names the tensor and its step."""
    code, out, err = report(capsys, failing)
    assert code == 1 and err == ""
    assert out.splitlines()[0] == "gradguard report: 3 of 3 checks FAILED (1 run)"
    failures = out.split("failures by tensor:\n", 1)[1].splitlines()
    assert failures[0].split() == [
        "tensor", "failed", "inconclusive", "of", "first", "failing", "step", "run", "worst",
        "difference",
    ]  # fmt: skip
    assert failures[1].split()[:6] == ["b", "3", "0", "3", "0", "bad"]


def test_one_failing_log_among_several_exits_1(
    capsys: pytest.CaptureFixture[str], passing: pathlib.Path, failing: pathlib.Path
) -> None:
    """Several logs are summarized together; one failing check anywhere makes it exit 1."""
    code, out, _ = report(capsys, passing, failing)
    assert code == 1
    assert out.splitlines()[0] == "gradguard report: 3 of 6 checks FAILED (2 runs)"


@pytest.mark.parametrize("kind", ["missing", "directory", "no records"])
def test_unusable_input_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, kind: str
) -> None:
    """A missing file, a directory, or a file with only other tools' lines exits 2 with a
    one-line message on stderr naming the path, and no traceback."""
    path = tmp_path / "gc.jsonl"
    if kind == "directory":
        path.mkdir()
    elif kind == "no records":
        lines = [{"level": "info", "msg": "x"}, {"level": "warning", "msg": "y"}]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    code, out, err = report(capsys, path)
    assert code == 2 and out == ""
    assert err.startswith("gradguard: ") and str(path) in err
    assert "Traceback" not in err
    expected = {
        "missing": "does not exist",
        "directory": "is a directory",
        "no records": "no gradguard records",
    }[kind]
    assert expected in err
    if kind == "no records":
        assert "2 line(s) from other tools skipped" in err


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(("log", "code"), [("passing", 0), ("failing", 1)])
def test_json_prints_strict_json_and_keeps_the_exit_code(
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, log: str, code: int
) -> None:
    """--json prints only the summary as strict JSON, with the usual exit code."""
    exit_code, out, err = report(capsys, request.getfixturevalue(log), "--json")
    assert (exit_code, err) == (code, "")
    data = _strict_json(out)
    assert set(data) == {
        "passed",
        "checks",
        "failed_checks",
        "inconclusive_checks",
        "check_statuses",
        "runs",
        "tests",
        "tensors",
        "statuses",
        "notes",
    }
    assert data["check_statuses"] == ({"pass": 3} if code == 0 else {"fail": 3})
    assert data["tests"] == [] and data["inconclusive_checks"] == 0
    assert data["passed"] is (code == 0)
    assert (data["checks"], data["failed_checks"]) == (3, 3 * code)
    assert [r["run_id"] for r in data["runs"]] == ["ok" if code == 0 else "bad"]
    assert {t["name"] for t in data["tensors"]} == {"W", "b"}
    assert data["notes"] == []


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_a_png_and_still_prints_the_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, failing: pathlib.Path
) -> None:
    """--plot PNG draws a real PNG (one 9-inch-wide panel per run, 120 dpi); the summary prints."""
    target = tmp_path / "out.png"
    code, out, err = report(capsys, failing, "--plot", target)
    assert code == 1 and err == ""
    assert out.splitlines()[0] == f"plot written to {target}"
    assert "gradguard report: 3 of 3 checks FAILED (1 run)" in out
    data = target.read_bytes()
    assert _png_size(data) == (1080, 456)  # 9 x (1.2 + 2.6 per run) inches
    assert len(data) > 10_000


def test_plot_has_one_panel_per_run(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, failing: pathlib.Path
) -> None:
    """Two runs in the logs give a figure two panels tall."""
    both = tmp_path / "both.jsonl"
    both.write_text(failing.read_text() + failing.read_text().replace('"run_id":"', '"run_id":"b-'))
    target = tmp_path / "two.png"
    report(capsys, both, "--plot", target)
    assert _png_size(target.read_bytes()) == (1080, 768)  # 9 x (1.2 + 2 x 2.6) inches


def test_plot_without_matplotlib_exits_2_naming_the_extra(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
    passing: pathlib.Path,
) -> None:
    """Without matplotlib, --plot exits 2 with a message that says to install gradguard[plot]."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    target = tmp_path / "out.png"
    code, _, err = report(capsys, passing, "--plot", target)
    assert code == 2
    assert err.startswith("gradguard: ") and "gradguard[plot]" in err
    assert "Traceback" not in err
    assert not target.exists()


def test_plot_to_a_missing_directory_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, passing: pathlib.Path
) -> None:
    """--plot into a directory that does not exist is unusable input: exit 2, a message."""
    target = tmp_path / "no-such-dir" / "out.png"
    code, _, err = report(capsys, passing, "--plot", target)
    assert code == 2
    assert err.startswith("gradguard: ") and str(target) in err


@pytest.mark.parametrize(("log", "code"), [("passing", 0), ("failing", 1)])
def test_truncated_last_line_is_noted_and_the_verdict_stands(
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    tmp_path: pathlib.Path,
    log: str,
    code: int,
) -> None:
    """A log cut off mid-record (a crash) still exits 0 or 1 by its complete records, and the
    summary prints a note about the skipped line."""
    source: pathlib.Path = request.getfixturevalue(log)
    text = source.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_text(text + first[: len(first) // 2], encoding="utf-8")
    exit_code, out, _ = report(capsys, crashed)
    assert exit_code == code
    assert out.splitlines()[0].endswith(
        "3 checks passed (1 run)" if code == 0 else "FAILED (1 run)"
    )
    line = len(text.splitlines()) + 1
    assert f"{crashed}:{line}: truncated last line skipped" in out


@pytest.mark.parametrize(("log", "code"), [("passing", 0), ("failing", 1), ("missing", 2)])
def test_python_dash_m_gradguard_report_exit_codes(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, log: str, code: int
) -> None:
    """`python -m gradguard report LOG` in a real process: the same exit codes and output,
    and a missing file gives a message, not a traceback."""
    path = tmp_path / "missing.jsonl" if log == "missing" else request.getfixturevalue(log)
    done = subprocess.run(
        [sys.executable, "-m", "gradguard", "report", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    if code == 2:
        assert done.stdout == ""
        assert done.stderr == f"gradguard: {path} does not exist\n"
    else:
        assert done.stderr == ""
        assert done.stdout.startswith("gradguard report: ")
        assert ("FAILED" in done.stdout.splitlines()[0]) is (code == 1)


def test_plot_leaves_the_callers_matplotlib_alone(
    tmp_path: pathlib.Path, failing: pathlib.Path
) -> None:
    """Plotting from Python keeps the caller's backend and opens no pyplot figure."""
    script = f"""
import matplotlib
matplotlib.use("pdf")
import matplotlib.pyplot as plt
from gradguard.logs import load
from gradguard.logs.plot import plot_differences
plot_differences(load({str(failing)!r}), {str(tmp_path / "p.png")!r})
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["pdf", "0"]
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_SIGNATURE)
