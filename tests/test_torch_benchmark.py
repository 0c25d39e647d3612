"""benchmarks/bench_torch.py runs (--quick) and reports every section; no timing is asserted."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_torch_benchmark_quick_run_reports_every_section() -> None:
    """--quick prints the five sections, restores the parameters, and shows the Float64Mode
    bringing every listed loss function to float64."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_torch.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for title in (
        "## 1. Default check vs torch.autograd.gradcheck(fast_mode=True)",
        '## 2. sample="all" vs torch.autograd.gradcheck(fast_mode=False)',
        "## 3. Engine overhead",
        "## 4. Batching perturbations",
        "## 5. float32 numerics",
    ):
        assert title in out
    assert "Parameters bit-identical after all checks: yes" in out
    assert "| NO |" not in out
    loss_rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert loss_rows and all(line.endswith("| float64 |") for line in loss_rows)
    assert "fail: fc2.weight" in out
