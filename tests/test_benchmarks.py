"""The benchmark scripts run (fast settings) and say what they measured; no timing is asserted."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCHMARKS.parent,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_engine_benchmark_quick_run_reports_every_section() -> None:
    """bench_engine.py --quick prints the overhead, the evaluation table and the seed comparison."""
    out = _run(str(BENCHMARKS / "bench_engine.py"), "--quick")
    assert "## 1. Engine overhead" in out and "## 2. Loss evaluations" in out
    assert "## 3. Seed recipe vs gradguard" in out
    assert "Parameters bit-identical after all checks: yes" in out
    # Seed mode gives the recipe's number: the relative gap column reads 0.
    assert out.count("| 0.0e+00 |") == 2


def test_tolerance_sweep_runs_on_the_zoo() -> None:
    """measure_tolerances.py sweeps both dtypes and marks the defaults."""
    out = _run(str(BENCHMARKS / "measure_tolerances.py"), "--seeds", "1")
    assert "| float64 | 1e-06 (default) |" in out
    assert "| float32 | 0.01 (default) |" in out


def test_guard_benchmark_reports_the_disabled_step() -> None:
    """bench_guard.py --quick measures a switched-off guard next to an empty call."""
    out = _run(str(BENCHMARKS / "bench_guard.py"), "--quick")
    assert "| guard.step(), guard switched off |" in out
    assert "| empty Python function call |" in out


def test_tensorflow_benchmark_quick_run_reports_every_section() -> None:
    """bench_tensorflow.py --quick prints the speed, copy-on-read and peer sections."""
    out = _run(str(BENCHMARKS / "bench_tensorflow.py"), "--quick")
    assert "## 1. Compiled vs eager" in out and "## 2. Copy-on-read" in out
    assert "## 3. Against tf.test.compute_gradient" in out
    assert "Variables bit-identical after every check: yes" in out


def test_keras_callback_benchmark_quick_run_reports_every_section() -> None:
    """bench_keras_callback.py --quick prints the fit-time, hook and check sections."""
    out = _run(str(BENCHMARKS / "bench_keras_callback.py"), "--quick")
    assert "## 1. Fit time after the callback switched itself off vs without it" in out
    assert "| GradCheckCallback.on_train_batch_begin, switched off |" in out
    assert "## 3. A check vs the compiled forward floor" in out
    assert "Model variables bit-identical after every check: yes" in out


def test_report_benchmark_quick_run_measures_memory_and_deletes_its_log(
    tmp_path: pathlib.Path,
) -> None:
    """bench_report.py --quick reports time and peak memory, the log's checks all pass, and
    the generated log is gone afterwards (its own temporary directory: other runs of the
    suite on the machine leave theirs in the shared one)."""
    out = _run(
        str(BENCHMARKS / "bench_report.py"), "--quick", env={**os.environ, "TMPDIR": str(tmp_path)}
    )
    assert "| report, 1-record log (the floor) | 0 |" in out
    assert re.search(r"\| report --plot, 2\d MiB log \| 0 \|", out)
    assert re.search(r"Peak resident memory on the 2\d MiB log over the 1-record log: ", out)
    assert list(tmp_path.iterdir()) == []


def test_jax_benchmark_quick_run_reports_both_sections() -> None:
    """bench_jax.py --quick measures evaluations against a jitted forward and runs the peers."""
    out = _run(str(BENCHMARKS / "bench_jax.py"), "--quick")
    assert "## 1. Per-evaluation cost vs a jitted forward" in out
    assert "## 2. Against jax.test_util.check_grads" in out
    # check_grads' float32 false alarm on a correct function, and the bug only gradguard sees.
    assert "| sum(tanh(x)**2), x = ones(3) (correct) | yes | check_grads order=2 | FAIL |" in out
    assert "| no | gradguard.check | FAIL" in out and "hidden/bias, hidden/kernel |" in out


def test_opinfo_benchmark_quick_run_no_false_alarm_every_planted_bug_caught() -> None:
    """bench_opinfo.py --quick: no false alarm on 8 stock float32 ops; 24 of 24 planted bugs
    (contiguity and double-backward ones included) caught and localized to their inputs."""
    out = _run(str(BENCHMARKS / "bench_opinfo.py"), "--quick", "--samples", "1")
    assert "False alarms: 0" in out
    assert "Planted bugs caught: 24 of 24; localized to the wrong inputs: 24 of 24" in out
