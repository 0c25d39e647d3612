"""The PyTorch adapter: what it claims, how it evaluates, what it leaves behind, what it refuses.

Real torch throughout (CPU); the CUDA test skips cleanly without a GPU.
"""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import nn

import gradguard as gg
from gradguard import errors
from gradguard.engine import Settings, run_check
from gradguard_torch import (
    _tf32,
    gradguard_adapter_claim,
    gradguard_distributed_rank,
    holds_torch,
)
from gradguard_torch._adapter import TorchAdapter, TorchView
from gradguard_torch._precision import Float64Mode

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The models here are tiny: one intra-op thread is as fast, and keeps OpenMP from spinning
# against whatever else runs on the machine's other core (seen: 100x slower evaluations).
torch.set_num_threads(1)


def state_bytes(model: nn.Module) -> dict[str, bytes]:
    """Every parameter and buffer, as raw bytes (bit-exact comparison)."""
    return {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()}


def grads_of(model: nn.Module) -> list[Any]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """A small float32 regression batch, drawn without touching the global RNG."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=generator), torch.randn(8, 2, generator=generator)


def mlp(dtype: torch.dtype = torch.float32, dropout: float = 0.0) -> nn.Module:
    """A fresh 5 -> 6 -> 2 tanh MLP (initialized under a fixed seed, global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Dropout(dropout), nn.Linear(6, 2)).to(
            dtype
        )


# -- claiming ----------------------------------------------------------------------------------


def test_importing_the_plugin_does_not_import_torch() -> None:
    """`import gradguard_torch` (and asking it to claim NumPy params) loads no torch."""
    code = (
        "import sys, numpy as np, gradguard_torch;"
        "assert gradguard_torch.gradguard_adapter_claim(params=np.ones(3)) is None;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_claims_modules_tensors_and_containers_of_tensors() -> None:
    """Modules, tensors, Parameters, and dicts/lists holding tensors are claimed; NumPy is not."""
    t = torch.zeros(2)
    for params in (nn.Linear(2, 2), t, nn.Parameter(t), [t], {"a": {"b": (t,)}}, [t, np.ones(2)]):
        assert isinstance(gradguard_adapter_claim(params=params), TorchAdapter)
    for params in (np.ones(2), {"a": np.ones(2)}, [], 1.0):
        assert gradguard_adapter_claim(params=params) is None
    assert holds_torch({"x": [1.0, {"y": t}]})
    assert gg.find_adapter(nn.Linear(2, 2)).name == "torch"


def test_module_parameters_are_named_and_tied_ones_counted_once(data: Any) -> None:
    """Names come from named_parameters(); a tied weight is one tensor; frozen ones are skipped."""
    x, _ = data
    model = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 5), nn.Linear(5, 5)).double()
    model[2].weight = model[0].weight  # tied
    model[3].bias.requires_grad_(False)  # frozen
    report = gg.check(lambda m: m(x.double()).square().mean(), model, seed=0)
    assert [p.name for p in report.params] == ["0.weight", "0.bias", "2.bias", "3.weight"]
    assert report.passed, str(report)


def test_data_parallel_is_unwrapped(data: Any) -> None:
    """A DataParallel-wrapped module is checked through its inner module, names unprefixed."""
    x, y = data
    wrapped = nn.DataParallel(mlp(torch.float64))
    report = gg.check(lambda m: F.mse_loss(m(x.double()), y.double()), wrapped, seed=0)
    assert report.params[0].name == "0.weight"
    assert report.passed


def test_distributed_data_parallel_is_unwrapped(tmp_path: pathlib.Path, data: Any) -> None:
    """A DDP-wrapped module (one-process gloo group) is checked through its inner module, and
    the plugin reports the process's rank only while a process group is initialized."""
    import torch.distributed as dist

    x, y = data
    hook = gg.get_plugin_manager().hook.gradguard_distributed_rank
    assert hook(params=mlp()) is None
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(mlp(torch.float64))
        before = state_bytes(wrapped.module)
        report = gg.check(lambda m: F.mse_loss(m(x.double()), y.double()), wrapped, seed=0)
        assert hook(params=wrapped) == 0
        assert gradguard_distributed_rank(params=np.ones(2)) is None
    finally:
        dist.destroy_process_group()
    assert hook(params=wrapped) is None
    assert [p.name for p in report.params][:2] == ["0.weight", "0.bias"]
    assert report.passed
    assert state_bytes(wrapped.module) == before


