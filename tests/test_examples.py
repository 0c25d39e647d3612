"""Every example runs, and prints what a user should see."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_seed_example_shows_the_recipe_number_and_the_wrong_tensors() -> None:
    """The seed example prints the recipe's number, the same in seed mode, and names b1, W2."""
    out = _run("seed_example.py")
    recipe = float(re.search(r"difference = ([0-9.e-]+)", out).group(1))  # type: ignore[union-attr]
    seed_mode = float(re.search(r"difference ([0-9.e+-]+) \(tolerance 1e-07\)", out).group(1))  # type: ignore[union-attr]
    assert abs(seed_mode - recipe) <= 1e-3 * recipe  # printed to 4 digits
    assert out.count("FAILED, 2 of 6 tensors wrong: b1, W2") == 2
    assert "analytic = 4 x numeric" in out and "analytic = 2 x numeric" in out
    assert "PASSED, all 6 tensors agree" in out


def test_numpy_training_loop_guard_checks_then_switches_off(tmp_path: pathlib.Path) -> None:
    """The NumPy loop example checks 3 times, switches off, logs, and trains bit-identically."""
    log = tmp_path / "loop.jsonl"
    out = _run("numpy_training_loop.py", "--log", str(log), "--steps", "200")
    assert out.count("gradient check: passed") == 3
    assert "switched itself off after 3 passing checks" in out
    assert "bit-identical weights: True" in out
    assert len(log.read_text().splitlines()) == 4  # 3 checks and the guard_disabled record


def test_every_example_is_tested() -> None:
    """No example file escapes the tests (this module, or a framework's own test module)."""
    sources = "".join(p.read_text() for p in pathlib.Path(__file__).parent.glob("test_*.py"))
    tested = set(re.findall(r'_run(?:_example)?\("(\w+\.py)"', sources))
    assert {p.name for p in EXAMPLES.glob("*.py")} <= tested


def test_torch_gradcheck_dropin_catches_both_bugs_torch_passes_one() -> None:
    """float32 drop-in: the fixed Function passes; the contiguity and double-backward bugs are
    caught by gradguard's checks, while torch's float64 gradcheck passes both."""
    out = _run("torch_gradcheck_dropin.py")
    blocks = out.split("LinearTanh, bug: ")[1:]
    none, contiguity, double = blocks
    assert none.count("passed") == 4
    assert re.search(r"torch.autograd.gradcheck \(float64\)\s+passed", contiguity)
    assert re.search(
        r"gradguard_torch.gradcheck \(float32\)\s+caught: input 0, input 1", contiguity
    )
    assert "not contiguous" in contiguity
    assert re.search(r"torch.autograd.gradcheck \(float64\)\s+passed", double)
    assert re.search(r"gradguard_torch.gradgradcheck \(float32\)\s+caught: input 0", double)
