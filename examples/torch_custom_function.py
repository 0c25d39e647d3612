"""A custom autograd Function with a subtle backward bug, caught by gradguard.check.

The Function is a GELU written by hand for speed: the forward uses the tanh approximation,
the backward the derivative of the *exact* (erf) GELU. Both are textbook formulas and training
still converges, but the activation's derivative is off by up to 9e-4 (near x = 2): a
relative error of ~1e-4 in the gradients, which float32 finite differences (noise ~1e-3)
could not tell from noise. gradguard evaluates the
float32 model in a float64 shadow copy, so the check sees it, and says which tensors it
corrupts: those *upstream* of the activation, not the layer after it.

Then the same check runs in a training loop through a ``gradguard.Guard``: on the buggy model
it stops training at the first check; on the fixed one it switches itself off after two
passing checks.

Run: ``python examples/torch_custom_function.py [--log PATH]`` (a few seconds).
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="JSON-lines file for the training loop's checks")
    log_file = parser.parse_args().log
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

    print()
    train_with_guard(x, y, log_file)


def train_with_guard(x: torch.Tensor, y: torch.Tensor, log_file: str | None) -> None:
    """The same check in a training loop: one ``guard.step()`` line, every 25 steps."""
    print("== in a training loop: a Guard checks every 25 steps on a probe batch ==")
    x_probe, y_probe = x[:16], y[:16]  # a fixed probe batch

    def probe_loss(model: nn.Module) -> torch.Tensor:
        return F.mse_loss(model(x_probe), y_probe)

    for label, buggy, run_id in (
        ("hand-written GELU", True, "torch-gelu-buggy"),
        ("fixed GELU", False, "torch-gelu-fixed"),
    ):
        torch.manual_seed(1)
        net = Mlp(buggy=buggy)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        guard = gg.Guard(
            probe_loss, net, every=25, max_checks=2, log_file=log_file, run_id=run_id, seed=3
        )
        steps = 200
        for _ in range(steps):
            batch = torch.randint(0, len(x), (16,))
            optimizer.zero_grad()
            F.mse_loss(net(x[batch]), y[batch]).backward()
            optimizer.step()
            guard.step()
            if guard.should_stop:  # on_failure="stop", the default: it warned with the table
                break
        if guard.should_stop:
            failed = ", ".join(guard.reports[-1].failed)
            stopped = guard.steps - 1  # the step whose check failed
            print(
                f"  {label}: training stopped at step {stopped}: gradient check failed on {failed}"
            )
            continue
        checks = len(guard.reports)
        print(
            f"  {label}: {checks} passing checks, then the guard switched itself off; "
            f"training ran all {steps} steps"
        )


if __name__ == "__main__":
    main()