def test_tensor_containers_are_named_like_numpy_params() -> None:
    """Dict keys and list positions join with '.'; a bare tensor is 'params'; one tensor
    given twice is refused, as in every adapter (they would move together)."""
    a = torch.randn(3, dtype=torch.float64)
    b = torch.randn(2, 2, dtype=torch.float64)
    c = torch.randn(3, dtype=torch.float64)
    report = gg.check(lambda p: p["x"][0].sin().sum() + p["y"].cos().sum(), {"x": [a, c], "y": b})
    assert [p.name for p in report.params] == ["x.0", "x.1", "y"]
    assert report.passed
    with pytest.raises(errors.InvalidParamsError, match=r"'x\.0' and 'x\.1' share memory"):
        gg.check(lambda p: p["x"][0].sum(), {"x": [a, a]})
    assert gg.check(lambda w: w.exp().sum(), a).params[0].name == "params"


# -- the analytic gradient --------------------------------------------------------------------


def test_autograd_gradient_leaves_grad_fields_alone(data: Any) -> None:
    """With no `grad`, autograd gives the gradient; existing .grad values stay as they were."""
    x, y = data
    model = mlp(torch.float64)
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)
    before = grads_of(model)
    report = gg.check(lambda m: F.mse_loss(m(x.double()), y.double()), model, seed=0)
    assert report.passed and report.gradient_calls == 1
    after = grads_of(model)
    assert torch.equal(after[0], before[0]) and all(g is None for g in after[1:])


def test_tensors_that_do_not_require_grad_are_differentiated_and_left_so() -> None:
    """A plain tensor gets its gradient from autograd; its requires_grad flag is put back."""
    w = torch.linspace(-1, 1, 6, dtype=torch.float64)
    report = gg.check(lambda w: (w.sin() * w).sum(), w, seed=0)
    assert report.passed
    assert not w.requires_grad and w.grad is None


def test_explicit_grad_callable_and_structure(data: Any) -> None:
    """`grad` may be a callable or the gradient itself: a dict by name or a list, for a
    module; the params' own structure for tensors. A wrong one fails where it is wrong."""
    x, y = data
    model = mlp(torch.float64)

    def loss(m: nn.Module) -> torch.Tensor:
        return F.mse_loss(m(x.double()), y.double())

    def grad(m: nn.Module) -> dict[str, torch.Tensor]:
        names = [n for n, _ in m.named_parameters()]
        values = torch.autograd.grad(loss(m), list(m.parameters()))
        return dict(zip(names, values, strict=True))

    by_name = grad(model)
    assert gg.check(loss, model, grad, seed=0).passed
    assert gg.check(loss, model, by_name, seed=0).passed
    assert gg.check(loss, model, list(by_name.values()), seed=0).passed
    doubled = {**by_name, "3.bias": 2 * by_name["3.bias"]}
    assert gg.check(loss, model, doubled, seed=0).failed == ("3.bias",)

    p = {"a": torch.randn(3, dtype=torch.float64), "b": [torch.randn(2, dtype=torch.float64)]}
    report = gg.check(
        lambda q: (q["a"] ** 2).sum() + q["b"][0].sum(),
        p,
        lambda q: {"a": 2 * q["a"], "b": [np.ones(2)]},
        seed=0,
    )
    assert report.passed


def test_explicit_float32_gradient_is_judged_at_float32_precision(data: Any) -> None:
    """A float32 gradient handed in for a float32 model cannot be held to float64 tolerances:
    the check is judged as float32 (steps and tolerance), and still passes."""
    x, y = data
    model = mlp(torch.float32)
    names = [n for n, _ in model.named_parameters()]
    values = torch.autograd.grad(F.mse_loss(model(x), y), list(model.parameters()))
    report = gg.check(lambda m: F.mse_loss(m(x), y), model, dict(zip(names, values, strict=True)))
    assert report.dtype == "float32" and report.passed, str(report)


def test_a_parameter_that_gets_no_gradient_counts_as_zero_and_fails(data: Any) -> None:
    """A parameter the loss uses through a detached path fails, named in the notes."""
    x, y = data
    model = mlp(torch.float64)

    def loss(m: nn.Module) -> torch.Tensor:
        h = torch.tanh(m[0](x.double())).detach()
        return F.mse_loss(m[3](h), y.double())

    report = gg.check(loss, model, seed=0)
    assert set(report.failed) == {"0.weight", "0.bias"}
    assert report.notes["no_gradient"] == "0.weight, 0.bias"
    assert "detached" in report["0.weight"].hint


