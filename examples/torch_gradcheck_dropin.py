"""gradguard_torch.gradcheck as a drop-in for torch.autograd.gradcheck, in float32.

A fused ``tanh(x @ w)`` written as a custom autograd Function, with two bugs that real kernels
have had:

1. *Contiguity.* The backward reads ``grad_output`` as if it were contiguous (a Triton kernel
   indexing by shape instead of strides; pytorch#194719). Every ``grad_output`` torch's
   gradcheck builds is contiguous, so it passes; downstream, under ``torch.cat`` or a
   transpose, the gradient is silently wrong.
2. *Double backward.* The backward reuses the saved output ``y`` detached, so its own
   derivative (used by second-order methods, gradient penalties, MAML) is wrong. torch's
   gradcheck passes; only gradgradcheck would see it.

torch's gradcheck needs ``.double()`` and still passes both bugs; gradguard's drop-ins check
the float32 Function as it is, pass the fixed one, and catch both, naming the input.

Run: ``python examples/torch_gradcheck_dropin.py`` (a few seconds).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

import gradguard_torch


def _as_contiguous(g: torch.Tensor) -> torch.Tensor:
    """BUG 1: reinterpret grad_output's memory with contiguous strides."""
    return torch.as_strided(g, g.shape, (g.shape[1], 1), g.storage_offset())


class LinearTanh(torch.autograd.Function):
    """tanh(x @ w), with either bug switched on by a flag."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bug: str) -> torch.Tensor:
        y = torch.tanh(x @ w)
        ctx.save_for_backward(x, w, y)
        ctx.bug = bug
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, w, y = ctx.saved_tensors
        if ctx.bug == "contiguity":
            g = _as_contiguous(g)
        if ctx.bug == "double-backward":
            y = y.detach()  # BUG 2: the double backward loses d(1 - y^2)/dx
        gz = g * (1 - y * y)
        return gz @ w.t(), x.t() @ gz, None


def _verdict(check: Any, bug: str, *inputs: torch.Tensor) -> str:
    try:
        check(lambda x, w: LinearTanh.apply(x, w, bug), inputs)
    except GradcheckError as error:  # gradguard's error is torch's GradcheckError too
        report = getattr(error, "report", None)
        if report is None:
            return "caught"
        hint = report[report.failed[0]].hint
        return f"caught: {', '.join(report.failed)} wrong ({hint[:70]}...)"
    return "passed"


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g).requires_grad_(True)  # float32, as the model trains
    w = torch.randn(4, 3, generator=g).requires_grad_(True)
    x64, w64 = (t.detach().double().requires_grad_(True) for t in (x, w))
    rows = [
        ("torch.autograd.gradcheck (float64)", torch.autograd.gradcheck, (x64, w64)),
        ("torch.autograd.gradgradcheck (float64)", torch.autograd.gradgradcheck, (x64, w64)),
        ("gradguard_torch.gradcheck (float32)", gradguard_torch.gradcheck, (x, w)),
        ("gradguard_torch.gradgradcheck (float32)", gradguard_torch.gradgradcheck, (x, w)),
    ]
    for bug in ("none", "contiguity", "double-backward"):
        print(f"LinearTanh, bug: {bug}")
        for name, check, inputs in rows:
            print(f"  {name:42s} {_verdict(check, bug, *inputs)}")
        print()
    print("Switching is one import: gradguard_torch.gradcheck takes torch's arguments.")


if __name__ == "__main__":
    main()
