"""`gradguard report`: the summary of real logs, its exit codes, --json and --plot."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from log_records import write_check
from toy import Params, grad, grad_with_doubled_b, loss

import gradguard as gg
from gradguard import cli
from gradguard.logs import load
from gradguard.logs.plot import MAX_POINTS, PlotData

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


# -- statuses, exit codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "code", "verdict"),
    [
        ({"b": gg.Status.ZERO}, 0, "all 2 checks passed"),
        ({"W": gg.Status.INCONCLUSIVE}, 1, "1 of 2 checks INCONCLUSIVE"),
        ({"W": gg.Status.FAIL}, 1, "1 of 2 checks FAILED"),
    ],
)
def test_an_inconclusive_check_is_not_a_pass(
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    statuses: dict[str, gg.Status],
    code: int,
    verdict: str,
) -> None:
    """A zero tensor passes (exit 0); an inconclusive check exits 1 like a failed one, and the
    summary and --json say which it was."""
    log = tmp_path / "gc.jsonl"
    write_check(log, {})
    write_check(log, statuses)
    capsys.readouterr()  # what writing printed (an application's structlog, if configured)
    exit_code, out, err = report(capsys, log)
    assert (exit_code, err) == (code, "")
    assert out.splitlines()[0] == f"gradguard report: {verdict} (1 run)"
    exit_code, out, _ = report(capsys, log, "--json")
    data = json.loads(out)
    assert exit_code == code and data["passed"] is (code == 0)
    assert data["inconclusive_checks"] == int("INCONCLUSIVE" in verdict)


def test_a_hostile_file_exits_2_with_a_short_message(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """A binary file (no record in it) exits 2 with one short line, not one note per line."""
    log = tmp_path / "binary.jsonl"
    log.write_bytes(bytes(range(256)) * 400 + b"\n" * 50 + b"\x00garbage\n" * 200)
    code, out, err = report(capsys, log)
    assert (code, out) == (2, "")
    assert err.startswith(f"gradguard: no gradguard records in {log} (")
    assert len(err) < 1000 and err.count("\n") == 1


def test_records_around_garbage_decide_the_exit_code(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, failing: pathlib.Path
) -> None:
    """Valid failing records among invalid lines (deep nesting, a huge integer, a wrong type)
    exit 1, with the skipped lines in the notes."""
    record = json.loads(failing.read_text().splitlines()[0])
    log = tmp_path / "mixed.jsonl"
    log.write_text(
        "[" * 50_000
        + "\n"
        + '{"schema": 1, "event": "gradcheck", "step": '
        + "1" * 5000
        + "}\n"
        + json.dumps({**record, "run_id": [1]})
        + "\n"
        + failing.read_text()
    )
    code, out, err = report(capsys, log)
    assert (code, err) == (1, "")
    notes = out.split("notes:\n")[1].splitlines()
    assert [n.split(": ", 2)[1] for n in notes] == [
        "nested deeper than 32, skipped",
        "not JSON, skipped",
        "not a valid gradguard record (record.run_id",
    ]


def test_standard_input_is_read_with_a_dash(tmp_path: pathlib.Path, failing: pathlib.Path) -> None:
    """`... | gradguard report -` reads the pipe; so does /dev/stdin (a pipe, but stdin)."""
    for name in ("-", "/dev/stdin"):
        done = subprocess.run(
            [sys.executable, "-m", "gradguard", "report", name],
            input=failing.read_text(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        assert done.stdout.startswith("gradguard report: 3 of 3 checks FAILED")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_with_no_writer_exits_2_at_once(tmp_path: pathlib.Path) -> None:
    """A FIFO given as a log path is refused at once (it would block), exit 2."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "gradguard", "report", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"gradguard: {fifo} is a FIFO (named pipe), not a regular file")
    assert "Traceback" not in done.stderr


def test_output_cut_by_the_reader_keeps_the_exit_code(
    tmp_path: pathlib.Path, failing: pathlib.Path
) -> None:
    """`gradguard report LOG | head -1`: no BrokenPipeError traceback, the exit code stays 1."""
    done = subprocess.run(
        f'{sys.executable} -m gradguard report {failing} | head -c 10; exit "${{PIPESTATUS[0]}}"',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (1, "")


# -- --plot paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("x.txt", "cannot draw a .txt file; give a name ending in .png, .svg, .pdf"),
        ("adir", "is a directory: give a file name, such as "),
        ("/dev/full", "--plot /dev/full exists and is not a regular file"),
    ],
)
def test_a_plot_path_that_cannot_take_a_plot_exits_2_before_reading(
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    passing: pathlib.Path,
    target: str,
    message: str,
) -> None:
    """--plot x.txt, a directory or a device exits 2 with a message naming the problem, and
    prints no summary; nothing is written."""
    if target == "adir":
        (tmp_path / "adir").mkdir()
    if target == "/dev/full" and not pathlib.Path(target).exists():
        pytest.skip("needs Linux's /dev/full")
    path = target if target.startswith("/") else str(tmp_path / target)
    code, out, err = report(capsys, passing, "--plot", path)
    assert (code, out) == (2, "")
    assert err.startswith("gradguard: ") and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["adir"] if target == "adir" else [])


