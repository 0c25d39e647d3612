"""gradguard_keras.GradCheckCallback on the TensorFlow, JAX and PyTorch backends of Keras 3.

Keras reads ``KERAS_BACKEND`` once, at import, so each backend runs in its own process
(tests/keras_backends/run_backend.py). On each: a ``keras.ops.custom_gradient`` whose backward
is 1.5x too large is caught during ``fit`` and the layer feeding it is named; with the correct
rule the checks pass, and the trained weights are bit-identical to a ``fit`` without the
callback. One callback class; what it checks through is the backend's best: the TensorFlow
adapter's compiled float64 trace on TensorFlow, Keras's stateless API elsewhere (compiled
with ``jax.jit`` under JAX); on each, the default check screens the tensors jointly.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent / "keras_backends" / "run_backend.py"


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_callback_catches_a_custom_gradient_bug_and_leaves_training_bit_identical(
    backend: str,
) -> None:
    """The same callback on every backend."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert f"backend {backend}" in lines
    assert "buggy checks 2" in lines
    assert "buggy failed sequential/hidden/bias,sequential/hidden/kernel" in lines
    assert "correct checks 2 passed True" in lines
    assert "bit-identical True" in lines
    # Joint screening on every backend: the views pass every perturbed tensor at once.
    assert "buggy strategy screen" in lines and "strategy screen" in lines
    assert "screened jointly 4 of 4" in lines
    expected = {
        "tensorflow": ("tensorflow", "float64 trace"),
        "jax": ("keras", "float32 (the variables' own dtype), stateless_call, compiled (jax.jit)"),
        "torch": ("keras", "float32 (the variables' own dtype), stateless_call, eager"),
    }[backend]
    assert f"adapter {expected[0]}" in lines
    (evaluation,) = [line for line in lines if line.startswith("evaluation ")]
    assert evaluation.startswith(f"evaluation {expected[1]}"), evaluation
