"""The gradient under test is the one training uses (issue 9, item 5).

A float32 model is evaluated in a float64 shadow for the finite differences, but its analytic
gradient comes from the model as it trains, in float32: a backward that is wrong only on its
float32 path (a dtype-dispatched fused kernel) is caught, and the correct zoo raises no alarm.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradguard as gg
from gradguard.engine import Settings, run_check
from gradguard_torch import TorchAdapter


class _Linear(torch.autograd.Function):
    """x @ w.T whose weight gradient is off by ``error`` on the float32 path only."""

    error = 0.05

    @staticmethod
    def forward(ctx, x, w):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        x, w = ctx.saved_tensors
        gw = g.t() @ x
        if gw.dtype == torch.float32:
            gw = gw * (1.0 + _Linear.error)
        return g @ w, gw


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 6))
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(_Linear.apply(x, self.w)))


@pytest.mark.parametrize("error", [0.02, 0.05, 0.1])
def test_a_float32_only_backward_bug_is_caught_and_localized(error: float) -> None:
    _Linear.error = error
    torch.manual_seed(0)
    model = _Model()
    x, y = torch.randn(8, 6), torch.randn(8, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = gg.check(lambda m: F.mse_loss(m(x), y), model, seed=0)
    assert report.failed == ("w",), str(report)
    assert report.notes["gradient_dtype"] == "float32"
    assert "native float32" in str(report.notes["gradient"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_float64_gradient_misses_what_the_native_one_catches() -> None:
    """``TorchAdapter(native_gradient=False)`` checks the shadow's float64 gradient: the
    float32-only bug is invisible there (what every check did before)."""
    _Linear.error = 0.05
    torch.manual_seed(0)
    model = _Model()
    x, y = torch.randn(8, 6), torch.randn(8, 2)
    view = TorchAdapter(native_gradient=False).open(model, lambda m: F.mse_loss(m(x), y), None)
    with view:
        report = run_check(view, Settings(seed=0))
    assert report.passed, str(report)
    assert view.gradient_dtype == view.loss_dtype


class _ScaledTanh(torch.autograd.Function):
    """tanh whose backward is off by ``err`` (0: correct)."""

    @staticmethod
    def forward(ctx, h, err):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(h)
        ctx.err = err
        return torch.tanh(h)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (h,) = ctx.saved_tensors
        return g * (1 - torch.tanh(h) ** 2) * (1 + ctx.err), None


class _LayerScaleBlock(torch.nn.Module):
    """x -> lin(x) + gamma * tanh(branch(x)), gamma initialised at 1e-6 (CaiT, ConvNeXt)."""

    def __init__(self, err: float) -> None:
        super().__init__()
        self.err = err
        self.lin = torch.nn.Linear(8, 8)
        self.branch = torch.nn.Linear(8, 8)
        self.gamma = torch.nn.Parameter(torch.full((8,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.gamma * _ScaledTanh.apply(self.branch(x), self.err)


@pytest.mark.parametrize("seed", range(3))
def test_a_float32_branch_behind_a_layerscale_is_judged_at_its_own_scale(seed: int) -> None:
    """The branch's gradient is ~1e-6 of the model's, below the float32 gradient's round-off
    floor at the model's scale and, at the dtype's step, below the float64 loss's round-off:
    the floor follows the tensor's own scale and the step is widened for it, so the correct
    block passes (not "zero", not inconclusive) and a 5% error in its backward fails there."""
    torch.manual_seed(seed)
    x, t = torch.randn(16, 8), torch.randn(16, 8)
    correct = _LayerScaleBlock(0.0)
    report = gg.check(lambda m: ((m(x) - t) ** 2).mean(), correct, seed=seed)
    assert report.passed and report.status is gg.Status.PASS, str(report)
    assert report.notes["gradient_dtype"] == "float32"
    assert "branch.weight" in str(report.notes["step_widened"])
    torch.manual_seed(seed)
    wrong = _LayerScaleBlock(0.05)
    report = gg.check(lambda m: ((m(x) - t) ** 2).mean(), wrong, seed=seed)
    assert set(report.failed) == {"branch.weight", "branch.bias"}, str(report)
    assert "constant factor" in report["branch.weight"].hint
