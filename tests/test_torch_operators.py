"""gradguard_torch.gradcheck / gradgradcheck: torch's drop-ins that work in float32 (issue 15)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

import gradguard_torch
from gradguard.errors import GradientCheckError, SettingsError
from gradguard_torch import OperatorCheckError, gradcheck, gradgradcheck


def _inputs(*shapes: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=g).requires_grad_(True) for s in shapes)


class _ContiguousOnly(torch.autograd.Function):
    """a @ b whose backward reads grad_output's memory as if it were contiguous."""

    @staticmethod
    def forward(ctx, a, b):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        a, b = ctx.saved_tensors
        g = torch.as_strided(g, g.shape, (g.shape[1], 1), g.storage_offset())
        return g @ b.t(), a.t() @ g


class _Square(torch.autograd.Function):
    """a * a: first-order backward right, double backward 2x wrong (a saved intermediate)."""

    @staticmethod
    def forward(ctx, a):  # type: ignore[no-untyped-def]
        y = a * a
        ctx.save_for_backward(a, y)
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        a, y = ctx.saved_tensors
        return g * 2 * (y / a.detach())


def test_correct_float32_operators_pass_without_double() -> None:
    """Stock float32 ops pass as they are: no .double(), several outputs, a skipped input."""
    x, w = _inputs((4, 5), (5, 3))
    assert gradcheck(lambda a, b: torch.tanh(a @ b), (x, w)) is True
    assert gradcheck(lambda a: torch.linalg.qr(a @ a.t() + torch.eye(4)), (x,)) is True
    mask = torch.randn(4, 5)  # does not require grad: passed through, as torch does
    assert gradcheck(lambda a, m: (a * m).sigmoid(), (x, mask)) is True
    assert gradgradcheck(lambda a, b: torch.tanh(a @ b), (x, w)) is True


def test_contiguity_bug_is_caught_and_named_where_torch_passes() -> None:
    """A backward that assumes contiguous grads: torch's float64 gradcheck passes, ours fails."""
    x, w = _inputs((4, 5), (5, 3))
    x64, w64 = (t.detach().double().requires_grad_(True) for t in (x, w))
    assert torch.autograd.gradcheck(_ContiguousOnly.apply, (x64, w64))
    with pytest.raises(GradcheckError) as caught:
        gradcheck(_ContiguousOnly.apply, (x, w))
    error = caught.value
    assert isinstance(error, OperatorCheckError) and isinstance(error, GradientCheckError)
    assert error.report.failed == ("input 0", "input 1")
    assert "not contiguous" in error.report["input 0"].hint


def test_double_backward_bug_is_caught_and_localized() -> None:
    """A wrong double backward passes gradcheck and fails gradgradcheck on input 0."""
    (x,) = _inputs((6,))
    assert gradcheck(_Square.apply, (x,)) is True
    with pytest.raises(OperatorCheckError) as caught:
        gradgradcheck(_Square.apply, (x,))
    assert caught.value.report.failed == ("input 0",)
    assert "2 x numeric" in caught.value.report["input 0"].hint
    assert gradgradcheck(_Square.apply, (x,), raise_exception=False) is False


def test_inputs_are_left_untouched_and_checked_in_a_float64_twin() -> None:
    """The user's tensors stay bit-identical and keep requires_grad; no grad is accumulated."""
    x, w = _inputs((3, 4), (4, 2))
    before = (x.detach().clone(), w.detach().clone())
    assert gradcheck(lambda a, b: (a @ b).exp(), (x, w))
    assert torch.equal(x, before[0]) and torch.equal(w, before[1])
    assert x.grad is None and x.requires_grad and x.dtype == torch.float32


@pytest.mark.parametrize("layout", ["transposed", "sliced", "zero-dim"])
def test_non_contiguous_inputs_are_perturbed_in_their_own_layout(layout: str) -> None:
    """OpInfo samples hold transposed and sliced inputs (lu_unpack, ormqr): checked as given.

    A correct op passes, a 10% wrong backward fails, and the op sees the input's own strides
    (a layout-dependent kernel is checked on the layout the caller uses).
    """

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(a)
            return a.exp().cumsum(0)

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (a,) = ctx.saved_tensors
            return g.flip(0).cumsum(0).flip(0) * a.exp() * 1.1

    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 8, generator=g)
    x = {"transposed": base.t(), "sliced": base[:, ::2], "zero-dim": base[0, 0]}[layout]
    x.requires_grad_(True)
    assert x.is_contiguous() == (layout == "zero-dim")
    strides = []

    def op(a: torch.Tensor) -> torch.Tensor:
        strides.append(a.stride())
        return a.exp().cumsum(0) if a.dim() else a.exp() * a

    assert gradcheck(op, (x,)) is True
    assert set(strides) == {x.stride()}
    if layout != "zero-dim":
        with pytest.raises(OperatorCheckError) as caught:
            gradcheck(Scaled.apply, (x,))
        assert caught.value.report.failed == ("input 0",)