@pytest.mark.parametrize(("name", "magic"), [("plot", PNG_SIGNATURE), ("p.svg", b"<?xml")])
def test_the_plot_is_written_where_it_says(
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    passing: pathlib.Path,
    name: str,
    magic: bytes,
) -> None:
    """A name without a suffix gets a PNG under exactly that name (not name.png); .svg an SVG."""
    target = tmp_path / name
    code, out, _ = report(capsys, passing, "--plot", target)
    assert code == 0 and out.splitlines()[0] == f"plot written to {target}"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert target.read_bytes().startswith(magic)


# -- the plot's content -----------------------------------------------------------------------


def _fail_markers(figure: Any) -> list[list[tuple[float, float]]]:
    """Per panel, the display positions of the red X failure markers."""
    panels = []
    for axes in figure.axes:
        points = []
        for collection in axes.collections:
            if collection.get_paths() and tuple(collection.get_facecolor()[0][:3]) == (
                0.8627450980392157,
                0.0784313725490196,
                0.23529411764705882,
            ):  # crimson
                transform = collection.get_offset_transform()
                points += [tuple(p) for p in transform.transform(collection.get_offsets())]
        panels.append(points)
    return panels


def test_two_failing_tensors_of_one_check_are_drawn_apart(tmp_path: pathlib.Path) -> None:
    """W and b failing at the same step with the same difference: two markers, side by side."""
    log = tmp_path / "two.jsonl"
    write_check(log, {"W": gg.Status.FAIL, "b": gg.Status.FAIL}, run_id="r", step=4)
    data = PlotData()
    for record in load(log).checks:
        record["params"] = [{**p, "difference": 0.5} for p in record["params"]]
        data.add(record)
    ((first, second),) = _fail_markers(data.figure())
    assert abs(first[0] - second[0]) > 5 and first[1] == pytest.approx(second[1])


def test_pytest_records_are_drawn_one_column_per_test_without_lines(
    tmp_path: pathlib.Path,
) -> None:
    """A pytest session is a panel with one tick per test (labelled with the test), its tensors
    as points, no lines joining tests; a training run next to it keeps its lines."""
    log = tmp_path / "session.jsonl"
    for test, statuses in [
        ("tests/test_m.py::test_a", {}),
        ("tests/test_m.py::test_b", {"W": gg.Status.FAIL, "b": gg.Status.FAIL}),
    ]:
        write_check(log, statuses, run_id="pytest-1", source="pytest", label=test)
    write_check(log, {}, run_id="train", step=0, source="guard")
    data = PlotData()
    for record in load(log).checks:
        data.add(record)
    figure = data.figure()
    session, run = figure.axes[:2]
    assert [t.get_text() for t in session.get_xticklabels()] == [
        "test_m.py::test_a",
        "test_m.py::test_b",
    ]
    assert session.get_lines() == [] or all(
        line.get_linestyle() == "--" for line in session.get_lines()
    )  # tolerance lines only
    assert [line.get_label() for line in run.get_lines() if line.get_linestyle() != "--"] == [
        "W",
        "b",
    ]
    markers, _ = _fail_markers(figure)
    assert len(markers) == 2 and abs(markers[0][0] - markers[1][0]) > 5
    assert session.get_title(loc="left") == "pytest session pytest-1: 2 checks, 1 not passed"


def test_a_long_run_is_drawn_from_a_bounded_number_of_points(tmp_path: pathlib.Path) -> None:
    """Past MAX_POINTS a line keeps every second point: memory stays bounded on huge logs."""
    log = tmp_path / "one.jsonl"
    write_check(log, {}, run_id="r", step=0)
    (record,) = load(log).checks
    data = PlotData()
    for step in range(3 * MAX_POINTS):
        data.add({**record, "step": step})
    series = data.panels["r"]["series"]
    assert all(MAX_POINTS // 2 <= len(s["x"]) <= MAX_POINTS for s in series.values())
    assert series["W"]["x"][:3] == [0.0, 4.0, 8.0]