# -- precision: the float64 shadow ------------------------------------------------------------


def test_float32_model_is_evaluated_in_a_float64_shadow_that_never_leaks(data: Any) -> None:
    """A float32 model is checked in float64 (loss dtype, tolerance), reported as float32
    tensors, and left without hooks, gradients or changed values."""
    x, y = data
    model = mlp(torch.float32)
    before = state_bytes(model)
    report = gg.check(lambda m: F.mse_loss(m(x), y), model, seed=0)
    assert report.passed
    # a float32 gradient, its round-off measured (gradguard.engine.spread): judged at 1e-4
    assert report.dtype == "float64" and report.tolerance == 1e-4
    assert report.notes["gradient_dtype"] == "float32"
    assert {p.dtype for p in report.params} == {"float32"}
    assert report.notes["evaluation"] == "float64 shadow copy"
    assert state_bytes(model) == before
    assert all(p.grad is None and p.dtype == torch.float32 for p in model.parameters())
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda out, y: F.mse_loss(out, y),
        lambda out, y: F.huber_loss(out, y),
        lambda out, y: F.binary_cross_entropy_with_logits(out, torch.sigmoid(y)),
        lambda out, y: F.binary_cross_entropy(torch.sigmoid(out), torch.sigmoid(y)),
        lambda out, y: F.cross_entropy(out, y.argmax(1), weight=torch.tensor([1.0, 2.0])),
        lambda out, y: (out @ y.T).square().mean(),
    ],
    ids=["mse", "huber", "bce_with_logits", "bce", "weighted_ce", "matmul"],
)
def test_shadow_lifts_the_losss_own_float32_tensors(data: Any, loss_fn: Callable[..., Any]) -> None:
    """Losses that mix the float64 output with float32 targets (which torch refuses, or
    silently computes in float32) are evaluated wholly in float64 in the shadow."""
    x, y = data
    report = gg.check(lambda m: loss_fn(m(x), y), mlp(torch.float32), seed=0)
    assert report.notes["evaluation"] == "float64 shadow copy"
    assert report.dtype == "float64" and report.passed, str(report)


def test_float64_mode_keeps_in_place_targets_and_lifts_requested_dtypes() -> None:
    """Inside the mode, a float32 tensor written in place is still written (not a copy),
    while new tensors, .float() and dtype=torch.float32 come out float64."""
    acc = torch.zeros(3)
    with Float64Mode():
        acc.add_(torch.ones(3, dtype=torch.float64))
        acc[0] = torch.tensor(5.0, dtype=torch.float64)
        made = [torch.zeros(2), torch.ones(2, dtype=torch.float32), torch.ones(2).float()]
        made.append(torch.randn(2, dtype=torch.float64).to(torch.float16))
        assert torch.get_default_dtype() == torch.float64
        assert acc.dtype == torch.float32  # metadata reads see the real dtype
    assert acc.tolist() == [5.0, 1.0, 1.0]
    assert all(t.dtype == torch.float64 for t in made)
    assert torch.get_default_dtype() == torch.float32


def test_shadow_falls_back_to_in_place_when_the_loss_ignores_the_module(data: Any) -> None:
    """A loss that uses a model from its closure cannot be shadowed: the check runs in place
    in float32, says so, and still judges correctly."""
    x, y = data
    model = mlp(torch.float32)
    before = state_bytes(model)
    report = gg.check(lambda _: F.mse_loss(model(x), y), model, seed=0)
    assert report.passed and report.dtype == "float32"
    assert report.notes["evaluation"].startswith("in place, float32 (no float64 shadow")
    assert state_bytes(model) == before


class _Locked(nn.Module):
    """A module holding a lock, which copy.deepcopy cannot copy."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 2)
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)  # type: ignore[no-any-return]


class _Float32Only(torch.autograd.Function):
    """A Function whose backward only exists for float32 (as some fused kernels do)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        if g.dtype != torch.float32:
            raise RuntimeError(f"float32 kernel only, got {g.dtype}")
        return g * 2.0


def test_shadow_falls_back_when_the_module_cannot_be_copied(data: Any) -> None:
    """A module deepcopy cannot copy switches the check to in-place evaluation with the
    reason in the notes; nothing is left changed."""
    x, y = data
    locked = _Locked()
    before = state_bytes(locked)
    report = gg.check(lambda m: F.mse_loss(m(x), y), locked, seed=0)
    assert report.passed and "could not be copied" in report.notes["evaluation"]
    assert state_bytes(locked) == before


