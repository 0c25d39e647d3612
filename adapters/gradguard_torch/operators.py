"""Drop-ins for ``torch.autograd.gradcheck`` and ``gradgradcheck`` that work in float32.

``gradguard_torch.gradcheck(func, inputs)`` takes torch's arguments and returns ``True`` or
raises :class:`OperatorCheckError`, which is both gradguard's
:class:`~gradguard.errors.GradientCheckError` and torch's ``GradcheckError``, so existing
``except GradcheckError`` code keeps working. How it checks an operator ``f``:

1. *Scalarize.* For each of a few random unit-norm cotangents ``v`` (never all ones: ones hide
   bugs that cancel over a row), the scalar ``J(x) = <v, f(x)>``. Its gradient is the
   vector-Jacobian product ``v^T J_f``, which is what ``f``'s backward computes.
2. *Analytic side.* ``torch.autograd.grad(f(x), inputs, grad_outputs=v)`` in the inputs' own
   dtype (the backward under test), with ``v`` passed as a *non-contiguous* tensor for all
   but the first cotangent (a transposed or sliced view, then an expanded one, with the same
   values): a backward that assumes contiguous grads gives a wrong answer there, and the hint
   says so when the contiguous copy of the same ``v`` gives the right one.
3. *Numeric side.* Central differences of ``J`` on a float64 twin of the inputs (float32,
   float16 and bfloat16 inputs; the user's tensors are never written); an op without a
   float64 kernel is evaluated in its own dtype and judged against the measured noise.
4. *Verdict.* gradguard's engine judges each differentiable input (``input 0``, ...):
   pass, zero, fail or inconclusive, with bisection down to the wrong element and a hint.

``gradgradcheck`` applies the same check to the first-order vector-Jacobian product as a
function of the inputs and the cotangent (double backward), as torch does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import torch
from torch.autograd.gradcheck import GradcheckError

from gradguard.engine import Settings, run_check
from gradguard.engine.layout import Layout
from gradguard.errors import GradientCheckError, InvalidParamsError, LossError, SettingsError
from gradguard.kit.contract import FlatView, IndexArray
from gradguard.kit.dtypes import least_precise, precision_bits
from gradguard.results import CheckReport, Status
from gradguard_torch._adapter import _NUMPY_DTYPES
from gradguard_torch._compat import undefined_grad

__all__ = ["OperatorCheckError", "gradcheck", "gradgradcheck"]

FloatArray = npt.NDArray[np.float64]

COTANGENTS = 3
"""Random unit-norm cotangents per check: one contiguous, one non-contiguous, one expanded."""

_DIRECTIONS = 2
_NUMPY = _NUMPY_DTYPES  # bfloat16 as ml_dtypes' bfloat16, as the module adapter does


class OperatorCheckError(GradientCheckError, GradcheckError):
    """An operator's gradient is wrong (or could not be judged), found by :func:`gradcheck`.

    Both gradguard's :class:`~gradguard.errors.GradientCheckError` (``.report`` holds the
    per-input table) and ``torch.autograd.gradcheck.GradcheckError``, so code written for
    torch's gradcheck catches it unchanged.
    """


def _as_tuple(x: Any) -> tuple[Any, ...]:
    if isinstance(x, tuple):
        return x
    if isinstance(x, list):
        return tuple(x)
    return (x,)


def _differentiable_outputs(out: Any) -> list[torch.Tensor]:
    return [
        o
        for o in _as_tuple(out)
        if isinstance(o, torch.Tensor) and o.requires_grad and o.is_floating_point()
    ]


def _float_outputs(out: Any) -> list[torch.Tensor]:
    return [o for o in _as_tuple(out) if isinstance(o, torch.Tensor) and o.is_floating_point()]


def _noncontiguous(values: torch.Tensor, kind: str) -> torch.Tensor:
    """A tensor equal to ``values`` whose memory is laid out differently (not contiguous)."""
    if values.dim() == 0 or values.numel() <= 1:
        return values
    if kind == "transposed" and values.dim() >= 2:
        base = values.permute(*reversed(range(values.dim()))).contiguous()
        return base.permute(*reversed(range(values.dim())))
    # Sliced: every other element of a tensor twice as long in the last dimension.
    shape = (*values.shape[:-1], 2 * values.shape[-1])
    base = torch.zeros(shape, dtype=values.dtype, device=values.device)
    view = base[..., ::2]
    view.copy_(values)
    return view


def _expanded(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A random unit-norm tensor of ``shape`` built by ``expand`` (a stride-0 dimension)."""
    if len(shape) == 0 or math.prod(shape) <= 1:
        return _unit(shape, generator, like)
    dim = max(range(len(shape)), key=lambda d: shape[d])
    small = list(shape)
    small[dim] = 1
    u = torch.randn(small, generator=generator, dtype=torch.float64)
    u = u / (math.sqrt(shape[dim]) * float(u.norm()))
    expanded: torch.Tensor = u.to(like.dtype).to(like.device).expand(shape)
    return expanded


