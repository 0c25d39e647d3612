"""Small models for the sharded (FSDP2, tensor parallel) checks, and how to shard them.

Every layer is a :class:`FnLinear`: an ``nn.Linear`` (so ``parallelize_module`` and
``fully_shard`` accept it) whose forward is a custom autograd Function. A planted bug doubles
the weight gradient in one output row (``bad_row``): a sparse, indexing-like bug that only the
rank owning that row's shard holds, and that bisection must localize.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FnLinear", "RowBugLinearFn", "build", "data", "loss_fn"]


class RowBugLinearFn(torch.autograd.Function):
    """``y = x W^T + b``; ``bad_row >= 0`` doubles row ``bad_row`` of the weight gradient.

    Written in plain tensor ops, so it runs on full tensors inside an FSDP2 layer and on
    DTensors inside a tensor-parallel one (DTensor dispatches each op to the shards).
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bad_row: int
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.bad_row = bad_row
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        grad_w = g.T @ x
        if ctx.bad_row >= 0:
            rows = torch.ones(weight.shape[0], 1, dtype=g.dtype)
            rows[ctx.bad_row] = 2.0
            if type(grad_w) is not torch.Tensor:  # a DTensor: the factor is replicated
                from torch.distributed.tensor import Replicate, distribute_tensor

                rows = distribute_tensor(
                    rows, grad_w.device_mesh, [Replicate()] * grad_w.device_mesh.ndim
                )
            grad_w = grad_w * rows
        return g @ weight, grad_w, g.sum(0), None


class FnLinear(nn.Linear):
    """A linear layer computed by :class:`RowBugLinearFn` (``bad_row=-1``: correct)."""

    def __init__(self, n_in: int, n_out: int, bad_row: int = -1) -> None:
        super().__init__(n_in, n_out)
        self.bad_row = bad_row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RowBugLinearFn.apply(x, self.weight, self.bias, self.bad_row)  # type: ignore[no-any-return]


def build(bug_in: str | None, dtype: torch.dtype = torch.float64, bad_row: int = 6) -> nn.Module:
    """``0 -> tanh -> 2 -> tanh -> 4``, 6 -> 8 -> 8 -> 3, the same weights on every rank.

    ``bug_in`` names the layer (``"0"``, ``"2"``, ``"4"``) whose Function gets the row bug.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sizes = [(6, 8), (8, 8), (8, 3)]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(sizes):
            bug = bad_row if bug_in == str(2 * i) else -1
            layers.append(FnLinear(n_in, n_out, bug))
            if i < len(sizes) - 1:
                layers.append(nn.Tanh())
        return nn.Sequential(*layers).to(dtype)


def data(dtype: torch.dtype = torch.float64, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (the same on every rank unless ``rank`` differs)."""
    generator = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(16, 6, generator=generator, dtype=dtype)
    y = torch.randn(16, 3, generator=generator, dtype=dtype)
    return x, y


def loss_fn(x: torch.Tensor, y: torch.Tensor) -> Any:
    """``loss(model)`` on one batch."""
    return lambda m: F.mse_loss(m(x), y)
