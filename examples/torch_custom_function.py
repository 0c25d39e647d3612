"""A custom autograd Function with a subtle backward bug, caught by gradguard.check.

The Function is a GELU written by hand for speed: the forward uses the tanh approximation,
the backward the derivative of the *exact* (erf) GELU. Both are textbook formulas and training
still converges, but the activation's derivative is off by up to 9e-4 (near x = 2): a
relative error of ~1e-4 in the gradients, which float32 finite differences (noise ~1e-3)
could not tell from noise. gradguard evaluates the
float32 model in a float64 shadow copy, so the check sees it, and says which tensors it
corrupts: those *upstream* of the activation, not the layer after it.

Run: ``python examples/torch_custom_function.py`` (a few seconds).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gradguard as gg

_C = math.sqrt(2.0 / math.pi)


class TanhGelu(torch.autograd.Function):
    """GELU, tanh approximation: 0.5 x (1 + tanh(c (x + 0.044715 x^3)))."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, exact_backward: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.exact_backward = exact_backward
        return 0.5 * x * (1.0 + torch.tanh(_C * (x + 0.044715 * x**3)))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        if ctx.exact_backward:  # BUG: the derivative of the erf GELU, not of the tanh one
            cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
            pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
            return grad_out * (cdf + x * pdf), None
        t = torch.tanh(_C * (x + 0.044715 * x**3))
        dt = (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * x * x)
        return grad_out * (0.5 * (1.0 + t) + 0.5 * x * dt), None


class Mlp(nn.Module):
    def __init__(self, buggy: bool) -> None:
        super().__init__()
        self.hidden = nn.Linear(10, 32)
        self.out = nn.Linear(32, 1)
        self.buggy = buggy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = TanhGelu.apply(self.hidden(x), self.buggy)
        return self.out(h)  # type: ignore[no-any-return]


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 10)  # float32 data, a float32 model: the usual setup
    y = torch.randn(64, 1)

    def loss(model: nn.Module) -> torch.Tensor:
        return F.mse_loss(model(x), y)

    print("== the hand-written GELU, as first written ==")
    model = Mlp(buggy=True)
    report = gg.check(loss, model, seed=0)  # no grad: autograd runs the custom backward
    print(report)
    print()
    print("What to look at:")
    print(f"  - failing tensors: {', '.join(report.failed)}")
    for name in report.failed:
        p = report[name]
        print(
            f"  - {name}: worst element {list(p.worst_index or ())}: analytic "
            f"{p.worst_analytic:.6g} vs numeric {p.worst_numeric:.6g} "
            f"(difference {p.difference:.1e}, tolerance {p.tolerance:.0e})"
        )
    passing = [p.name for p in report.params if p.passed]
    print(
        f"  - {', '.join(passing)} pass: the layer *after* the activation gets the right "
        "gradient, so the error enters in the activation's backward and flows upstream"
    )
    print(f"  - how it was evaluated: {report.notes['evaluation']} (model dtype float32)")
    print(
        f"  - the differences ({min(report[n].difference for n in report.failed):.0e} and up) "
        "are far below float32's tolerance (1e-02): evaluated in float32, finite differences "
        "could not have seen them"
    )
    print()

    print("== after the fix (the derivative of the tanh approximation) ==")
    fixed = Mlp(buggy=False)
    fixed.load_state_dict(model.state_dict())
    report = gg.check(loss, fixed, seed=0)
    print(report)

    # -- Training-loop Guard ----------------------------------------------------------------
    # PLACEHOLDER (the lead adds this part once gradguard.Guard exists): the same check,
    # every k steps of a training loop, switching itself off after a few clean checks.


if __name__ == "__main__":
    main()
