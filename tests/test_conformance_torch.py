"""The PyTorch adapter through the conformance suite (gradguard.testing): a float64 model
evaluated in place, and a float32 one evaluated in its float64 shadow."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradguard.testing import AdapterConformance, ConformanceCase

X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _make(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


def _loss(m: nn.Module) -> torch.Tensor:
    dtype = next(m.parameters()).dtype
    return F.mse_loss(m(X.to(dtype)), Y.to(dtype))


def _grads(m: nn.Module) -> dict[str, torch.Tensor]:
    names, tensors = zip(*m.named_parameters(), strict=True)
    with torch.enable_grad():
        return dict(zip(names, torch.autograd.grad(_loss(m), tensors), strict=True))


def _replaced(m: nn.Module, value: Any) -> dict[str, torch.Tensor]:
    return {**_grads(m), "2.bias": value}


def _snapshot(m: nn.Module) -> list[Any]:
    state = [t.detach().numpy().copy() for t in m.state_dict().values()]
    return [*state, torch.get_rng_state().numpy().copy()]


def _shared() -> list[torch.Tensor]:
    w = torch.ones(3, dtype=torch.float64)
    return [w, w]


def _case(dtype: torch.dtype) -> ConformanceCase:
    return ConformanceCase(
        adapter="torch",
        make=lambda: _make(dtype),
        loss=_loss,
        grad=None,
        wrong_grad=lambda m: _replaced(m, 2 * _grads(m)["2.bias"]),
        wrong_tensor="2.bias",
        snapshot=_snapshot,
        vector_loss=lambda m: m(X.to(next(m.parameters()).dtype)),
        misshapen_grad=lambda m: _replaced(m, torch.zeros(5)),
        nan_grad=lambda m: _replaced(m, torch.full((2,), np.nan)),
        shared=_shared,
    )


class TestTorchFloat64Conformance(AdapterConformance):
    case = _case(torch.float64)


class TestTorchFloat32Conformance(AdapterConformance):
    case = _case(torch.float32)