def test_non_finite_input_elements_are_held_fixed_as_torch_holds_them() -> None:
    """A -inf mask into softmax: a correct op passes; a gradient leaking into the mask fails.

    Perturbing -inf leaves it -inf (torch's gradcheck sees a numeric derivative of 0 there);
    the check holds those elements fixed and says so in the notes instead of stepping by inf.
    """

    class Leaky(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            p = torch.softmax(a, -1)
            ctx.save_for_backward(p)
            return p

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (p,) = ctx.saved_tensors
            inner = p * (g - (g * p).sum(-1, keepdim=True))
            return inner + 0.1 * g * (p == 0)  # a gradient where the input is -inf

    (x,) = _inputs((3, 5), seed=4)
    with torch.no_grad():
        x[:, 1] = -math.inf
        x[2, 3] = -math.inf
    assert gradcheck(lambda a: torch.softmax(a, -1), (x,)) is True
    with pytest.raises(OperatorCheckError) as caught:
        gradcheck(Leaky.apply, (x,))
    assert caught.value.report.failed == ("input 0",)
    assert caught.value.report.notes["non_finite_held"] == "input 0: 4"


def _cancelling_square(offset: float) -> type[torch.autograd.Function]:
    """x**2 whose backward computes x as (x + offset) - offset: exact in float64 only."""

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (a,) = ctx.saved_tensors
            return g * 2 * ((a + offset) - offset)

    return Square


def test_a_float32_backward_that_only_loses_precision_is_told_from_a_wrong_formula() -> None:
    """Exact in float64, ~1e-4 off in float32: accepted with a warning (torch's own digamma and
    logcumsumexp lose that much); ~1e-2 off: FAIL, and the hint says the formula is right."""
    (x,) = _inputs((6, 7), seed=5)
    with pytest.warns(UserWarning, match=r"loses precision .* accepted within rtol=0.001"):
        assert gradcheck(_cancelling_square(1024.0).apply, (x,)) is True
    with pytest.raises(OperatorCheckError) as caught:
        gradcheck(_cancelling_square(131072.0).apply, (x,))
    hint = caught.value.report["input 0"].hint
    assert "the float64 backward of the same function passes" in hint
    assert "loses precision in float32" in hint
    with pytest.raises(OperatorCheckError):  # a wrong formula is never accepted
        gradcheck(_scaled_sin(1.0005).apply, (x,))


def _scaled_sin(factor: float) -> type[torch.autograd.Function]:
    """sin with a backward off by ``factor``: wrong in float64 as in float32."""

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(a)
            return a.sin()

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (a,) = ctx.saved_tensors
            return g * a.cos() * factor

    return Scaled


def test_a_true_gradient_below_float32s_range_is_not_a_failure() -> None:
    """prod of 125 values in (0.1, 0.6): 1e-60 in float64, 0 in float32, as right as float32 is."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 5, 5, generator=g) * 0.5 + 0.1).requires_grad_(True)
    assert float(torch.prod(x.detach())) == 0.0 and float(torch.prod(x.detach().double())) > 0
    assert gradcheck(torch.prod, (x,)) is True


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_use_a_float64_twin(dtype: torch.dtype) -> None:
    """float16/bfloat16: a correct op passes, a 50% wrong backward fails, both without casts."""

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(a)
            return a.sin()

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (a,) = ctx.saved_tensors
            return g * a.cos() * 1.5

    x = torch.randn(4, 6).to(dtype).requires_grad_(True)
    assert gradcheck(lambda a: (a * 2).sin(), (x,)) is True
    assert gradcheck(Scaled.apply, (x,), raise_exception=False) is False


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_backward_that_cancels_passes_and_a_5_percent_error_fails(
    dtype: torch.dtype, seed: int
) -> None:
    """tanh(2a)'s backward, 1 - tanh(2a)**2, rounds to 0 in bfloat16 where tanh saturates (a
    correct op that failed on 2 of these 3 seeds): the measured spread of the half-precision
    backward allows for it, and the same backward 5% off still fails."""

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(a)
            return torch.tanh(a * 2)

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (a,) = ctx.saved_tensors
            return g * 2 * (1 - torch.tanh(a * 2) ** 2) * 1.05

    torch.manual_seed(seed)
    x = (torch.randn(4, 6) * 2).to(dtype).requires_grad_(True)
    assert gradcheck(lambda a: torch.tanh(a * 2), (x,)) is True
    assert gradcheck(Scaled.apply, (x,), raise_exception=False) is False


def test_no_input_requiring_grad_is_a_clear_error() -> None:
    """Like torch: at least one input must require grad; the message says how."""
    with pytest.raises(SettingsError, match="requires_grad"):
        gradcheck(torch.sin, (torch.randn(3),))


def test_nondeterministic_backward_is_reported_as_torch_does() -> None:
    """A backward that differs between calls is 'not reentrant' (nondet_tol)."""

    class Noisy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            return a * 2

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            return g * 2 + 1e-3 * torch.rand_like(g)

    (x,) = _inputs((5,))
    with pytest.raises(GradcheckError, match="not reentrant"):
        gradcheck(Noisy.apply, (x,))


def test_undefined_output_grads_are_checked() -> None:
    """check_undefined_grad: a backward giving non-zero grads from undefined ones fails."""

    class NeedsGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            return a * 3

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            return g * 3 + (g == 0).float()  # not zero when the output grad is undefined (0)

    (x,) = _inputs((4,))
    with pytest.raises(GradcheckError, match="undefined"):
        gradcheck(NeedsGrad.apply, (x,))
    assert gradcheck(NeedsGrad.apply, (x,), check_undefined_grad=False) is True


def test_exported_from_the_package() -> None:
    """gradguard_torch.gradcheck is the function (one import to switch)."""
    assert gradguard_torch.gradcheck is gradcheck
    assert callable(gradguard_torch.gradgradcheck)


def test_the_private_undefined_grad_api_still_hands_on_an_undefined_grad() -> None:
    """_compat.undefined_grad (torch._C._functions.UndefinedGrad): a Function's backward
    behind it receives zeros (an undefined grad, materialized), and gives zero input grads."""
    from gradguard_torch._compat import undefined_grad

    seen: list[torch.Tensor] = []

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            return a * 2

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            seen.append(g)
            return g * 2

    (x,) = _inputs((3,))
    y = undefined_grad(Spy.apply(x))
    (grad,) = torch.autograd.grad(y, x, torch.ones(3))
    assert torch.equal(seen[0], torch.zeros(3)) and torch.equal(grad, torch.zeros(3))


def test_forward_ad_is_ours_and_batched_grad_torchs() -> None:
    """check_forward_ad runs gradguard's forward check and check_batched_grad torch's (float64
    twin): a stock op passes both; a Function without jvp raises as in torch."""

    class NoJvp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            return a * 2

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            return g * 2

    (x,) = _inputs((3, 4))
    assert gradcheck(torch.sin, (x,), check_forward_ad=True, check_batched_grad=True) is True
    with pytest.raises(NotImplementedError, match="jvp"):
        gradcheck(NoJvp.apply, (x,), check_forward_ad=True)


class _ScaledJvp(torch.autograd.Function):
    """sin(a) with a jvp rule scaled by (1 + error); the backward is right."""

    @staticmethod
    def forward(a, error):  # type: ignore[no-untyped-def]
        return torch.sin(a)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        a, error = inputs
        ctx.save_for_backward(a)
        ctx.save_for_forward(a)
        ctx.error = error

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (a,) = ctx.saved_tensors
        return g * torch.cos(a), None

    @staticmethod
    def jvp(ctx, ta, _):  # type: ignore[no-untyped-def]
        (a,) = ctx.saved_tensors
        return ta * torch.cos(a) * (1.0 + ctx.error)


def test_check_forward_ad_judges_a_jvp_rule_in_float32() -> None:
    """A 0.1% wrong jvp rule on float32 inputs fails check_forward_ad, naming input 0 (torch's
    float32 forward check passes it); the right rule and the backward pass."""
    a, b = _inputs((4, 3), (4, 3))
    assert gradcheck(lambda a, b: _ScaledJvp.apply(a, 0.0) * b, (a, b), check_forward_ad=True)
    with pytest.raises(OperatorCheckError) as caught:
        gradcheck(lambda a, b: _ScaledJvp.apply(a, 1e-3) * b, (a, b), check_forward_ad=True)
    assert caught.value.report.failed == ("input 0",)
    assert "forward" in str(caught.value.report.notes["mode"])
    assert torch.autograd.gradcheck(
        lambda a, b: _ScaledJvp.apply(a, 1e-3) * b,
        (a, b),
        check_forward_ad=True,
        check_backward_ad=False,
        eps=1e-3,
        atol=1e-2,
        rtol=1e-2,
        fast_mode=True,
    )
