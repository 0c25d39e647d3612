"""Mixed precision and torch.compile: the gradient under test is the one training computes.

bfloat16 / float16 parameters and losses under ``torch.autocast`` are checked with the
low-precision native gradient as the analytic side and float64 finite differences of an
autocast-free shadow as the numeric side; a ``torch.compile`` d model's compiled backward is
checked against eager float64 finite differences.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd  # the documented way to a custom backend

import gradguard as gg
from gradguard_torch._compat import compile_counts


class _Tanh(torch.autograd.Function):
    """tanh with a hand-written backward, scaled by ``factor`` (1.05: a 5% bug)."""

    factor = 1.0
    only_compiled = False

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        d = g * (1 - torch.tanh(x) ** 2)
        buggy = not _Tanh.only_compiled or torch.compiler.is_compiling()
        return d * _Tanh.factor if buggy else d


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 32)
        self.second = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = _Tanh.apply(self.first(x))  # type: ignore[no-untyped-call]
        out: torch.Tensor = self.second(hidden)
        return out


@pytest.fixture(autouse=True)
def _correct_backward() -> object:
    yield
    _Tanh.factor, _Tanh.only_compiled = 1.0, False


def _autocast_loss(x: torch.Tensor, y: torch.Tensor) -> Callable[[nn.Module], torch.Tensor]:
    def loss(model: nn.Module) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        return F.mse_loss(out.float(), y)

    return loss


@pytest.mark.parametrize("pure", [False, True], ids=["autocast", "bfloat16-parameters"])
def test_a_correct_bfloat16_transformer_block_raises_no_false_alarm(pure: bool) -> None:
    """A transformer block in bfloat16 (under autocast, or with bfloat16 parameters: its
    LayerNorm weight gradient is 15-20% off the exact one) has no failing tensor: each
    tensor's measured spread widens its allowance. A tensor whose spread hides the tolerance
    is inconclusive, never passed; most pass. The report says how the native pass ran."""
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    x = torch.randn(2, 6, 16)
    y = torch.linspace(-1, 1, x.numel()).view(x.shape)
    if pure:
        block, x = block.bfloat16(), x.bfloat16()
        loss = lambda m: F.mse_loss(m(x).float(), y)  # noqa: E731
    else:
        loss = _autocast_loss(x, y)
    report = gg.check(loss, block, seed=0)
    assert not [p.name for p in report.params if p.status is gg.Status.FAIL], report
    assert sum(p.status is gg.Status.PASS for p in report.params) >= 4
    assert report.notes["gradient_dtype"] == "bfloat16"
    if not pure:
        assert "torch.autocast(torch.bfloat16)" in str(report.notes["gradient"])
        assert "shadow evaluates without it" in str(report.notes["gradient"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_relu_mlp_under_autocast_raises_no_false_alarm(seed: int) -> None:
    """A ReLU MLP under bfloat16 autocast (its output bias false-alarmed on seed 0 before the
    measured spread: bfloat16 pre-activations flip ReLU masks) has no failing tensor."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    x, y = torch.randn(16, 16), torch.randn(16, 1)
    report = gg.check(_autocast_loss(x, y), net, seed=seed)
    assert not [p.name for p in report.params if p.status is gg.Status.FAIL], report


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_five_percent_backward_bug_under_autocast_is_caught_and_localized(seed: int) -> None:
    """A 5% error in one custom Function's backward fails the tensors before it, not after."""
    torch.manual_seed(seed)
    net, x, y = _Net(), torch.randn(16, 16), torch.randn(16, 1)
    assert gg.check(_autocast_loss(x, y), net, seed=seed).passed
    _Tanh.factor = 1.05
    report = gg.check(_autocast_loss(x, y), net, seed=seed)
    status = {p.name: p.status for p in report.params}
    assert not report.passed
    assert status["first.weight"] is gg.Status.FAIL or status["first.bias"] is gg.Status.FAIL
    assert status["second.weight"] is gg.Status.PASS and status["second.bias"] is gg.Status.PASS


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_parameters_are_checked_in_their_own_dtype(dtype: torch.dtype) -> None:
    """bfloat16 and float16 modules are no longer refused: a correct one passes with its own
    gradient dtype, a 5% backward bug fails, and the module is left bit-identical."""
    torch.manual_seed(0)
    net = _Net().to(dtype)
    x, y = torch.randn(16, 16, dtype=dtype), torch.randn(16, 1)
    before = copy.deepcopy(net.state_dict())
    loss = lambda m: F.mse_loss(m(x).float(), y)  # noqa: E731
    report = gg.check(loss, net, seed=0)
    assert report.passed, report
    assert report.notes["gradient_dtype"] == str(dtype).removeprefix("torch.")
    _Tanh.factor = 1.05
    assert not gg.check(loss, net, seed=0).passed
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


class _Miscompile:
    """A compiler whose backward lowering of ``tanh`` is 5% off while ``on``: a bug that exists
    only in the compiled backward (eager autograd, and so the float64 shadow, is right)."""

    on = False

    @staticmethod
    def backward_compiler(gm: torch.fx.GraphModule, example_inputs: object) -> Callable[..., Any]:
        correct = copy.deepcopy(gm)
        for node in list(gm.graph.nodes):
            if node.target is torch.ops.aten.tanh_backward.default:
                with gm.graph.inserting_after(node):
                    wrong = gm.graph.call_function(torch.ops.aten.mul.Tensor, (node, 1.05))
                node.replace_all_uses_with(wrong, delete_user_cb=lambda u, w=wrong: u is not w)
        gm.recompile()

        def run(*args: Any) -> Any:
            return gm(*args) if _Miscompile.on else correct(*args)

        return make_boxed_func(run)


def test_a_bug_only_in_the_compiled_backward_is_caught() -> None:
    """gg.check on torch.compile(model) takes the compiled backward: a 5% error that only the
    compiled backward has (a miscompiled tanh) fails the tensors before it, the same compiled
    model passes without it, a check adds a few graphs (3 measured), leaves the model
    unchanged, and the next training step compiles nothing."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    x, y = torch.randn(16, 16), torch.randn(16, 1)
    backend = aot_autograd(fw_compiler=lambda gm, _: gm, bw_compiler=_Miscompile.backward_compiler)
    compiled = torch.compile(net, backend=backend)
    loss = lambda m: F.mse_loss(m(x), y)  # noqa: E731
    loss(compiled).backward()  # type: ignore[no-untyped-call]  # a training step: the first compile
    before = copy.deepcopy(net.state_dict())
    graphs = compile_counts()["unique_graphs"]
    assert gg.check(loss, compiled, seed=0).passed
    _Miscompile.on = True
    try:
        report = gg.check(loss, compiled, seed=0)
    finally:
        _Miscompile.on = False
    assert compile_counts()["unique_graphs"] - graphs <= 3
    assert "compiled backward" in str(report.notes["gradient"])
    status = {p.name: p.status for p in report.params}
    assert status["0.weight"] is gg.Status.FAIL and status["0.bias"] is gg.Status.FAIL
    assert status["2.weight"] is gg.Status.PASS and status["2.bias"] is gg.Status.PASS
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    after_check = compile_counts()["unique_graphs"]
    loss(compiled).backward()  # type: ignore[no-untyped-call]
    assert compile_counts()["unique_graphs"] == after_check