def test_an_exception_in_the_shadow_surfaces_with_the_way_to_evaluate_in_place(data: Any) -> None:
    """A loss that raises in the float64 shadow (a float32-only backward) is not silently
    checked some other way: the user's own exception reaches the caller, with a note naming
    the shadow and how to evaluate in place; nothing is left changed."""
    x, y = data
    model = mlp(torch.float32)
    before = state_bytes(model)
    with pytest.raises(RuntimeError, match="float32 kernel only") as caught:
        gg.check(lambda m: F.mse_loss(_Float32Only.apply(m(x)), y), model, seed=0)
    assert "float64 shadow copy" in "".join(caught.value.__notes__)
    assert "TorchAdapter(shadow=False)" in "".join(caught.value.__notes__)
    assert state_bytes(model) == before
    assert torch.get_default_dtype() == torch.float32


def test_a_plugin_can_ask_for_in_place_evaluation(data: Any) -> None:
    """The recipe in docs/pytorch.md: a tryfirst plugin returning TorchAdapter(shadow=False)
    makes float32 modules evaluate in place, judged in float32."""
    import gradguard_torch

    class InPlace:
        @gg.hookimpl(tryfirst=True)
        def gradguard_adapter_claim(self, params: object) -> Any:
            if isinstance(params, nn.Module):
                return gradguard_torch.TorchAdapter(shadow=False)
            return None

    x, y = data
    gg.register(InPlace(), name="torch-in-place")
    try:
        report = gg.check(lambda m: F.mse_loss(m(x), y), mlp(torch.float32), seed=0)
    finally:
        gg.unregister("torch-in-place")
    assert report.notes["evaluation"] == "in place" and report.dtype == "float32"


def test_sparse_gradients_are_densified() -> None:
    """An nn.Embedding(sparse=True) gets a sparse gradient from autograd; it is checked."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        embedding = nn.Embedding(10, 3, sparse=True).double()
    report = gg.check(lambda m: m(torch.tensor([1, 2, 2, 5])).tanh().sum(), embedding, seed=0)
    assert report.passed, str(report)


# -- state: restoration and repeatability ------------------------------------------------------


def test_dropout_in_train_mode_is_repeatable_and_the_rng_untouched(data: Any) -> None:
    """Dropout left in train mode: every evaluation draws the same mask, so the check passes
    (not 'nondeterministic'), and the global RNG is where it was."""
    x, y = data
    for dtype in (torch.float64, torch.float32):
        model = mlp(dtype, dropout=0.5).train()
        rng = torch.get_rng_state()
        report = gg.check(lambda m, d=dtype: F.mse_loss(m(x.to(d)), y.to(d)), model, seed=0)
        assert report.passed, str(report)
        assert torch.equal(torch.get_rng_state(), rng)


def test_batchnorm_statistics_are_replayed_and_restored(data: Any) -> None:
    """In train mode BatchNorm updates its running statistics on every forward pass: after a
    check of a float64 model (evaluated in place) they are bit-identical."""
    x, y = data
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double().train()
    model[1].momentum = None  # cumulative average: every forward changes the statistics
    before = state_bytes(model)
    report = gg.check(lambda m: F.mse_loss(m(x.double()), y.double()), model, seed=0)
    assert report.passed, str(report)
    assert state_bytes(model) == before


def test_grad_mode_is_left_as_the_caller_had_it(data: Any) -> None:
    """A check works under torch.no_grad() too; either way the caller's grad mode is kept."""
    x, y = data
    for dtype in (torch.float64, torch.float32):
        model = mlp(dtype)

        def loss(m: nn.Module, d: torch.dtype = dtype) -> torch.Tensor:
            return F.mse_loss(m(x.to(d)), y.to(d))

        with torch.no_grad():
            assert gg.check(loss, model, seed=0).passed
            assert not torch.is_grad_enabled()
        assert gg.check(loss, model, seed=0).passed
        assert torch.is_grad_enabled()


def test_a_graph_built_before_the_check_can_still_be_backpropagated(data: Any) -> None:
    """In-place perturbations bypass autograd's version counter and are undone exactly, so
    a loss computed before the check still backpropagates, to the same gradient."""
    x, y = data
    model = mlp(torch.float64)
    pending = F.mse_loss(model(x.double()), y.double())
    expected = torch.autograd.grad(
        F.mse_loss(model(x.double()), y.double()), list(model.parameters())
    )
    gg.check(lambda m: F.mse_loss(m(x.double()), y.double()), model, seed=0)
    pending.backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), expected, strict=True))


