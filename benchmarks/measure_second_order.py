"""Measure order 2 and forward mode on correct PyTorch models: noise and cost.

1. Noise (docs/numerics.md, "Second order"): for each model and seed, the largest
   |numeric - analytic| of H v over every element, in units of the a-priori round-off unit
   ``u (|g+| + |g-| + 2 rms(g_block)) / 2h`` that ``gradguard.engine.second_order`` multiplies
   by ``_GRADIENT_ULPS``, and the 99th percentile.
2. Cost (docs/benchmarks.md): wall time of ``order=2`` and ``mode="forward"`` checks as a ratio
   to the default first-order check of the same model (median of 3).

Run: ``python benchmarks/measure_second_order.py`` (about a minute on two cores).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import gradguard as gg
from gradguard.api import find_adapter
from gradguard.engine import Settings
from gradguard.engine.numerics import default_step, unit_roundoff
from gradguard.engine.second_order import _GRADIENT_ULPS, _direction, _Run
from gradguard.kit.lifetime import OpenView


def units(params: Any, loss: Callable[..., Any], seed: int) -> tuple[float, float, str]:
    adapter = find_adapter(params)
    with OpenView(adapter, params, loss, None) as view:
        view.evaluate()
        run = _Run(view, Settings(order=2), seed)
        run.u = unit_roundoff(view.loss_dtype)
        run.h = default_step(view.loss_dtype)
        run.g0, _ = run.gradient(np.zeros(view.layout.size))
        run.typical = np.zeros(view.layout.size)
        for segment in view.layout:
            block = run.g0[segment.offset : segment.stop]
            run.typical[segment.offset : segment.stop] = math.sqrt(float(np.mean(block**2)))
        originals = [view.original(s) for s in range(len(view.layout))]
        seen = []
        for _ in range(4):
            p = run.probe(_direction(run, list(range(len(view.layout))), originals, True))
            seen.append(np.abs(p.numeric - p.analytic) / (p.noise / _GRADIENT_ULPS))
        every = np.concatenate(seen)
        return float(every.max()), float(np.percentile(every, 99)), str(view.loss_dtype)


def torch_models(dtype: torch.dtype, seed: int) -> list[tuple[str, Any, Callable[..., Any]]]:
    torch.manual_seed(seed)
    x = torch.randn(32, 6, dtype=dtype)
    y = torch.randn(32, 1, dtype=dtype)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 16),
        torch.nn.GELU(),
        torch.nn.Linear(16, 1),
    ).to(dtype)
    gru = torch.nn.GRU(6, 8, batch_first=True).to(dtype)
    seq = torch.randn(4, 5, 6, dtype=dtype)
    cnn = torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3), torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.Linear(16, 1)
    ).to(dtype)
    img = torch.randn(8, 2, 6, dtype=dtype)
    tensors = {"a": torch.randn(20, dtype=dtype), "b": torch.randn(20, dtype=dtype)}
    return [
        ("MLP tanh/GELU", mlp, lambda m: torch.nn.functional.mse_loss(m(x), y)),
        ("GRU", gru, lambda m: (m(seq)[0] ** 2).mean()),
        ("conv + softplus", cnn, lambda m: (m(img) ** 2).mean()),
        (
            "tensor dict (in place)",
            tensors,
            lambda p: (torch.sin(p["a"]) * p["b"]).logsumexp(0) + (p["a"] ** 2).sum() / 20,
        ),
    ]


def _seconds(loss: Callable[..., Any], params: Any, **options: Any) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        gg.check(loss, params, seed=0, **options)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cost() -> None:
    print("\n## Cost: time per check as a ratio to the default first-order check\n")
    print("| model | params dtype | order=1 (s) | order=2 | mode='forward' |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float64, torch.float32):
        for name, params, loss in torch_models(dtype, 0):
            first = _seconds(loss, params)
            second = _seconds(loss, params, order=2)
            forward = _seconds(loss, params, mode="forward")
            print(
                f"| {name} | {dtype} | {first:.3f} | {second / first:.2f}x | "
                f"{forward / first:.2f}x |"
            )


def main() -> None:
    print("## Noise: |n - a| of H v on correct models, in a-priori units\n")
    print("| model | params dtype | evaluated in | max units | 99th pct units |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float64, torch.float32):
        rows: dict[str, list[tuple[float, float, str]]] = {}
        for seed in range(3):
            for name, params, loss in torch_models(dtype, seed):
                rows.setdefault(name, []).append(units(params, loss, seed))
        for name, found in rows.items():
            worst = max(f[0] for f in found)
            p99 = max(f[1] for f in found)
            print(f"| {name} | {dtype} | {found[0][2]} | {worst:.2g} | {p99:.2g} |")
    cost()


if __name__ == "__main__":
    main()
