"""The analytic gradient's measured round-off: an allowance per tensor from a spread sample.

A half-precision gradient (bfloat16 or float16 parameters, a float32 model under autocast)
differs from the exact gradient of the same function by far more than its dtype's epsilon
suggests in some tensors and far less in others: sums that cancel (a LayerNorm weight, an
output bias), products of large intermediates, each rounded once. No a-priori bound from the
gradient alone sees which tensor is which (docs/numerics.md, "Mixed precision"). So an
adapter may measure it: the same gradient computed again with different rounding and the
same mathematics (the loss scaled by a factor that is not a power of two, the gradient
divided back) differs from the first by a sample of the rounding alone. Its root mean square
over a tensor is that tensor's *spread*; a probe of the tensor (unit direction or coordinate)
is allowed ``SPREAD_FACTOR`` spreads of disagreement on top of the other noise.

A bug in the backward is the same in both gradients and cancels from the spread: it cannot
widen its own allowance. What the second gradient does not resample (the forward's rounding:
the same activations are saved for both backward passes) is covered by the factor, measured on
the zoo in ``benchmarks/bench_mixed_precision.py``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from gradguard.engine.layout import Layout
from gradguard.engine.verdict import BLIND_FACTOR, NOISE_FACTOR, Evidence

__all__ = [
    "SPREAD_FACTOR",
    "blinded_by_spread",
    "joint_spread",
    "screens_with_spread",
    "spread_hint",
    "spread_tolerance",
    "tensor_spreads",
]

FloatArray = npt.NDArray[np.float64]

# Allowed disagreement per probe in units of the tensor's measured spread (RMS of the
# difference between two roundings of the gradient). See docs/numerics.md for the zoo.
SPREAD_FACTOR = 2.0


def screens_with_spread(gradient_dtype: npt.DTypeLike) -> bool:
    """Whether a gradient of this dtype, with a measured spread, may be screened jointly.

    A float32 (or more precise) gradient's spreads are small (at most ~1e-4 of a tensor's
    gradient, docs/numerics.md): added in quadrature over every tensor of a joint probe they
    still leave a 0.1% bug ten times above them. A half-precision gradient's spreads (4-40%)
    hid a 5% autocast bug in a joint probe: it is probed per tensor.
    """
    return float(np.finfo(np.dtype(gradient_dtype)).eps) <= _FLOAT32_EPS


_FLOAT32_EPS = float(np.finfo(np.float32).eps)

# The default tolerance of a float32 gradient whose round-off is measured. Trained to a low
# loss (a GPT-style decoder, 100-200 AdamW steps on its batch), a float32 gradient is 1e-5 to
# 4e-4 of a tensor's norm off the exact one in the tensors whose sums cancel (biases, the last
# LayerNorm; docs/numerics.md): judged at the float32 gradient's a-priori 1e-5, those tensors
# are blinded by their own spread (inconclusive). A 0.1% error (relative difference 5e-4)
# stays 5x above 1e-4.
_FLOAT32_SPREAD_TOLERANCE = 1e-4


def spread_tolerance(gradient_dtype: npt.DTypeLike, spreads: FloatArray) -> float:
    """The smallest default tolerance for a gradient with these measured spreads (0: none).

    Half-precision gradients keep their own (``default_gradient_tolerance``, calibrated with
    their spreads); a float32 gradient with a measured spread is judged at 1e-4.
    """
    if not bool(np.any(spreads > 0.0)) or not screens_with_spread(gradient_dtype):
        return 0.0
    if float(np.finfo(np.dtype(gradient_dtype)).eps) < _FLOAT32_EPS:
        return 0.0  # a float64 gradient's spread (none is measured today) keeps its tolerance
    return _FLOAT32_SPREAD_TOLERANCE


def tensor_spreads(spread: FloatArray | None, layout: Layout) -> FloatArray:
    """Per tensor, the root mean square of the spread sample over its elements (0: none)."""
    out = np.zeros(len(layout))
    if spread is None:
        return out
    for s, segment in enumerate(layout):
        part = spread[segment.offset : segment.stop]
        if part.size:
            out[s] = math.sqrt(float(np.dot(part, part)) / part.size)
    return out


def joint_spread(spreads: FloatArray, move_norms: dict[int, float]) -> float:
    """The spread along a joint direction: tensor ``t`` moved by a vector of norm
    ``move_norms[t]`` contributes ``norm * spread_t``; independent tensors add in quadrature."""
    return SPREAD_FACTOR * math.sqrt(
        sum((norm * float(spreads[s])) ** 2 for s, norm in move_norms.items())
    )


def _spread_allowance(e: Evidence, spread: float) -> float:
    """The part of a tensor's noise allowance (over all its probes) that its spread makes."""
    return NOISE_FACTOR * SPREAD_FACTOR * spread * math.sqrt(e.size)


def blinded_by_spread(e: Evidence, spread: float) -> bool:
    """Whether the measured spread alone hides a disagreement of the tolerance's size: the
    tensor is inconclusive whatever the finite-difference step (a wider step, which lowers
    the loss's round-off, does not help and is not tried)."""
    return spread > 0.0 and _spread_allowance(e, spread) > BLIND_FACTOR * e.needed()


def spread_hint(e: Evidence, spread: float, dtype: str) -> str:
    """An inconclusive tensor's hint when the analytic gradient's own rounding blinds it."""
    signal = float(np.linalg.norm(e.analytic) + np.linalg.norm(e.numeric)) or 1.0
    judgeable = _spread_allowance(e, spread) / (BLIND_FACTOR * signal)
    return (
        f"the {dtype} gradient's own rounding (measured spread {spread:.2g} per probe, "
        f"{spread * math.sqrt(e.size) / signal:.1%} of this tensor's probes) hides a "
        f"disagreement of the tolerance's size; the smallest tolerance it can judge is "
        f"~{judgeable:.1g}: check this tensor in float32, or pass tolerance>={judgeable:.1g}"
    )
