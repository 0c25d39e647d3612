"""The pytest plugin, run for real with pytester: fixture, failure message, log, seed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

NUMPY_TESTS = """
import numpy as np

X = np.linspace(-1.0, 1.0, 12).reshape(4, 3)

def loss(p):
    return float(np.sum(np.tanh(X @ p["W"] + p["b"]) ** 2))

def grad(p, factor=1.0):
    a = np.tanh(X @ p["W"] + p["b"])
    dz = 2 * a * (1 - a ** 2)
    return {"W": X.T @ dz * factor, "b": dz.sum(axis=0)}

def params():
    return {"W": np.full((3, 2), 0.3), "b": np.array([0.1, -0.2])}

def test_right(gradcheck):
    report = gradcheck(loss, params(), grad)
    assert report.passed and report.names == ("W", "b")

def test_wrong(gradcheck):
    gradcheck(loss, params(), lambda p: grad(p, factor=2.0))
"""


def test_a_passing_check_passes_and_a_wrong_gradient_fails_with_the_table(
    pytester: pytest.Pytester,
) -> None:
    """gradcheck() passes a right gradient; a wrong one fails with the per-tensor table."""
    pytester.makepyfile(test_grads=NUMPY_TESTS)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*gradguard: FAILED, 1 of 2 tensors wrong: W*",
            "*tensor*shape*status*difference*",
            "*W*(3, 2)*FAIL*",
            "*analytic = 2 x numeric*",
            "*replay this check with: pytest test_grads.py::test_wrong --gradguard-seed *",
        ]
    )


def test_gradguard_log_collects_every_check_of_the_session(pytester: pytest.Pytester) -> None:
    """--gradguard-log writes one record per check, labelled with the test's node id."""
    pytester.makepyfile(test_grads=NUMPY_TESTS)
    result = pytester.runpytest("--gradguard-log", "checks.jsonl")
    result.assert_outcomes(passed=1, failed=1)
    lines = (pytester.path / "checks.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["label"], r["passed"], r["source"]) for r in records] == [
        ("test_grads.py::test_right", True, "pytest"),
        ("test_grads.py::test_wrong", False, "pytest"),
    ]
    assert len({r["run_id"] for r in records}) == 1


def test_gradguard_report_reads_a_session_test_by_test(pytester: pytest.Pytester) -> None:
    """`gradguard report` on a session's log lists the tests, the failing one first with its
    tensor; the tensor tables say which test each W and b is from (not "W 1 of 2"); the
    exit code is 1; --json and the plot say the same."""
    pytester.makepyfile(test_grads=NUMPY_TESTS)
    pytester.runpytest("--gradguard-log", "checks.jsonl")
    done = subprocess.run(
        [sys.executable, "-m", "gradguard", "report", "checks.jsonl", "--plot", "p.png"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    text = done.stdout
    tests = text.split("\ntests:\n")[1].split("\n\n")[0].splitlines()
    assert [row.split() for row in tests[1:]] == [
        ["test_grads.py::test_wrong", "1", "FAIL", "W"],
        ["test_grads.py::test_right", "1", "pass", "-"],
    ]
    failures = text.split("failures by tensor:\n")[1].split("\n\n")[0].splitlines()
    assert [row.split()[:4] for row in failures[1:]] == [
        ["W", "test_grads.py::test_wrong", "1", "0"]
    ]
    assert (pytester.path / "p.png").read_bytes().startswith(b"\x89PNG")
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "gradguard", "report", "checks.jsonl", "--json"],
            cwd=pytester.path,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    assert [(t["test"], t["status"]) for t in data["tests"]] == [
        ("test_grads.py::test_right", "pass"),
        ("test_grads.py::test_wrong", "fail"),
    ]


def test_gradguard_seed_replays_a_check(pytester: pytest.Pytester) -> None:
    """--gradguard-seed N seeds every check with N, so a logged failure replays exactly."""
    pytester.makepyfile(test_grads=NUMPY_TESTS)
    pytester.runpytest("--gradguard-log", "first.jsonl")
    failing = next(
        json.loads(line)
        for line in (pytester.path / "first.jsonl").read_text().splitlines()
        if not json.loads(line)["passed"]
    )
    replay = pytester.runpytest(
        "test_grads.py::test_wrong",
        "--gradguard-seed",
        str(failing["seed"]),
        "--gradguard-log",
        "second.jsonl",
    )
    replay.assert_outcomes(failed=1)
    again = json.loads((pytester.path / "second.jsonl").read_text().splitlines()[0])
    assert again["seed"] == failing["seed"]
    assert again["params"] == failing["params"]


def test_bad_input_in_a_gradient_test_is_an_error_naming_the_problem(
    pytester: pytest.Pytester,
) -> None:
    """A mis-shaped gradient fails the test with gradguard's GradientError message."""
    pytester.makepyfile(
        test_bad="""
import numpy as np

def test_transposed(gradcheck):
    w = np.ones((2, 3))
    gradcheck(lambda w: float(np.sum(w ** 2)), w, lambda w: 2 * w.T)
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*GradientError*has shape (3, 2) but the parameter has shape (2, 3)*"]
    )