def test_a_user_grad_function_that_calls_backward_leaves_grad_fields_as_they_were(
    data: Any,
) -> None:
    """A `grad` callable that runs loss.backward() on the model (in place, float64) does not
    leave its accumulated .grad behind."""
    x, y = data
    model = mlp(torch.float64)
    model[3].bias.grad = torch.ones(2, dtype=torch.float64)  # left over from training

    def grad(m: nn.Module) -> list[torch.Tensor]:
        m.zero_grad(set_to_none=True)
        F.mse_loss(m(x.double()), y.double()).backward()
        return [p.grad.clone() for p in m.parameters() if p.grad is not None]

    before = grads_of(model)
    assert gg.check(lambda m: F.mse_loss(m(x.double()), y.double()), model, grad).passed
    after = grads_of(model)
    assert all(a is None for a in after[:3]) and torch.equal(after[3], before[3])


TREE_DTYPES = (torch.float16, torch.float32, torch.float64)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """A float tensor: contiguous, transposed, sliced or channels-last, any float dtype."""
    dtype = draw(st.sampled_from(TREE_DTYPES))
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    seed = draw(st.integers(0, 2**16))
    base = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)).to(dtype)
    kind = draw(st.sampled_from(["plain", "transposed", "sliced", "channels_last"]))
    if kind == "transposed" and base.dim() >= 2:
        order = tuple(reversed(range(base.dim())))
        return base.permute(order).contiguous().permute(order)  # same values, other strides
    if kind == "sliced" and base.dim() >= 1:
        return torch.cat([base, base]).view(2, *base.shape)[1]
    if kind == "channels_last":
        image = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(seed))
        return image.to(dtype).contiguous(memory_format=torch.channels_last)
    return base


