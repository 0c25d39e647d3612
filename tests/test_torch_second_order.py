"""``order=2`` (double backward) and ``mode="forward"`` (forward AD) through the PyTorch adapter.

Planted bugs are real ones: a custom Function whose backward is right but computes its factor
from a detached intermediate (double backward loses a term; torch's gradcheck passes it), and
a Function whose ``jvp`` rule is off by 1%.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import gradguard as gg
from gradguard.errors import GradientError, SettingsError
from gradguard.results import Status


class _Cube(torch.autograd.Function):
    """x**3. ``detach``: the backward's 3x**2 is built from ``x.detach()`` (right values,
    invisible to double backward)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, detach: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        ctx.detach = detach
        return x**3

    @staticmethod
    def jvp(ctx: Any, tx: torch.Tensor, _: Any) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 3 * x**2 * tx

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        if ctx.detach:
            x = x.detach()
        return g * 3 * x**2, None


class _Square(torch.autograd.Function):
    """x * x with a forward-mode rule; ``error`` scales the JVP by (1 + error)."""

    @staticmethod
    def forward(x: torch.Tensor, error: float) -> torch.Tensor:
        return x * x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, error = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        ctx.error = error

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return 2 * x * g, None

    @staticmethod
    def jvp(ctx: Any, tx: torch.Tensor, _: Any) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return (2.0 + 2.0 * ctx.error) * x * tx


class _Net(torch.nn.Module):
    def __init__(self, dtype: torch.dtype, detach: bool = False, jvp_error: float = 0.0):
        super().__init__()
        torch.manual_seed(1)
        self.l1 = torch.nn.Linear(4, 6).to(dtype)
        self.l2 = torch.nn.Linear(6, 1).to(dtype)
        self.detach = detach
        self.jvp_error = jvp_error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _Cube.apply(torch.tanh(self.l1(x)), self.detach)
        return self.l2(_Square.apply(h, self.jvp_error))


X = torch.randn(12, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = torch.randn(12, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _loss(m: _Net) -> torch.Tensor:
    dtype = m.l1.weight.dtype
    return F.mse_loss(m(X.to(dtype)), Y.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_detached_double_backward_is_caught_and_localized(dtype: torch.dtype) -> None:
    """The first-order check passes the buggy Function; order=2 fails the tensors before it
    (l1), names the wrong mixed blocks, and passes those after it (l2); float32 via the
    float64 shadow."""
    model = _Net(dtype, detach=True)
    assert gg.check(_loss, model, seed=0).passed
    report = gg.check(_loss, model, order=2, seed=0)
    assert set(report.failed) == {"l1.weight", "l1.bias"}
    assert report["l2.weight"].status is Status.PASS
    assert report["l1.weight"].worst_index is not None
    assert "H[l1.weight, l1.weight]" in report["l1.weight"].hint


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_correct_double_backward_passes(dtype: torch.dtype) -> None:
    """The twin without the detach passes order=2 on every tensor, and the model is unchanged."""
    model = _Net(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = gg.check(_loss, model, order=2, seed=0)
    assert report.passed, report
    assert report.notes["order"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_order2_on_a_float32_tensor_dict_in_place() -> None:
    """Tensors (no shadow) are checked in float32 in place: the twin passes, the bug fails."""
    g = torch.Generator().manual_seed(3)
    params = {"a": torch.randn(5, generator=g), "b": torch.randn(5, generator=g)}

    def loss(detach: bool) -> Any:
        return lambda p: (_Cube.apply(torch.sin(p["a"]) * p["b"], detach) ** 2).sum()

    assert gg.check(loss(False), params, order=2, seed=0).passed
    report = gg.check(loss(True), params, order=2, seed=0)
    assert set(report.failed) == {"a", "b"}
    assert report.dtype == "float32"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_wrong_jvp_rule_is_caught_in_forward_mode(dtype: torch.dtype) -> None:
    """A 1% wrong jvp staticmethod fails the tensors it feeds; the reverse check cannot see it."""
    model = _Net(dtype, jvp_error=0.01)
    assert gg.check(_loss, model, seed=0).passed
    report = gg.check(_loss, model, mode="forward", seed=0)
    assert set(report.failed) == {"l1.weight", "l1.bias"}
    assert report["l2.bias"].passed
    assert "forward" in str(report.notes["mode"])


def test_correct_jvp_rule_passes_forward_mode_on_a_tensor_dict() -> None:
    """The right rule passes, through a dict of tensors (no module)."""
    g = torch.Generator().manual_seed(4)
    params = {"a": torch.randn(6, dtype=torch.float64, generator=g)}
    report = gg.check(lambda p: _Square.apply(torch.sin(p["a"]), 0.0).sum(), params, mode="forward")
    assert report.passed
    bad = gg.check(lambda p: _Square.apply(torch.sin(p["a"]), 0.01).sum(), params, mode="forward")
    assert bad.failed == ("a",)


def test_a_function_without_jvp_is_a_clear_error_in_forward_mode() -> None:
    """Forward mode through a custom Function with no jvp rule names the fix."""

    class NoJvp(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            return g * 2

    params = {"a": torch.ones(3, dtype=torch.float64)}
    with pytest.raises(GradientError, match="jvp"):
        gg.check(lambda p: NoJvp.apply(p["a"]).sum(), params, mode="forward")


def test_order2_refuses_a_given_gradient() -> None:
    """A gradient function cannot be differentiated: a SettingsError saying to leave it unset."""
    model = _Net(torch.float64)
    with pytest.raises(SettingsError, match="leave grad unset"):
        gg.check(_loss, model, lambda m: {}, order=2)
