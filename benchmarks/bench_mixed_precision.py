"""The mixed-precision zoo: how accurate half-precision gradients are, and what gg.check says.

Models (PyTorch, CPU): a ReLU MLP 16-32-1, a GELU MLP 16-32-32-1, an MLP 16-32-1 through a
custom tanh Function, a conv 3->8 + GELU + linear, a LayerNorm MLP, a
``TransformerEncoderLayer(32, 4, 64)`` (ReLU feed-forward) and a pre-LN transformer block whose
feed-forward GELU is a custom Function (``fnblock``). MSE loss to a fixed target. Modes: bfloat16
parameters, float16 parameters, float32 under ``torch.autocast`` in bfloat16 and in float16.

For each model, mode and seed:

- **own error**: the worst tensor's relative difference between the half-precision gradient
  and float64 autodiff of the same model (what the low-precision gradient is worth);
- **spread coverage**: the smallest ratio, over tensors whose own error matters (above 3e-3 in
  bfloat16, 5e-4 in float16), of the measured spread (``gradguard.engine.spread``, as the
  PyTorch adapter measures it) to the own error, both as norms over the tensor: the allowance
  is ``SPREAD_FACTOR`` (2) spreads per probe, so coverage above 0.5 means the spread alone
  accounts for the tensor's own error;
- **check**: ``gg.check`` with default settings: FAIL / INCONCLUSIVE tensors of the correct
  model (false alarms / blind spots), and for the two custom-Function models with a 5% error
  in the Function's backward: whether the check fails and whether only tensors before the
  Function fail (localized).

Run ``python benchmarks/bench_mixed_precision.py`` (3 seeds, about a minute on 2 cores) or
``--quick`` (one seed). Only stdout is written.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before NumPy and torch load their thread pools

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("", "adapters")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import gradguard as gg  # noqa: E402

torch.set_num_threads(1)

MODES = ("bfloat16", "float16", "autocast-bf16", "autocast-f16")


class Tanh(torch.autograd.Function):
    """tanh with a hand-written backward, scaled by ``factor`` (1.05: a 5% bug)."""

    factor = 1.0

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2) * Tanh.factor


class Gelu(torch.autograd.Function):
    """tanh-approximated GELU with a hand-written backward, scaled by ``Tanh.factor``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return F.gelu(x, approximate="tanh")

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        c = 0.7978845608028654
        inner = c * (x + 0.044715 * x**3)
        t = torch.tanh(inner)
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
        return g * d * Tanh.factor


class FnMLP(nn.Module):
    """Linear - custom tanh Function - linear: a bug in the Function shows in ``first``."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 32)
        self.second = nn.Linear(32, 1)

    def forward(self, x: Tensor) -> Tensor:
        hidden: Tensor = Tanh.apply(self.first(x))
        out: Tensor = self.second(hidden)
        return out


class FnBlock(nn.Module):
    """A pre-LN transformer block whose feed-forward GELU is a custom Function."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.down(Gelu.apply(self.up(self.ln2(x))))


# The tensors a bug in the Function's backward reaches (everything the gradient flows
# through the Function to): localized means only these fail.
BEFORE_FUNCTION = {
    "fnmlp": {"first.weight", "first.bias"},
    "fnblock": {
        "up.weight",
        "up.bias",
        "ln2.weight",
        "ln2.bias",
        "ln1.weight",
        "ln1.bias",
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
    },
}

Zoo = Iterator[tuple[str, Callable[[], nn.Module], tuple[int, ...], tuple[int, ...]]]


def zoo() -> Zoo:
    """(name, constructor, input shape, target shape) for every model."""
    yield (
        "relu",
        lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)),
        (16, 16),
        (16, 1),
    )
    yield (
        "gelu",
        lambda: nn.Sequential(
            nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 1)
        ),
        (16, 16),
        (16, 1),
    )
    yield "fnmlp", FnMLP, (16, 16), (16, 1)
    yield (
        "conv",
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU(), nn.Flatten(), nn.Linear(8 * 36, 1)),
        (4, 3, 8, 8),
        (4, 1),
    )
    yield (
        "layernorm",
        lambda: nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 1)),
        (16, 16),
        (16, 1),
    )
    yield (
        "transformer",
        lambda: nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True),
        (4, 8, 32),
        (4, 8, 32),
    )
    yield "fnblock", FnBlock, (4, 8, 32), (4, 8, 32)


def build(
    make: Callable[[], nn.Module], xs: tuple[int, ...], ys: tuple[int, ...], mode: str, seed: int
) -> tuple[nn.Module, Callable[[nn.Module], Tensor], Tensor, Tensor]:
    """The model in ``mode``, its loss as gg.check takes it, its input and target."""
    torch.manual_seed(seed)
    model = make()
    x, y = torch.randn(*xs), torch.randn(*ys)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(mode)
    if dtype is not None:
        model, x = model.to(dtype), x.to(dtype)
    cast = {"autocast-bf16": torch.bfloat16, "autocast-f16": torch.float16}.get(mode)

    def loss(m: nn.Module) -> Tensor:
        if cast is None:
            return F.mse_loss(m(x).float(), y)
        with torch.autocast("cpu", dtype=cast):
            out = m(x)
        return F.mse_loss(out.float(), y)

    return model, loss, x, y


