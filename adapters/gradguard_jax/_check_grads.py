"""``gradguard_jax.check_grads``: ``jax.test_util.check_grads`` with gradguard's verdict.

Same call, ``check_grads(f, args, order, modes=("fwd", "rev"), atol=None, rtol=None,
eps=None)``, so switching is one import. What differs:

* **float32 works.** JAX's own check compares in the arguments' dtype with fixed tolerances
  (float32 needs loose ones, or x64 enabled globally). Here every derivative is judged by
  :func:`gradguard.check` in a float64 shadow (x64 enabled only around the check's own calls;
  the user's ``jax_enable_x64`` is never changed), against the measured noise.
* **A table, not two numbers.** A failure raises :class:`CheckGradsError`, an
  ``AssertionError`` (as JAX's does) carrying gradguard's per-argument report: which argument,
  which element, analytic against numeric.

How: ``f`` is reduced to a scalar with a random unit-norm cotangent ``c`` (not ones: ones hide
bugs), ``L(args) = <c, f(*args)>``. Order 1 ``"rev"`` checks ``jax.grad(L)`` (the VJP with
``c``), ``"fwd"`` checks ``jax.jvp(L)`` along each probe (``mode="forward"``); order 2 checks
Hessian-vector products of ``L`` (``order=2``: ``jax.jvp`` of ``jax.grad``, reverse over reverse
through a ``custom_vjp``), which exercise the derivative of both rules. Importing this module
does not import JAX.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from gradguard.errors import GradientCheckError, SettingsError
from gradguard.results import CheckReport

__all__ = ["CheckGradsError", "check_grads"]

_MODES: dict[str, Literal["forward", "reverse"]] = {"fwd": "forward", "rev": "reverse"}


class CheckGradsError(GradientCheckError):
    """``check_grads`` found a wrong derivative (an ``AssertionError``, as JAX's check raises).

    Attributes:
        report: The failing check's :class:`~gradguard.CheckReport` (the first one).
        reports: Every check made, ``(what, report)`` pairs (``"order 1, rev"``, ...).
    """

    def __init__(self, message: str, report: CheckReport, reports: list[tuple[str, CheckReport]]):
        super().__init__(message, report)
        self.reports = reports


def _cotangents(outputs: Sequence[Any], seed: int) -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    draws = [rng.standard_normal(np.shape(out)) for out in outputs]
    norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in draws))) or 1.0
    return [d / norm for d in draws]


def check_grads(
    f: Callable[..., Any],
    args: Sequence[Any],
    order: int,
    modes: Sequence[str] = ("fwd", "rev"),
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
    *,
    seed: int = 0,
) -> None:
    """Check ``f``'s derivatives at ``args`` up to ``order``, in forward and/or reverse mode.

    Args:
        f: A function of JAX arrays returning an array or a pytree of arrays.
        args: Its positional arguments (the arrays to differentiate with respect to).
        order: 1 (JVP/VJP) or 2 (also Hessian-vector products of ``<c, f>``).
        modes: ``"fwd"``, ``"rev"`` or both.
        atol: Accepted for JAX's signature; not used: gradguard's absolute floor is the
            measured finite-difference noise.
        rtol: The tolerance on the relative difference (default by dtype:
            1e-6 for the float64 shadow).
        eps: Absolute finite-difference step (default: the dtype's relative step).
        seed: Seed for the cotangent and the probe directions.

    Raises:
        CheckGradsError: a derivative is wrong (or could not be judged); an ``AssertionError``.
        SettingsError: ``order`` is not 1 or 2, or ``modes`` names something else.
    """
    import jax
    import jax.numpy as jnp

    import gradguard as gg

    del atol  # noise-based verdict: see the docstring
    if isinstance(order, bool) or order not in (1, 2):
        raise SettingsError(
            f"gradguard_jax.check_grads supports order=1 and order=2, got {order!r}; for higher "
            "orders use jax.test_util.check_grads"
        )
    modes = tuple(modes)
    if not modes or any(mode not in _MODES for mode in modes):
        raise SettingsError(f"modes must hold 'fwd' and/or 'rev', got {modes!r}")
    params = tuple(jnp.asarray(a) if isinstance(a, np.ndarray | float) else a for a in args)
    outputs = jax.tree_util.tree_leaves(f(*params))
    cotangents = _cotangents(outputs, seed)

    def scalar(values: tuple[Any, ...]) -> Any:
        outs = jax.tree_util.tree_leaves(f(*values))
        return sum(jnp.sum(out * c) for out, c in zip(outs, cotangents, strict=True))

    options: dict[str, Any] = {"eps": eps, "tolerance": rtol, "seed": seed}
    reports = [
        (f"order 1, {mode}", gg.check(scalar, params, mode=_MODES[mode], **options))
        for mode in modes
    ]
    if order == 2:
        reports.append(
            ("order 2 (Hessian-vector products)", gg.check(scalar, params, order=2, **options))
        )
    failed = [(what, report) for what, report in reports if not report.passed]
    if failed:
        what, report = failed[0]
        others = "".join(f"\nalso failed: {name}" for name, _ in failed[1:])
        raise CheckGradsError(
            f"check_grads: {what} is wrong (args are named by position){others}\n{report}",
            report,
            reports,
        )
