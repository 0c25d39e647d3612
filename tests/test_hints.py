"""Hints name the right cause or none (issue 9, item 3).

The full measurement is ``benchmarks/measure_hints.py`` (docs/numerics.md); this runs it on two
seeds per dtype and holds it to the targets: right >= 95% of failing tensors, wrong never.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

import gradguard as gg
from zoo.hint_cases import named_causes

_PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "measure_hints.py"
_SPEC = importlib.util.spec_from_file_location("measure_hints", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
measure_hints = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(measure_hints)


def test_hints_name_the_right_cause_on_the_labelled_bugs() -> None:
    scores, wrong = measure_hints.sweep(seeds=2)
    total = sum(scores["all"].values())
    assert total > 100
    assert wrong == []
    assert scores["all"]["right"] >= 0.95 * total, dict(scores)


def test_a_whole_tensor_factor_with_dead_relus_is_not_called_an_indexing_bug() -> None:
    """Dead ReLU units make many entries of W2's gradient 0; the zeros agree, the rest are 2x."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8))
    params = {"W1": rng.standard_normal((8, 16)), "W2": rng.standard_normal((16, 3))}

    def forward(p: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
        h = np.maximum(x @ p["W1"] - 0.8, 0.0)  # most units dead
        return float(np.sum(np.tanh(h @ p["W2"]) ** 2)), h

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, h = forward(p)
        o = np.tanh(h @ p["W2"])
        d_z = 2.0 * o * (1.0 - o**2)
        d_h = (d_z @ p["W2"].T) * (h > 0)
        return {"W1": x.T @ d_h, "W2": 2.0 * (h.T @ d_z)}

    for seed in range(10):
        report = gg.check(lambda p: forward(p)[0], params, grad, seed=seed)
        assert report.failed == ("W2",)
        assert named_causes(report["W2"].hint) == {"wrong_factor"}, report["W2"].hint


def test_a_missing_term_in_a_torch_function_is_not_called_a_constant_factor() -> None:
    torch = pytest.importorskip("torch")

    class Softplus(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(z)
            return torch.nn.functional.softplus(z) + 0.05 * z**2

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (z,) = ctx.saved_tensors
            return g * torch.sigmoid(z)  # the 0.1 z term is missing

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    for seed in range(10):
        report = gg.check(lambda m: Softplus.apply(m(x)).sum(), model, seed=seed)
        assert set(report.failed) <= {"weight", "bias"} and report.failed
        for name in report.failed:
            assert "constant factor" not in report[name].hint, report[name].hint
            assert "wrong_factor" not in named_causes(report[name].hint)
