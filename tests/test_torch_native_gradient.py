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