def _dithered(model: nn.Module, loss: Callable[[nn.Module], Tensor], unit: float) -> list[Tensor]:
    """The gradient with every parameter multiplied by ``1 + unit * r`` (fixed random signs
    ``r``), the parameters put back after."""
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(0x6D70)
    with torch.no_grad():
        for p in params:
            signs = torch.randint(0, 2, p.shape, generator=generator).double() * 2 - 1
            p.copy_((p.double() * (1 + unit * signs)).to(p.dtype))
    try:
        return [g.double() for g in torch.autograd.grad(loss(model), params)]
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def own_error(
    model: nn.Module, loss: Callable[[nn.Module], Tensor], x: Tensor, y: Tensor, mode: str
) -> tuple[float, str, float]:
    """The worst tensor's relative difference from float64 autodiff, its name, and the
    smallest ratio of the measured spread (as the PyTorch adapter measures it: the loss
    rescaled by 4/3, and antithetic dithers of one rounding unit) to the own error, both as
    norms over the tensor, over tensors whose own error exceeds 3e-3 (bfloat16) or 5e-4."""
    params = list(model.parameters())
    out = loss(model)
    native = torch.autograd.grad(out, params, retain_graph=True)
    factor = torch.full((), 4.0 / 3.0, dtype=out.dtype)
    again = torch.autograd.grad(out, params, grad_outputs=factor)
    unit = 2.0**-8 if "bf" in mode else 2.0**-11
    up, down = _dithered(model, loss, unit), _dithered(model, loss, -unit)
    twin = copy.deepcopy(model).double()
    exact = torch.autograd.grad(F.mse_loss(twin(x.double()), y.double()), list(twin.parameters()))
    worst, name, coverage = 0.0, "", float("inf")
    floor = 3e-3 if "bf" in mode else 5e-4
    for i, (n, _) in enumerate(model.named_parameters()):
        g, e = native[i].double(), exact[i].double()
        rescaled = again[i].double() / float(factor) - g
        dither = (up[i] + down[i]) / 2 - g
        spread = torch.hypot(rescaled, dither)
        rd = float((g - e).norm() / (g.norm() + e.norm()))
        if rd > worst:
            worst, name = rd, n
        if rd > floor:
            coverage = min(coverage, float(spread.norm() / (g - e).norm()))
    return worst, name, coverage


def run(seeds: int) -> None:
    print(
        "| model | mode | own error (worst tensor), max over seeds | spread coverage, min | "
        "correct: FAIL / INCONCLUSIVE tensors | 5% bug: caught, localized |"
    )
    print("|---|---|---|---|---|---|")
    totals = {"false alarms": 0, "inconclusive": 0, "bugs": 0, "caught": 0, "localized": 0}
    for name, make, xs, ys in zoo():
        for mode in MODES:
            worst, worst_name, coverage = 0.0, "", float("inf")
            fails, blind, caught, localized, bugs = [], [], 0, 0, 0
            for seed in range(seeds):
                model, loss, x, y = build(make, xs, ys, mode, seed)
                w, n, c = own_error(model, loss, x, y, mode)
                if w > worst:
                    worst, worst_name = w, n
                coverage = min(coverage, c)
                report = gg.check(loss, model, seed=seed)
                fails += [p.name for p in report.params if p.status is gg.Status.FAIL]
                blind += [p.name for p in report.params if p.status is gg.Status.INCONCLUSIVE]
                if name in BEFORE_FUNCTION:
                    bugs += 1
                    Tanh.factor = 1.05
                    try:
                        buggy = gg.check(loss, model, seed=seed)
                    finally:
                        Tanh.factor = 1.0
                    failed = {p.name for p in buggy.params if p.status is gg.Status.FAIL}
                    caught += not buggy.passed
                    localized += bool(failed) and failed <= BEFORE_FUNCTION[name]
            totals["false alarms"] += len(fails)
            totals["inconclusive"] += len(blind)
            totals["bugs"] += bugs
            totals["caught"] += caught
            totals["localized"] += localized
            bug = f"{caught}/{bugs}, {localized}/{bugs}" if bugs else "-"
            cov = f"{coverage:.2f}" if np.isfinite(coverage) else "-"
            print(
                f"| {name} | {mode} | {worst:.2e} ({worst_name}) | {cov} | "
                f"{len(fails)} {sorted(set(fails))} / {len(blind)} {sorted(set(blind))} | {bug} |"
            )
    print()
    print(f"seeds per cell: {seeds}; totals: {totals}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed: a smoke test")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    run(1 if args.quick else args.seeds)


if __name__ == "__main__":
    main()