def _unit(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    u = torch.randn(tuple(shape), generator=generator, dtype=torch.float64)
    norm = float(u.norm())
    u = u / norm if norm > 0 else u
    return u.to(like.dtype).to(like.device)


@attrs.frozen
class _Cotangent:
    """One cotangent: the values (contiguous) and the tensors handed to backward."""

    kind: str
    values: tuple[torch.Tensor, ...]
    passed: tuple[torch.Tensor, ...]


def _cotangents(outputs: list[torch.Tensor], count: int, seed: int) -> list[_Cotangent]:
    generator = torch.Generator().manual_seed(seed)
    kinds = ["contiguous", "non-contiguous", "expanded"]
    result = []
    for k in range(count):
        kind = kinds[k % len(kinds)]
        if kind == "expanded":
            passed = tuple(_expanded(o.shape, generator, o) for o in outputs)
            values = tuple(p.contiguous() for p in passed)
        else:
            values = tuple(_unit(o.shape, generator, o) for o in outputs)
            if kind == "contiguous":
                passed = values
            else:
                layout = "transposed" if k % 2 else "sliced"
                passed = tuple(_noncontiguous(v, layout) for v in values)
        result.append(_Cotangent(kind=kind, values=values, passed=passed))
    return result


def _elements(
    tensor: torch.Tensor, index: IndexArray
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``(target, where)`` with ``target[where]`` the row-major flat positions ``index``.

    The twin keeps the caller's memory layout (an op may behave differently on a transposed
    input), so a flat ``view`` is not always possible: a non-contiguous tensor is indexed by
    unravelled positions instead.
    """
    flat = np.asarray(index, dtype=np.int64)
    if tensor.is_contiguous():
        return tensor.view(-1), (torch.from_numpy(flat),)
    unravelled = np.unravel_index(flat, tuple(tensor.shape))
    return tensor, tuple(torch.from_numpy(np.ascontiguousarray(u)) for u in unravelled)


class _OperatorView(FlatView):
    """The engine's view of an operator's differentiable inputs under one cotangent.

    Perturbations go into a private twin of the inputs (float64 when the op runs in float64,
    else the inputs' own dtype); the user's tensors are never written. The analytic gradient
    is computed beforehand, in the inputs' own dtype, and handed over as it is.
    """

    adapter = "torch-operator"

    def __init__(
        self,
        func: Callable[..., Any],
        twin: list[Any],
        diff: list[int],
        cotangent: tuple[torch.Tensor, ...],
        gradient: FloatArray,
        gradient_dtype: np.dtype[Any],
        loss_dtype: np.dtype[Any],
        notes: dict[str, str | int | float | bool | None],
    ) -> None:
        self._func = func
        self._twin = twin
        self._diff = diff
        self._originals = [twin[i].detach().clone() for i in diff]
        self._cotangent = tuple(c.to(torch.float64) for c in cotangent)
        self._gradient = gradient
        self._gradient_dtype = gradient_dtype
        self._loss_dtype = loss_dtype
        self._notes = notes
        self.spread: FloatArray | None = None  # a half-precision backward's measured spread
        self.layout = Layout.from_tensors(
            [(f"input {i}", tuple(twin[i].shape), _NUMPY[twin[i].dtype]) for i in diff]
        )
        # Non-finite input elements (a -inf mask for a softmax) are held fixed, as torch's
        # gradcheck holds them (-inf + eps is -inf): the numeric derivative there is 0.
        self._fixed = [
            ~np.isfinite(o.reshape(-1).to(torch.float64).numpy()) for o in self._originals
        ]
        held = [
            f"input {i}: {int(m.sum())}" for i, m in zip(diff, self._fixed, strict=True) if m.any()
        ]
        if held:
            self._notes["non_finite_held"] = ", ".join(held)

    def gradient_spread(self) -> FloatArray | None:
        return self.spread

    def original(self, segment: int) -> FloatArray:
        values: FloatArray = self._originals[segment].reshape(-1).to(torch.float64).numpy()
        values = values.copy()
        values[self._fixed[segment]] = 0.0  # the engine steps from a finite value
        return values

    def _tensor(self, segment: int) -> torch.Tensor:
        tensor: torch.Tensor = self._twin[self._diff[segment]]
        return tensor

    def write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        fixed = self._fixed[segment]
        with torch.no_grad():  # the twin may require grad (gradgradcheck's first order)
            written = self._write(segment, index, values)
            if not fixed.any():
                return written
            at = fixed if index is None else fixed[np.asarray(index, dtype=np.int64)]
            if at.any():  # put the non-finite values back; report the write as asked
                where = np.flatnonzero(fixed) if index is None else np.asarray(index)[at]
                self._reset(segment, where)
                written[at] = np.asarray(values, dtype=np.float64)[at]
            return written

    def _write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        tensor = self._tensor(segment)
        new = torch.from_numpy(np.asarray(values, dtype=np.float64)).to(tensor.dtype)
        if index is None:
            tensor.copy_(new.reshape(tensor.shape))
            return tensor.reshape(-1).to(torch.float64).numpy().copy()
        target, where = _elements(tensor, index)
        target[where] = new
        return target[where].to(torch.float64).numpy().copy()

    def reset(self, segment: int, index: IndexArray | None) -> None:
        with torch.no_grad():
            self._reset(segment, index)

    def _reset(self, segment: int, index: IndexArray | None) -> None:
        tensor = self._tensor(segment)
        original = self._originals[segment]
        if index is None:
            tensor.copy_(original)
        else:
            target, where = _elements(tensor, index)
            source, at = _elements(original, index)
            target[where] = source[at]

    def evaluate(self) -> float:
        with torch.no_grad():
            outputs = _float_outputs(self._func(*self._twin))
        if len(outputs) < len(self._cotangent):
            raise LossError("the function returned fewer floating outputs than at the first call")
        total = torch.zeros((), dtype=torch.float64)
        for v, o in zip(self._cotangent, outputs, strict=False):
            total = total + (v * o.to(torch.float64)).sum()
        return float(total.detach())

    def jvp(self, vector: FloatArray) -> float:
        """The forward-mode derivative of ``<cotangent, func>`` along ``vector`` (forward AD
        on the twin: a Function's ``jvp`` staticmethod is what gets checked)."""
        import torch.autograd.forward_ad as fwad

        args = list(self._twin)
        with fwad.dual_level(), torch.no_grad():
            for segment, i in zip(self.layout, self._diff, strict=True):
                x = self._twin[i]
                tangent = torch.from_numpy(vector[segment.offset : segment.stop].copy())
                # torch.autograd.forward_ad is untyped in torch 2.13
                args[i] = fwad.make_dual(  # type: ignore[no-untyped-call]
                    x.detach(), tangent.view(x.shape).to(x.dtype)
                )
            # A Function without a jvp staticmethod raises NotImplementedError, as in torch.
            outputs = _float_outputs(self._func(*args))
            total = 0.0
            for v, o in zip(self._cotangent, outputs, strict=False):
                tangent = fwad.unpack_dual(o).tangent  # type: ignore[no-untyped-call]
                if tangent is not None:
                    total += float((v * tangent.to(torch.float64)).sum())
        return total

    @property
    def loss_dtype(self) -> np.dtype[Any]:
        return self._loss_dtype

    @property
    def gradient_dtype(self) -> np.dtype[Any]:
        return self._gradient_dtype

    def gradient(self) -> FloatArray:
        return self._gradient

    @property
    def notes(self) -> dict[str, str | int | float | bool | None]:
        return dict(self._notes)

    def restore(self) -> None:
        for segment in range(len(self._diff)):
            self.reset(segment, None)


def _twin(inputs: tuple[Any, ...], dtype: torch.dtype | None) -> list[Any]:
    """Private copies of the inputs, floating tensors cast to ``dtype`` (``None``: kept).

    Each copy has its input's strides (a transposed or sliced input stays so: the op is checked
    on the layout the caller uses), unless the input's elements overlap (an expanded tensor),
    which a copy must not share: it is made contiguous, as ``clone`` would.
    """
    twin: list[Any] = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            cast = dtype if dtype is not None and x.is_floating_point() else x.dtype
            if _non_overlapping(x):
                y = torch.empty_strided(x.shape, x.stride(), dtype=cast, device=x.device)
                y.copy_(x.detach())
            else:
                y = x.detach().clone(memory_format=torch.contiguous_format).to(cast)
            twin.append(y)
        else:
            twin.append(x)
    return twin


def _non_overlapping(x: torch.Tensor) -> bool:
    """Whether no two elements of ``x`` share memory (a sufficient test on the strides)."""
    dims = sorted((st, n) for st, n in zip(x.stride(), x.shape, strict=True) if n > 1)
    span = 1
    for stride, size in dims:
        if stride < span:
            return False
        span = stride * size
    return True


def _analytic(
    func: Callable[..., Any], inputs: tuple[Any, ...], diff: list[int], cotangent: _Cotangent
) -> list[torch.Tensor]:
    leaves = list(inputs)
    for i in diff:
        leaves[i] = inputs[i].detach().requires_grad_(True)
    with torch.enable_grad():
        outputs = _differentiable_outputs(func(*leaves))
        grads = torch.autograd.grad(
            outputs,
            [leaves[i] for i in diff],
            grad_outputs=list(cotangent.passed[: len(outputs)]),
            allow_unused=True,
        )
    return [
        torch.zeros_like(leaves[i]) if g is None else g.detach()
        for i, g in zip(diff, grads, strict=True)
    ]


def _spread(
    func: Callable[..., Any],
    inputs: tuple[Any, ...],
    diff: list[int],
    cotangent: _Cotangent,
    gradients: list[torch.Tensor],
    dtype: np.dtype[Any],
) -> FloatArray:
    """A half-precision backward's own rounding, sampled (``gradguard.engine.spread``): the
    backward again with the cotangent scaled by 4/3 (divided back), and at the differentiable
    inputs multiplied by ``1 +- u`` (opposite random signs from a private generator, ``u`` the
    dtype's unit round-off; copies, never the user's tensors). A wrong formula is in all of
    them and cancels; the rounding (``1 - tanh**2`` at saturation) does not."""
    first = _flatten(gradients)
    factor = 4.0 / 3.0
    scaled = tuple(c * factor for c in cotangent.passed)
    rescaled = _flatten(
        [g.to(torch.float64) / factor for g in _analytic(func, inputs, diff, _Cotangent(
            cotangent.kind, cotangent.values, scaled))]
    )  # fmt: skip
    unit = float(np.finfo(dtype).eps) / 2.0
    generator = torch.Generator().manual_seed(0x6D70)
    signs = {
        i: torch.randint(0, 2, inputs[i].shape, generator=generator).to(inputs[i].device) * 2.0 - 1
        for i in diff
    }
    dithered = []
    for sign in (1.0, -1.0):
        moved = list(inputs)
        for i in diff:
            x = inputs[i].detach()
            moved[i] = (x.to(torch.float64) * (1.0 + sign * unit * signs[i])).to(x.dtype)
        dithered.append(_flatten(_analytic(func, tuple(moved), diff, cotangent)))
    spread: FloatArray = np.hypot(rescaled - first, (dithered[0] + dithered[1]) / 2.0 - first)
    return spread


def _flatten(grads: Sequence[torch.Tensor]) -> FloatArray:
    if not grads:
        return np.zeros(0)
    return np.concatenate([g.detach().reshape(-1).to(torch.float64).cpu().numpy() for g in grads])


def _numeric_dtype(func: Callable[..., Any], inputs: tuple[Any, ...]) -> tuple[list[Any], str]:
    """The twin the finite differences use: float64 when the op runs in float64."""
    floats = [x for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()]
    if all(x.dtype == torch.float64 for x in floats):
        return _twin(inputs, None), "in place on a copy, float64"
    twin = _twin(inputs, torch.float64)
    try:
        with torch.no_grad():
            outputs = _float_outputs(func(*twin))
        if outputs and all(o.dtype == torch.float64 for o in outputs):
            return twin, "float64 twin of the inputs"
        reason = "its outputs are not float64 on float64 inputs"
    except Exception as exc:  # an op without a float64 kernel: judged in its own dtype
        reason = f"{type(exc).__name__} on float64 inputs"
    return _twin(inputs, None), f"in the inputs' own dtype (no float64 twin: {reason})"


def _check_inputs(inputs: tuple[Any, ...]) -> list[int]:
    diff = []
    for i, x in enumerate(inputs):
        if not (isinstance(x, torch.Tensor) and x.requires_grad):
            continue
        if x.layout != torch.strided:
            raise InvalidParamsError(
                f"input {i} has layout {x.layout}; gradguard_torch.gradcheck checks dense "
                "tensors only: use torch.autograd.gradcheck(..., masked=...) for sparse inputs"
            )
        if x.is_complex():
            raise InvalidParamsError(
                f"input {i} is complex ({x.dtype}); gradguard_torch.gradcheck checks real "
                "inputs only: pass torch.view_as_real(x) and rebuild it inside func"
            )
        if x.dtype not in _NUMPY:
            raise InvalidParamsError(f"input {i} has dtype {x.dtype}, which cannot require grad")
        diff.append(i)
    if not diff:
        raise SettingsError(
            "gradcheck expects at least one input tensor to require gradient, but none of "
            "them have requires_grad=True: call x.requires_grad_() on the inputs to check"
        )
    return diff


def _least_precise(inputs: tuple[Any, ...], diff: list[int]) -> np.dtype[Any]:
    return least_precise(*(_NUMPY[inputs[i].dtype] for i in diff))


def _contiguity_hint(
    report: CheckReport, analytic: list[torch.Tensor], contiguous: list[torch.Tensor]
) -> CheckReport:
    """Say so where the same cotangent, made contiguous, gives a different gradient."""
    params = []
    for p, a, c in zip(report.params, analytic, contiguous, strict=True):
        if p.status is Status.FAIL and not torch.allclose(a, c, rtol=1e-5, atol=1e-7):
            hint = (
                "the gradient changes when grad_output is not contiguous (the same values, "
                "contiguous, give a different answer): the backward assumes a contiguous "
                "grad_output (call grad.contiguous(), or index it by its strides)"
            )
            p = attrs.evolve(p, hint=hint)
        params.append(p)
    return attrs.evolve(report, params=tuple(params))


def _precision_hint(
    report: CheckReport,
    view: _OperatorView,
    func: Callable[..., Any],
    twin: list[Any],
    diff: list[int],
    cotangent: _Cotangent,
    gradients: list[torch.Tensor],
    rtol: float | None,
) -> tuple[CheckReport, bool]:
    """Tell a backward that is exact in float64 but imprecise in float32 from a wrong formula.

    The same check, with the float64 twin's own backward as the analytic side: where that
    passes, the formula is right and the float32 backward loses precision (a cancellation, a
    low-precision accumulation). Such a loss within ``rtol`` (torch's gradcheck default,
    1e-3, when not given) of the float64 backward, normwise, is accepted with a warning:
    torch's own float32 kernels lose that much (``digamma`` 1.9e-5 near a pole,
    ``logcumsumexp`` 3.8e-4; docs/benchmarks.md); beyond it the status stays FAIL and the
    hint says which of the two it is. Returns the report and whether it was accepted.
    """
    precision = _PRECISION_RTOL if rtol is None else rtol
    plain = _Cotangent(cotangent.kind, cotangent.values, cotangent.passed)
    exact = _analytic(func, tuple(twin), diff, plain)
    again = _OperatorView(
        func, twin, diff, cotangent.values, _flatten(exact), np.dtype(np.float64),
        np.dtype(np.float64), view.notes,
    )  # fmt: skip
    with again:
        reference = run_check(again, Settings(directions=_DIRECTIONS, seed=report.seed))
    low_dtype = str(view.gradient_dtype)
    params = []
    accepted = []
    for p, q, low, high in zip(report.params, reference.params, gradients, exact, strict=True):
        if p.status is Status.FAIL and q.status is Status.PASS:
            lost = float(
                (low.to(torch.float64) - high).norm()
                / max(float(high.norm()), float(np.finfo(np.float64).tiny))
            )
            hint = (
                f"the float64 backward of the same function passes (difference "
                f"{q.difference:.2g}); the {low_dtype} backward is {lost:.2g} (relative) off it: "
                f"the formula is right, but it loses precision in {low_dtype} (a cancellation or "
                "a low-precision accumulation in the backward). Compute the backward in a "
                "more stable form, or accept it with a looser rtol"
            )
            p = attrs.evolve(p, hint=hint)
            if lost <= precision:
                accepted.append(f"{p.name}: {lost:.2g}")
        params.append(p)
    report = attrs.evolve(report, params=tuple(params))
    if len(accepted) != len(report.failed):
        return report, False
    warnings.warn(
        f"gradguard: the {low_dtype} backward loses precision against its own float64 "
        f"backward, which is exact ({', '.join(accepted)} relative); accepted within "
        f"rtol={precision:g}",
        stacklevel=4,
    )
    return report, True


def _nondeterminism(
    func: Callable[..., Any],
    inputs: tuple[Any, ...],
    diff: list[int],
    cotangent: _Cotangent,
    first: list[torch.Tensor],
    nondet_tol: float,
) -> None:
    again = _analytic(func, inputs, diff, cotangent)
    for a, b in zip(first, again, strict=True):
        gap = (a.to(torch.float64) - b.to(torch.float64)).abs()
        if gap.numel() and float(gap.max()) > nondet_tol:
            raise GradcheckError(
                "Backward is not reentrant, i.e., running backward with same input and "
                "grad_output multiple times gives different values, although analytical "
                f"gradient matches numerical gradient. The tolerance for nondeterminism was "
                f"{nondet_tol}."
            )


def _fail(message: str, report: CheckReport | None, raise_exception: bool) -> bool:
    if not raise_exception:
        return False
    if report is None:
        raise GradcheckError(message)
    raise OperatorCheckError(message, report)


def gradcheck(
    func: Callable[..., Any],
    inputs: Any,
    *,
    eps: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    raise_exception: bool = True,
    nondet_tol: float = 0.0,
    check_undefined_grad: bool = True,
    check_grad_dtypes: bool = False,
    check_batched_grad: bool = False,
    check_batched_forward_grad: bool = False,
    check_forward_ad: bool = False,
    check_backward_ad: bool = True,
    fast_mode: bool = False,
    masked: bool | None = None,
    seed: int | None = None,
    cotangents: int = COTANGENTS,
) -> bool:
    """Check an operator's backward against central differences; float32 works as it is.

    Torch's signature, so switching is one import. Every input that is a floating tensor with
    ``requires_grad=True`` is checked; the others are passed through, as torch does.

    Args:
        func: The operator: ``func(*inputs)`` returns a tensor or a tuple of tensors.
        inputs: A tensor or a tuple of inputs.
        eps: Absolute finite-difference step on the float64 twin (default: the dtype's
            ``u**(1/3) * max(1, |x|)``); ignored when the op runs only in a lower precision,
            where the dtype's own step is used.
        atol: Accepted for compatibility; gradguard judges against the measured
            finite-difference noise instead of an absolute tolerance.
        rtol: The tolerance on the relative difference (default by dtype: 1e-5 for a float32
            backward against a float64 twin, 1e-6 in float64).
        raise_exception: Raise :class:`OperatorCheckError` on failure (else return False).
        nondet_tol: How far two backward passes with the same input and cotangent may differ.
        check_undefined_grad: Check that backward accepts undefined (zero) output grads.
        check_forward_ad: Also check forward mode: gradguard's forward check (the JVP of
            ``<c, func>`` by forward AD, a Function's ``jvp`` rule, against central
            differences, per input; ``mode="forward"``).
        check_grad_dtypes, check_batched_grad, check_batched_forward_grad:
            Accepted; when ``True`` the extra check is torch's own, run on a float64 twin of
            the inputs (check_batched_grad, check_batched_forward_grad) or in the inputs'
            dtype.
        check_backward_ad: Check the backward (the default; ``False`` skips gradguard's part).
        fast_mode: Accepted; gradguard's check is always the fast kind (random projections
            over every element), so both values do the same.
        masked: Accepted for sparse inputs, which gradguard refuses (dense tensors only).
        seed: Seed for the cotangents and the engine's directions (default: fixed, 0).
        cotangents: How many random cotangents (contiguous, non-contiguous, expanded, ...).

    Returns:
        True when every check passed (or ``False`` with ``raise_exception=False``).

    Raises:
        OperatorCheckError: a gradient is wrong, or could not be judged; ``.report`` is the
            failing cotangent's per-input report.
        GradcheckError: the backward is not reentrant, or rejects undefined output grads.
        SettingsError: no input requires grad.
        InvalidParamsError: a sparse or complex input requires grad.
    """
    del atol, fast_mode, masked  # see the docstring: accepted, no meaning here
    tupled = _as_tuple(inputs)
    diff = _check_inputs(tupled)
    seed = 0 if seed is None else int(seed)
    if check_backward_ad:
        try:
            verdict = _check_backward(func, tupled, diff, eps, rtol, nondet_tol, seed, cotangents)
        except GradcheckError:  # not reentrant (nondet_tol)
            if raise_exception:
                raise
            return False
        if verdict is not None:
            return _fail(str(verdict), verdict, raise_exception)
        if check_undefined_grad:
            try:
                _undefined_grads(func, tupled, diff)
            except GradcheckError as exc:
                if raise_exception:
                    raise
                del exc
                return False
    if check_forward_ad:
        verdict = _check_forward(func, tupled, diff, eps, rtol, seed)
        if verdict is not None:
            return _fail(str(verdict), verdict, raise_exception)
    extras = dict(
        check_grad_dtypes=check_grad_dtypes,
        check_batched_grad=check_batched_grad,
        check_batched_forward_grad=check_batched_forward_grad,
        # torch's batched forward check needs its forward check; ours ran above otherwise
        check_forward_ad=check_batched_forward_grad,
    )
    if any(extras.values()):
        twin = tuple(
            x.detach().to(torch.float64).requires_grad_(x.requires_grad)
            if isinstance(x, torch.Tensor) and x.is_floating_point()
            else x
            for x in tupled
        )
        return bool(
            torch.autograd.gradcheck(
                func,
                twin,
                raise_exception=raise_exception,
                nondet_tol=nondet_tol,
                check_undefined_grad=False,
                check_backward_ad=check_batched_grad,
                **extras,
            )
        )
    return True


def _check_backward(
    func: Callable[..., Any],
    tupled: tuple[Any, ...],
    diff: list[int],
    eps: float | None,
    rtol: float | None,
    nondet_tol: float,
    seed: int,
    count: int,
) -> CheckReport | None:
    """The failing (or inconclusive) report of the first cotangent that fails; else None."""
    with torch.enable_grad():
        outputs = _differentiable_outputs(func(*[_leaf(x, i, diff) for i, x in enumerate(tupled)]))
    if not outputs:
        gradients = [torch.zeros_like(tupled[i]) for i in diff]
        outputs_none = True
    else:
        outputs_none = False
    twin, evaluation = _numeric_dtype(func, tupled)
    twin_dtype = twin[diff[0]].dtype
    loss_dtype = _NUMPY[twin_dtype]
    gradient_dtype = _least_precise(tupled, diff)
    notes: dict[str, str | int | float | bool | None] = {"evaluation": evaluation}
    use_eps = eps if twin_dtype == torch.float64 else None
    settings = Settings(eps=use_eps, tolerance=rtol, directions=_DIRECTIONS, seed=seed)
    shapes = [o for o in outputs] if not outputs_none else []
    first: CheckReport | None = None
    reference: list[torch.Tensor] = []
    for k, cotangent in enumerate(_cotangents(shapes, count if shapes else 1, seed)):
        if not outputs_none:
            gradients = _analytic(func, tupled, diff, cotangent)
            if k == 0 and nondet_tol >= 0.0:
                _nondeterminism(func, tupled, diff, cotangent, gradients, nondet_tol)
        if cotangent.kind == "expanded" and first is not None:
            # Constant along a dimension, an expanded cotangent is often in an op's null space
            # (softmax, normalizations): finite differences would judge noise against noise.
            # It is checked against the same values made contiguous instead.
            plain = _Cotangent("contiguous", cotangent.values, cotangent.values)
            contiguous = _analytic(func, tupled, diff, plain)
            report = _stride_report(first, gradients, contiguous, reference, k, count)
            if report is not None:
                return report
            continue
        kind = cotangent.kind if not outputs_none else "none (no differentiable output)"
        view = _OperatorView(
            func,
            twin,
            diff,
            cotangent.values,
            _flatten(gradients),
            gradient_dtype,
            loss_dtype,
            {**notes, "cotangent": f"{k + 1} of {count}, {kind}"},
        )
        if not outputs_none and precision_bits(gradient_dtype) == 16:
            view.spread = _spread(func, tupled, diff, cotangent, gradients, gradient_dtype)
        with view:
            report = run_check(view, attrs.evolve(settings, seed=seed + k))
        if report.status in (Status.FAIL, Status.INCONCLUSIVE, Status.NONDETERMINISTIC):
            if cotangent.kind != "contiguous" and report.status is Status.FAIL:
                plain = _Cotangent("contiguous", cotangent.values, cotangent.values)
                report = _contiguity_hint(report, gradients, _analytic(func, tupled, diff, plain))
            if report.status is Status.FAIL and gradient_dtype != np.float64 == loss_dtype:
                report, accepted = _precision_hint(
                    report, view, func, twin, diff, cotangent, gradients, rtol
                )
                if accepted:
                    continue
            return report
        if first is None:
            first, reference = report, gradients
    return None


def _check_forward(
    func: Callable[..., Any],
    tupled: tuple[Any, ...],
    diff: list[int],
    eps: float | None,
    rtol: float | None,
    seed: int,
) -> CheckReport | None:
    """check_forward_ad: gradguard's forward-mode check under one random unit cotangent.

    The JVP of ``<c, func>`` along every probe (forward AD on the float64 twin) against
    central differences: the per-input verdict of the backward check, for a ``jvp`` rule.
    The backward gradient is read only for the gradient scale.
    """
    with torch.no_grad():
        outputs = _float_outputs(func(*tupled))
    if not outputs:
        return None
    cotangent = _cotangents(outputs, 1, seed)[0]
    twin, evaluation = _numeric_dtype(func, tupled)
    twin_dtype = twin[diff[0]].dtype
    view = _OperatorView(
        func,
        twin,
        diff,
        cotangent.values,
        _flatten(_analytic(func, tupled, diff, cotangent)),
        _NUMPY[twin_dtype],  # the JVP is computed on the twin
        _NUMPY[twin_dtype],
        {"evaluation": evaluation, "cotangent": "1 random unit-norm, contiguous"},
    )
    settings = Settings(
        eps=eps if twin_dtype == torch.float64 else None,
        tolerance=rtol,
        directions=_DIRECTIONS,
        seed=seed,
        mode="forward",
    )
    with view:
        report = run_check(view, settings)
    if report.status in (Status.FAIL, Status.INCONCLUSIVE, Status.NONDETERMINISTIC):
        return report
    return None


# A float32 backward whose formula is exact in float64 may lose this much precision (normwise,
# relative to its float64 backward) and pass: torch.autograd.gradcheck's default rtol.
_PRECISION_RTOL = 1e-3

# Two backward passes over the same cotangent values, one of them strided, may differ by the
# float32 round-off of a different summation order (~1e-7 relative); this leaves 1000x.
_STRIDE_TOLERANCE = 1e-4


def _stride_report(
    first: CheckReport,
    strided: list[torch.Tensor],
    contiguous: list[torch.Tensor],
    reference: list[torch.Tensor],
    k: int,
    count: int,
) -> CheckReport | None:
    """A failing report when a strided cotangent gives another gradient than its copy."""
    params, failed = [], False
    for p, a, c, r in zip(first.params, strided, contiguous, reference, strict=True):
        a64, c64 = a.detach().to(torch.float64), c.detach().to(torch.float64)
        gap = (a64 - c64).reshape(-1)
        scale = float(a64.norm() + c64.norm() + r.detach().to(torch.float64).norm())
        difference = float(gap.norm()) / scale if scale > 0 else 0.0
        if difference <= _STRIDE_TOLERANCE or gap.numel() == 0:
            params.append(attrs.evolve(p, coordinates=0, directions=0, hint=""))
            continue
        failed = True
        worst = int(gap.abs().argmax())
        index = tuple(int(i) for i in np.unravel_index(worst, tuple(a.shape)))
        params.append(
            attrs.evolve(
                p,
                status=Status.FAIL,
                difference=difference,
                tolerance=_STRIDE_TOLERANCE,
                worst_index=index,
                worst_analytic=float(a64.reshape(-1)[worst]),
                worst_numeric=float(c64.reshape(-1)[worst]),
                hint=(
                    "the gradient changes when grad_output is an expanded (stride-0) tensor: "
                    "the 'numeric' column is the gradient for the same values made contiguous; "
                    "the backward assumes a contiguous grad_output (call grad.contiguous())"
                ),
            )
        )
    if not failed:
        return None
    return attrs.evolve(
        first,
        passed=False,
        status=Status.FAIL,
        params=tuple(params),
        notes={**first.notes, "cotangent": f"{k + 1} of {count}, expanded (vs contiguous)"},
    )


def _leaf(x: Any, i: int, diff: list[int]) -> Any:
    return x.detach().requires_grad_(True) if i in diff else x


def _undefined_grads(func: Callable[..., Any], tupled: tuple[Any, ...], diff: list[int]) -> None:
    """Torch's rule: backward with every output grad undefined gives undefined or zero grads."""
    leaves = [_leaf(x, i, diff) for i, x in enumerate(tupled)]
    with torch.enable_grad():
        outputs = _differentiable_outputs(func(*leaves))
        if not outputs:
            return
        undefined = [undefined_grad(o) for o in outputs]
        grads_output = [torch.zeros_like(o) for o in undefined]
        try:
            grads = torch.autograd.grad(
                undefined, [leaves[i] for i in diff], grads_output, allow_unused=True
            )
        except RuntimeError as exc:
            raise GradcheckError(
                "Expected backward function to handle undefined output grads. "
                'Please look at "Notes about undefined output gradients" in '
                '"tools/autograd/derivatives.yaml"'
            ) from exc
    for g in grads:
        if g is not None and not bool(g.eq(0).all()):
            raise GradcheckError(
                "Expected all input grads to be undefined or zero when all output grads are "
                'undefined or zero. Please look at "Notes about undefined output gradients" in '
                '"tools/autograd/derivatives.yaml"'
            )


def gradgradcheck(
    func: Callable[..., Any],
    inputs: Any,
    grad_outputs: Any = None,
    *,
    eps: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    gen_non_contig_grad_outputs: bool = False,
    raise_exception: bool = True,
    nondet_tol: float = 0.0,
    check_undefined_grad: bool = True,
    check_grad_dtypes: bool = False,
    check_batched_grad: bool = False,
    check_fwd_over_rev: bool = False,
    check_rev_over_rev: bool = True,
    fast_mode: bool = False,
    masked: bool = False,
    seed: int | None = None,
    cotangents: int = COTANGENTS,
) -> bool:
    """Check an operator's double backward: :func:`gradcheck` of its vector-Jacobian product.

    The function checked is ``(inputs, v) -> autograd.grad(func(inputs), inputs, v,
    create_graph=True)``, as in torch. Its own cotangents are again random, unit-norm and
    non-contiguous, so a double backward that is wrong (a Function that saves intermediates
    and returns a backward autograd cannot differentiate correctly) is caught.

    Args:
        func, inputs, eps, atol, rtol, raise_exception, nondet_tol, check_undefined_grad,
        check_grad_dtypes, check_batched_grad, fast_mode, masked, seed, cotangents: As in
            :func:`gradcheck`.
        grad_outputs: The first-order cotangents ``v`` (default: random, unit-norm, in the
            outputs' dtype, requiring grad so the check covers them too).
        gen_non_contig_grad_outputs: Accepted; the default ``v`` is contiguous and the
            second-order cotangents are non-contiguous either way.
        check_fwd_over_rev: Also run torch's forward-over-reverse check on a float64 twin.
        check_rev_over_rev: Check the double backward (the default).

    Returns:
        True, or False with ``raise_exception=False`` on failure.

    Raises:
        OperatorCheckError: as :func:`gradcheck`; the inputs are named ``input i`` in the
            order ``(*inputs, *grad_outputs)``.
    """
    del gen_non_contig_grad_outputs
    tupled = _as_tuple(inputs)
    diff = _check_inputs(tupled)
    generator = torch.Generator().manual_seed(0 if seed is None else int(seed) + 7919)
    if grad_outputs is None:
        with torch.enable_grad():
            outputs = _differentiable_outputs(
                func(*[_leaf(x, i, diff) for i, x in enumerate(tupled)])
            )
        given: tuple[Any, ...] = tuple(
            _unit(o.shape, generator, o).requires_grad_(True) for o in outputs
        )
    else:
        given = _as_tuple(grad_outputs)
    count = len(given)
    wants_grad = [i for i, x in enumerate(given) if isinstance(x, torch.Tensor) and x.requires_grad]

    def first_order(*args: Any) -> tuple[torch.Tensor, ...]:
        xs = list(args[: len(args) - count])
        vs = list(args[len(args) - count :])
        for i in diff:
            xs[i] = xs[i] if xs[i].requires_grad else xs[i].requires_grad_(True)
        for i in wants_grad:
            vs[i] = vs[i] if vs[i].requires_grad else vs[i].requires_grad_(True)
        with torch.enable_grad():
            outs = _differentiable_outputs(func(*xs))
            grads = torch.autograd.grad(
                outs, [xs[i] for i in diff], vs, create_graph=True, allow_unused=True
            )
        return tuple(g for g in grads if g is not None)

    return gradcheck(
        first_order,
        tupled + given,
        eps=eps,
        atol=atol,
        rtol=rtol,
        raise_exception=raise_exception,
        nondet_tol=nondet_tol,
        check_undefined_grad=check_undefined_grad,
        check_grad_dtypes=check_grad_dtypes,
        check_batched_grad=check_batched_grad,
        check_forward_ad=check_fwd_over_rev,
        check_backward_ad=check_rev_over_rev,
        fast_mode=fast_mode,
        masked=masked,
        seed=seed,
        cotangents=cotangents,
    )
