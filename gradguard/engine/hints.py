"""One line on what a tensor's numbers suggest: the likely cause, or nothing.

A wrong cause sends the user the wrong way, so each hint is given only when the numbers
support it: a constant factor only when every probe that carries signal shows the same ratio,
a confined error only when the element bisection found accounts for the disagreement, swapped
or transposed gradients only when the other arrangement matches the finite differences.
``benchmarks/measure_hints.py`` measures how often each hint is right (docs/numerics.md).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gradguard.engine.numerics import relative_difference
from gradguard.engine.verdict import NOISE_FACTOR, Evidence

__all__ = ["diagnose_failure", "zero_hint"]

# A ratio is "constant" when every signal probe's ratio is within this of the fitted factor
# (plus the probe's noise): missing terms move the ratio by a few percent between probes.
_RATIO_SPREAD = 2e-3


def _where(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]"


def diagnose_failure(
    e: Evidence,
    *,
    confined: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    matches: str = "",
) -> str:
    """The hint for a failing tensor.

    Args:
        e: The tensor's probes.
        confined: The first and last element of the block bisection showed to carry the
            error, when the error is confined to a small part of the tensor.
        matches: A finding from the other arrangements of the gradient ("the analytic
            gradient of W2 matches ..."), which outranks the rest.
    """
    if matches:
        return matches
    a, n = e.analytic, e.numeric
    norm_a = float(np.linalg.norm(a))
    norm_n = float(np.linalg.norm(n))
    if confined is not None:
        first, last = confined
        where = _where(first) if first == last else f"{_where(first)} to {_where(last)}"
        return (
            f"the error is confined to {where} (bisection: the rest of the tensor agrees): "
            "an indexing bug, one row or column?"
        )
    if norm_a <= 1e-3 * norm_n:
        return (
            "the analytic gradient is ~0 but the loss depends on this tensor: a missing term, "
            "a detached branch, a stop_gradient?"
        )
    if norm_n <= 1e-3 * norm_a:
        return (
            "the loss does not depend on this tensor (numeric ~0) but the analytic gradient "
            "is not zero: a gradient for the wrong tensor, or an unused parameter?"
        )
    factor = _constant_factor(e)
    if factor is not None:
        if abs(factor + 1.0) < _RATIO_SPREAD:
            return "analytic = -1 x numeric: the sign is wrong"
        return (
            f"analytic = {factor:.6g} x numeric on every probe: a wrong constant factor "
            "(a missing 1/m or 1/2, a doubled term)?"
        )
    off = relative_difference(a, n)
    how = (
        "by a ratio that varies between probes, all over the tensor"
        if int(np.sum(e.signal())) >= 2
        else "on the one probe above the noise"
    )
    return (
        f"analytic and numeric disagree (difference {off:.2g}) {how}: a missing or extra "
        "term, or a wrong derivative on its path (an activation's)?"
    )


def _constant_factor(e: Evidence) -> float | None:
    """The ratio analytic / numeric when all probes that carry signal agree on it."""
    strong = e.signal() & (e.analytic != 0.0)  # the numeric side carries the noise
    if int(strong.sum()) < 2:
        return _sign_on_one_probe(e, strong)
    a, n, noise = e.analytic[strong], e.numeric[strong], e.noise[strong]
    factor = float(np.dot(a, n) / np.dot(n, n))
    if factor == 0.0:
        return None
    spread = np.abs(a - factor * n)
    allowed = _RATIO_SPREAD * np.abs(a) + NOISE_FACTOR * noise * abs(factor)
    return factor if bool(np.all(spread <= allowed)) else None


def _sign_on_one_probe(e: Evidence, strong: npt.NDArray[np.bool_]) -> float | None:
    """-1 when the one probe above the noise reads ``analytic = -numeric`` and the others
    agree within their noise; a factor other than -1 from one probe names nothing.

    A small tensor escalated by the screen can have a single probe that resolves it (a
    softmax's output bias: its gradient sums to 0, so random directions over its 4 elements
    often cancel), and a sign error is the one factor one probe can name.
    """
    if int(strong.sum()) != 1:
        return None
    j = int(np.argmax(strong))
    a, n = float(e.analytic[j]), float(e.numeric[j])
    if n == 0.0 or abs(a / n + 1.0) >= _RATIO_SPREAD:
        return None
    gap = np.abs(e.analytic + e.numeric)
    allowed = _RATIO_SPREAD * np.abs(e.analytic) + NOISE_FACTOR * e.noise + e.numeric_floor
    return -1.0 if bool(np.all(gap <= allowed)) else None


def zero_hint(all_analytic_zero: bool) -> str:
    """The hint for a tensor whose gradient is ~0 on both sides."""
    if all_analytic_zero:
        return (
            "gradient 0 on both sides: an unused parameter, or one whose effect a normalization "
            "or a softmax cancels (a bias before BatchNorm or LayerNorm, the key bias of attention)"
        )
    return (
        "gradient ~0 on both sides next to the model's gradient scale: a parameter whose effect "
        "a normalization or a softmax cancels (a bias before BatchNorm or LayerNorm, the key "
        "bias of attention), or an unused parameter"
    )