@settings(max_examples=40, deadline=None)
@given(leaves=st.lists(tensors(), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_writes_round_trip_and_leaving_restores_every_bit(
    leaves: list[torch.Tensor], seed: int
) -> None:
    """Whatever is written through the view, reads back as stored (rounded to the dtype);
    reset puts originals back; leaving the view restores every tensor bit for bit."""
    params = [leaf.clone() if i % 2 else leaf for i, leaf in enumerate(leaves)]
    params = list({id(p): p for p in params}.values())
    before = [p.numpy().tobytes() for p in params]
    strides = [p.stride() for p in params]
    rng = np.random.default_rng(seed)
    with TorchView(params, lambda p: p[0].sum(), None) as view:
        for s, segment in enumerate(view.layout):
            original = view.original(s)
            assert np.array_equal(original, params[s].double().reshape(-1).numpy())
            values = rng.uniform(-4, 4, segment.size)
            stored = view.write(s, None, values)
            assert np.array_equal(stored, values.astype(segment.dtype).astype(np.float64))
            assert np.array_equal(params[s].double().reshape(-1).numpy(), stored)
            index = rng.choice(segment.size, size=rng.integers(1, segment.size + 1), replace=False)
            view.reset(s, None)
            view.write(s, index.astype(np.intp), rng.uniform(-4, 4, index.size))
            view.reset(s, index.astype(np.intp))
            assert np.array_equal(params[s].double().reshape(-1).numpy(), original)
            view.write(s, index[:1].astype(np.intp), np.array([3.0]))
    assert [p.numpy().tobytes() for p in params] == before
    assert [p.stride() for p in params] == strides


# -- bad input ---------------------------------------------------------------------------------


def _refused(params: Any, loss: Callable[..., Any], error: type[Exception], *words: str) -> None:
    """The check raises `error`, a GradGuardError naming the problem; params are unchanged."""
    before = _leaf_bytes(params)
    with pytest.raises(error) as caught:
        gg.check(loss, params, seed=0)
    assert isinstance(caught.value, errors.GradGuardError)
    for word in words:
        assert word in str(caught.value), str(caught.value)
    assert _leaf_bytes(params) == before


def _leaf_bytes(params: Any) -> list[Any]:
    """The bytes of every tensor in params (a module's state_dict, or a container's leaves)."""
    if isinstance(params, nn.Module):
        values = params.state_dict().values()
        lazy = nn.parameter.UninitializedTensorMixin
        return [_leaf_bytes(v) for v in values if not (v.is_meta or isinstance(v, lazy))]
    if isinstance(params, dict):
        return [b for v in params.values() for b in _leaf_bytes(v)]
    if isinstance(params, list | tuple):
        return [b for v in params for b in _leaf_bytes(v)]
    if isinstance(params, torch.Tensor) and params.dtype != torch.bfloat16:
        return [params.detach().numpy().tobytes()]
    return [repr(params)]


def test_bad_params_are_refused_with_the_fix() -> None:
    """Non-floating, complex, non-leaf, overlapping, empty, frozen, lazy and
    mixed-device params get InvalidParamsError naming the tensor and the fix."""
    invalid = errors.InvalidParamsError
    _refused(torch.arange(3), lambda t: t.sum(), invalid, "non-floating", "int64", "double()")
    _refused(torch.ones(2, dtype=torch.complex64), lambda t: t.abs().sum(), invalid, "complex")
    w = torch.ones(3, requires_grad=True)
    _refused([w * 2], lambda p: p[0].sum(), invalid, "grad_fn", "leaf")
    base = torch.ones(4, dtype=torch.float64)
    _refused([base, base[1:]], lambda p: p[0].sum(), invalid, "share memory")
    _refused({}, lambda p: 0.0, invalid, "empty")
    _refused(
        [torch.ones(2), np.ones(2)], lambda p: p[0].sum(), invalid, "numpy", "not a torch tensor"
    )
    _refused([nn.Linear(2, 2)], lambda p: 0.0, invalid, "ModuleDict")
    frozen = nn.Linear(2, 2).requires_grad_(False)
    _refused(frozen, lambda m: m.weight.sum(), invalid, "requires grad", "requires_grad_(True)")
    _refused(nn.LazyLinear(2), lambda m: m.weight.sum(), invalid, "lazy", "forward pass")
    split = nn.Linear(2, 2)
    split.bias = nn.Parameter(torch.ones(2, device="meta"))
    _refused(split, lambda m: m.weight.sum(), invalid, "different devices", "model.to(device)")
    with torch.inference_mode():
        frozen_tensor = torch.ones(2)
    _refused(frozen_tensor, lambda t: t.sum(), invalid, "inference_mode")


def test_bad_losses_are_refused_and_params_left_unchanged(data: Any) -> None:
    """A non-scalar loss, a Python float with no grad, an integer loss, and a loss that does
    not depend on the params each get a LossError that says what to do."""
    x, y = data
    model = mlp(torch.float64)
    loss_error = errors.LossError
    _refused(model, lambda m: m(x.double()), loss_error, "shape (8, 2)", ".mean()")
    _refused(
        model,
        lambda m: F.mse_loss(m(x.double()), y.double()).item(),
        loss_error,
        "float",
        ".item()",
    )
    _refused(model, lambda m: torch.tensor(3), loss_error, "int64")
    # A list is never a loss, in any adapter (NumPy and TensorFlow refuse it the same way).
    _refused(model, lambda m: [F.mse_loss(m(x.double()), y.double())], loss_error, "a list")
    _refused(
        model,
        lambda m: y.double().sum() + 0 * m(x.double()).detach().sum(),
        loss_error,
        "does not depend",
    )
    w = torch.ones(3, dtype=torch.float64)
    _refused(w, lambda t: torch.ones(()), loss_error, "does not depend", "closure")


def test_bad_gradients_are_refused(data: Any) -> None:
    """A gradient of the wrong shape, structure or names, or a non-finite one, is refused."""
    x, y = data
    model = mlp(torch.float64)

    def loss(m: nn.Module) -> torch.Tensor:
        return F.mse_loss(m(x.double()), y.double())

    cases: list[tuple[Any, str]] = [
        ({"0.weight": torch.zeros(6, 5)}, "missing"),
        ([torch.zeros(1)] * 4, "shape (1,)"),
        ([torch.zeros(6, 5)], "list of 1 tensor(s)"),
        (torch.zeros(3), "give a dict keyed by those names"),
    ]
    for grad, words in cases:
        with pytest.raises(
            errors.GradientError, match=words.replace("(", r"\(").replace(")", r"\)")
        ):
            gg.check(loss, model, grad, seed=0)

    w = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(errors.GradientError, match="non-finite"):
        gg.check(lambda t: (t + 1).sum() + t.abs().sum(), w, lambda t: torch.full((3,), torch.inf))


# -- TF32 ---------------------------------------------------------------------------------------


def test_tf32_switch_turns_tf32_off_and_restores_the_default_state() -> None:
    """From the default state (cuDNN TF32 on, matmul TF32 off) a switch turns both off and
    restores every setting, legacy flags still readable afterwards."""
    before = _tf32.tf32_snapshot()
    switch = _tf32.Tf32Switch.off()
    assert switch.was_on == ("cudnn",)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    switch.restore()
    switch.restore()  # idempotent
    assert _tf32.tf32_snapshot() == before


TF32_SETUPS = {
    "matmul_flag": "torch.backends.cuda.matmul.allow_tf32 = True",
    "high": "torch.set_float32_matmul_precision('high')",
    "medium": "torch.set_float32_matmul_precision('medium')",
    "cudnn_off": "torch.backends.cudnn.allow_tf32 = False",
    "new_api_matmul": "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
    "new_api_conv_ieee": "torch.backends.cudnn.conv.fp32_precision = 'ieee'",
    "new_api_generic": "torch.backends.fp32_precision = 'tf32'",
    "mixed": "torch.set_float32_matmul_precision('medium'); "
    "torch.backends.cuda.matmul.allow_tf32 = False",
}


def test_tf32_switch_round_trips_every_way_of_setting_tf32() -> None:
    """Whichever API the user set TF32 with (legacy flags, matmul precision, fp32_precision),
    the switch turns it off and puts back the very same state, legacy readability included.
    Each starting state is set in a fresh process: the legacy/new API choice is sticky. The
    processes come from a forkserver (a clean interpreter with torch preloaded), never a fork
    of this one, which may hold JAX's or TensorFlow's threads."""
    import multiprocessing

    import tf32_child

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "gradguard_torch._tf32", "tf32_child"])
    children = {
        name: context.Process(target=tf32_child.round_trip, args=(setup,))
        for name, setup in TF32_SETUPS.items()
    }
    for child in children.values():
        child.start()
    for name, child in children.items():
        child.join(timeout=180)
        assert child.exitcode == 0, f"TF32 setup {name!r} did not round-trip ({child.exitcode})"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_check_disables_tf32_and_records_it(data: Any) -> None:  # pragma: no cover
    """On a GPU, a float32 check runs with TF32 off, says so in the notes, and restores it;
    the CUDA RNG is untouched too."""
    x, y = (t.cuda() for t in data)
    model = mlp(torch.float32).cuda()
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        cuda_rng = torch.cuda.get_rng_state()
        report = gg.check(lambda m: F.mse_loss(m(x), y), model, seed=0)
        assert report.passed
        assert report.notes["tf32"].startswith("disabled during the check")
        assert torch.backends.cuda.matmul.allow_tf32
        assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def test_cpu_check_leaves_tf32_settings_alone_and_notes_nothing(data: Any) -> None:
    """On CPU, TF32 does not apply: the settings are untouched and the notes do not mention it."""
    x, y = data
    before = _tf32.tf32_snapshot()
    report = gg.check(lambda m: F.mse_loss(m(x), y), mlp(), seed=0)
    assert "tf32" not in report.notes
    assert _tf32.tf32_snapshot() == before


