"""A zoo of small PyTorch models: correct ones, and custom autograd Functions with planted bugs.

Every model comes as a :class:`Case` whose ``build()`` returns a fresh model (in train mode:
Dropout and BatchNorm active) and its ``loss(model)``, with data fixed per case.
``Case.corrupted`` names exactly the parameters whose gradient the planted bug changes.

The bugs:

* ``scale_0.1pct``: a custom linear Function whose weight gradient is 1.001 times the truth;
  it corrupts that layer's weight only.
* ``missing_term``: a custom residual block ``y = x + tanh(x W^T + b)`` whose backward drops the
  identity path from ``dL/dx``; the block's own ``W`` and ``b`` get the right gradient, every
  parameter *upstream* of it gets a wrong one.
* ``detached_branch``: ``head(body(x) + branch(x).detach())``; autograd gives ``branch`` no
  gradient at all, while the loss depends on it.

Building a case never touches the global RNG (initialization runs under ``fork_rng``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Case", "LinearFn", "ResidualTanhFn", "all_cases"]

Loss = Callable[[nn.Module], torch.Tensor]


class LinearFn(torch.autograd.Function):
    """``y = x W^T + b``; ``weight_scale != 1`` plants a scale error in the weight gradient."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_scale: float
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.weight_scale = weight_scale
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        return g @ weight, ctx.weight_scale * (g.T @ x), g.sum(0), None


class ResidualTanhFn(torch.autograd.Function):
    """``y = x + tanh(x W^T + b)``; ``identity=False`` drops the identity path from dL/dx."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, identity: bool
    ) -> torch.Tensor:
        t = torch.tanh(x @ weight.T + bias)
        ctx.save_for_backward(x, weight, t)
        ctx.identity = identity
        return x + t

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight, t = ctx.saved_tensors
        dz = g * (1.0 - t * t)
        dx = dz @ weight
        if ctx.identity:
            dx = dx + g
        return dx, dz.T @ x, dz.sum(0), None


class CustomLinear(nn.Module):
    def __init__(self, n_in: int, n_out: int, weight_scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(n_out))
        self.weight_scale = weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = LinearFn.apply(x, self.weight, self.bias, self.weight_scale)
        return out


class ResidualTanh(nn.Module):
    def __init__(self, width: int, identity: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, width) / width**0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(width))
        self.identity = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = ResidualTanhFn.apply(x, self.weight, self.bias, self.identity)
        return out


class CustomMlp(nn.Module):
    """CustomLinear -> ResidualTanh -> CustomLinear, all three custom Functions."""

    def __init__(self, weight_scale: float = 1.0, identity: bool = True) -> None:
        super().__init__()
        self.inp = CustomLinear(6, 8)
        self.block = ResidualTanh(8, identity=identity)
        self.out = CustomLinear(8, 3, weight_scale=weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.inp(x)))  # type: ignore[no-any-return]


class DetachedBranch(nn.Module):
    """``head(tanh(body(x)) + tanh(branch(x)).detach())``: the branch gets no gradient."""

    def __init__(self, detach: bool = True) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.branch = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)
        self.detach = detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = torch.tanh(self.branch(x))
        if self.detach:
            side = side.detach()
        return self.head(torch.tanh(self.body(x)) + side)  # type: ignore[no-any-return]


class ConvNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> Dropout -> Linear (left in train mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self.bn(self.conv(x))))
        return self.fc(h.flatten(1))  # type: ignore[no-any-return]


class Recurrent(nn.Module):
    """A GRU or LSTM over a short sequence, then a linear head on the last output."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        kind = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = kind(5, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class Case:
    """One model to check: ``build()`` gives a fresh model and its loss."""

    name: str
    build: Callable[[], tuple[nn.Module, Loss]] = dataclasses.field(repr=False, compare=False)
    corrupted: frozenset[str]
    dtype: torch.dtype
    bug: str | None


def _case(
    name: str,
    make: Callable[[], nn.Module],
    data: Callable[[torch.Generator, torch.dtype], Loss],
    dtype: torch.dtype,
    corrupted: set[str] | None = None,
    bug: str | None = None,
    seed: int = 0,
) -> Case:
    def build() -> tuple[nn.Module, Loss]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = make().to(dtype).train()
        generator = torch.Generator().manual_seed(seed + 1)
        return model, data(generator, dtype)

    suffix = "64" if dtype == torch.float64 else "32"
    return Case(f"{name}_{suffix}", build, frozenset(corrupted or ()), dtype, bug)


def _regression(
    n_in: int, n_out: int, batch: int = 8
) -> Callable[[torch.Generator, torch.dtype], Loss]:
    def data(generator: torch.Generator, dtype: torch.dtype) -> Loss:
        x = torch.randn(batch, n_in, generator=generator, dtype=dtype)
        y = torch.randn(batch, n_out, generator=generator, dtype=dtype)
        return lambda m: F.mse_loss(m(x), y)

    return data


def _images(generator: torch.Generator, dtype: torch.dtype) -> Loss:
    x = torch.randn(6, 3, 6, 6, generator=generator, dtype=dtype)
    labels = torch.randint(0, 3, (6,), generator=generator)
    return lambda m: F.cross_entropy(m(x), labels)


def _sequences(generator: torch.Generator, dtype: torch.dtype) -> Loss:
    x = torch.randn(4, 6, 5, generator=generator, dtype=dtype)
    y = torch.randn(4, 2, generator=generator, dtype=dtype)
    return lambda m: F.mse_loss(m(x), y)


def correct_cases() -> list[Case]:
    """Correct models in float64 and float32 (train mode: Dropout, BatchNorm)."""
    cases = []
    for dtype in (torch.float64, torch.float32):
        cases += [
            _case("custom_mlp", CustomMlp, _regression(6, 3), dtype),
            _case("conv_bn_dropout", ConvNet, _images, dtype),
            _case("gru", lambda: Recurrent("gru"), _sequences, dtype),
            _case("lstm", lambda: Recurrent("lstm"), _sequences, dtype),
            _case("branch", lambda: DetachedBranch(detach=False), _regression(6, 3), dtype),
        ]
    return cases


def bug_cases() -> list[Case]:
    """Planted bugs, each with the exact set of parameters it corrupts."""
    cases = []
    for dtype in (torch.float64, torch.float32):
        cases += [
            _case(
                "scale_0.1pct",
                lambda: CustomMlp(weight_scale=1.001),
                _regression(6, 3),
                dtype,
                {"out.weight"},
                "scale_0.1pct",
            ),
            _case(
                "missing_term",
                lambda: CustomMlp(identity=False),
                _regression(6, 3),
                dtype,
                {"inp.weight", "inp.bias"},
                "missing_term",
            ),
            _case(
                "detached_branch",
                DetachedBranch,
                _regression(6, 3),
                dtype,
                {"branch.weight", "branch.bias"},
                "detached_branch",
            ),
        ]
    return cases


def all_cases() -> list[Case]:
    return correct_cases() + bug_cases()
