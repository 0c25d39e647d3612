"""How far a trained model's float32 gradient is from the exact one, against its measured spread.

The PyTorch adapter measures a native float32 gradient's round-off (``gradguard.engine.spread``):
the gradient again with the loss scaled by 4/3 and at the parameters multiplied by ``1 +- 2^-24``
(antithetic random signs), ``hypot(rescaled - g, mean(dithered) - g)`` per element. This script
trains the GPT-style decoder of ``bench_screen.py`` with AdamW on its fixed batch and prints, per
tensor, the *own error* (the float32 gradient against float64 autodiff of the same weights) and
its ratio to the spread (both norms over the tensor), largest ratios first.

Run: ``python benchmarks/measure_float32_spread.py [--steps 100 200] [--lr 1e-3]``.
Results: docs/numerics.md ("Float32 gradients: measured spread").
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from bench_screen import decoder_problem  # noqa: E402
from torch import Tensor, nn  # noqa: E402

torch.set_num_threads(1)
_DITHER = 2.0**-24
_SEED = 0x6D70


def _gradient(model: nn.Module, loss: Callable[[nn.Module], Tensor], scale: float) -> list[Tensor]:
    params = list(model.parameters())
    grads = torch.autograd.grad(loss(model) * scale, params)
    return [g.double() / scale for g in grads]


def coverage(
    model: nn.Module, loss: Callable[[nn.Module], Tensor]
) -> list[tuple[float, float, str]]:
    """(own error / spread, own error / ||exact||, name) per tensor, largest ratio first."""
    names = [name for name, _ in model.named_parameters()]
    native = _gradient(model, loss, 1.0)
    exact = _gradient(copy.deepcopy(model).double(), loss, 1.0)
    rescaled = _gradient(model, loss, 4.0 / 3.0)
    generator = torch.Generator().manual_seed(_SEED)
    signs = [
        torch.randint(0, 2, p.shape, generator=generator) * 2.0 - 1.0 for p in model.parameters()
    ]
    dithered = []
    for sign in (1.0, -1.0):
        twin = copy.deepcopy(model)
        with torch.no_grad():
            for p, s in zip(twin.parameters(), signs, strict=True):
                p.copy_((p.double() * (1.0 + sign * _DITHER * s)).float())
        dithered.append(_gradient(twin, loss, 1.0))
    rows = []
    for k, name in enumerate(names):
        error = float((native[k] - exact[k]).norm())
        spread = torch.hypot(
            rescaled[k] - native[k], (dithered[0][k] + dithered[1][k]) / 2 - native[k]
        )
        rows.append(
            (error / max(float(spread.norm()), 1e-300), error / float(exact[k].norm()), name)
        )
    return sorted(rows, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--top", type=int, default=6)
    args = parser.parse_args()
    model, loss = decoder_problem()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    done = 0
    for steps in sorted(args.steps):
        for _ in range(steps - done):
            optimizer.zero_grad()
            loss(model).backward()
            optimizer.step()
        done = steps
        print(
            f"\n## decoder after {steps} AdamW steps, lr {args.lr:g}: "
            f"loss {float(loss(model).detach()):.4g}\n"
        )
        print("| tensor | own error / spread | own error (relative) |")
        print("|---|---:|---:|")
        for ratio, relative, name in coverage(model, loss)[: args.top]:
            print(f"| {name} | {ratio:.2f} | {relative:.1e} |")


if __name__ == "__main__":
    main()