# -- the engine through the view ----------------------------------------------------------------


def test_run_check_on_a_view_with_shadow_off_judges_float32_in_float32(data: Any) -> None:
    """TorchAdapter(shadow=False) evaluates a float32 model in place, with float32 tolerances."""
    x, y = data
    model = mlp(torch.float32)
    before = state_bytes(model)
    with TorchAdapter(shadow=False).open(model, lambda m: F.mse_loss(m(x), y), None) as view:
        report = run_check(view, Settings(seed=0))
    assert report.dtype == "float32" and report.tolerance == 1e-2 and report.passed
    adapter_notes = {
        k: v
        for k, v in report.notes.items()
        if not k.startswith(("strategy", "screen", "coordinates"))
    }
    assert adapter_notes == {"evaluation": "in place"}
    assert state_bytes(model) == before


# -- the example ------------------------------------------------------------------------------


def _run_example(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_custom_function_example_catches_the_gelu_bug_and_says_where() -> None:
    """examples/torch_custom_function.py fails the buggy GELU upstream of it (hidden.*), passes
    the layer after it, says it ran in a float64 shadow, passes the fixed version, and a Guard
    catches the bug in a training loop."""
    out = _run_example("torch_custom_function.py")
    assert "FAILED, 2 of 4 tensors wrong: hidden.weight, hidden.bias" in out
    assert "PASSED, all 4 tensors agree" in out
    assert "What to look at:" in out
    assert "float64 shadow copy (model dtype float32)" in out
    assert "out.weight, out.bias pass" in out
    # The training-loop part: a Guard stops the buggy run at its first check and switches
    # itself off on the fixed one.
    assert (
        "hand-written GELU: training stopped at step 0: gradient check failed on "
        "hidden.weight, hidden.bias" in out
    )
    assert "fixed GELU: 2 passing checks, then the guard switched itself off" in out


def test_shadow_probes_run_lean_when_that_gives_the_same_loss_bits(data: Any) -> None:
    """After the determinism evaluation, a shadow whose loss needs no Float64Mode (a plain
    Sequential) evaluates with only the root's input cast: same verdict, no mode, hooks
    pruned; and it never leaks to the user's module."""
    x, y = data
    model = mlp(torch.float32)
    view = TorchView(model, lambda m: F.mse_loss(m(x), y), None)
    with view:
        full = [view.evaluate(), view.evaluate()]
        assert view._lean
        shadow = view._shadow
        assert shadow is not None
        hooked = [m for m in shadow.modules() if m._forward_pre_hooks]
        assert hooked == [shadow]  # only the root lifts x
        assert view.evaluate() == full[0]
        stored = view.write(0, None, view.original(0) * 1.001)
        assert stored.shape == view.original(0).shape
        moved = view.evaluate()
        view.reset(0, None)
        assert moved != full[0] and view.evaluate() == full[0]
    assert not any(m._forward_pre_hooks for m in model.modules())
    report = gg.check(lambda m: F.mse_loss(m(x), y), model, seed=0)
    assert report.passed and report.notes["evaluation"] == "float64 shadow copy"


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda out, y: (out @ y.T).square().mean(),  # float64 @ float32 raises without it
        lambda out, y: F.binary_cross_entropy_with_logits(out, torch.sigmoid(y)),  # float32
        lambda out, y: F.mse_loss(out + 1e-3 * torch.randn(out.shape), y),  # a default dtype
    ],
    ids=["raises", "float32_result", "default_dtype_draw"],
)
def test_shadow_keeps_the_float64_mode_when_the_loss_needs_it(
    data: Any, loss_fn: Callable[..., Any]
) -> None:
    """A loss whose value depends on the Float64Mode (an error, a float32 result, a float32
    random draw without it) keeps the full machinery for every probe."""
    x, y = data
    view = TorchView(mlp(torch.float32), lambda m: loss_fn(m(x), y), None)
    with view:
        first = view.evaluate()
        assert view.evaluate() == first
        assert not view._lean
    report = gg.check(lambda m: loss_fn(m(x), y), mlp(torch.float32), seed=0)
    assert report.dtype == "float64" and report.passed, str(report)


def test_a_lean_probe_that_fails_goes_back_to_the_float64_mode(data: Any) -> None:
    """A loss that takes another path away from the original point (here: a float32 target
    mixed in only when perturbed far) is evaluated again with the full machinery."""
    x, y = data
    far = {"on": False}

    def loss(m: nn.Module) -> torch.Tensor:
        out = m(x)
        return (out @ y.T).square().mean() if far["on"] else F.mse_loss(out, y.double())

    view = TorchView(mlp(torch.float32), loss, None)
    with view:
        view.evaluate()
        view.evaluate()
        assert view._lean
        far["on"] = True
        value = view.evaluate()
        assert not view._lean and math.isfinite(value)


class _DeepResidual(nn.Module):
    """500 residual tanh layers of width 4: 1,000 small float32 tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(500)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + 0.1 * torch.tanh(layer(x))
        return x


def test_a_thousand_float32_tensors_screen_clean_in_the_float64_shadow() -> None:
    """1,000 float32 tensors checked in the float64 shadow: every tensor cleared by the screen in
    at most two rounds of joint probes. The float32 gradient's round-off (a few units per
    tensor, with a common bias through 500 layers) added up over sign-aligned shares and
    escalated every tensor."""
    torch.manual_seed(0)
    model = _DeepResidual()
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    report = gg.check(lambda m: F.mse_loss(m(x), y), model, seed=0, strategy="screen")
    assert report.passed, str(report)
    assert report.notes["gradient_dtype"] == "float32"
    assert {p.judged_by for p in report.params} == {"screen"}
    assert report.evaluations <= 2 + 2 * 8 + 2 * 2 * 2 * 2
