"""Numerical policy: the seed's relative difference, and step sizes and tolerances by dtype.

Central differences have a truncation error ~ h**2 * |J'''| / 6 and a round-off error
~ u * |J| / h, where u is the unit round-off of the dtype the loss is computed in.
Balancing the two gives the best step h ~ u**(1/3) (times the scale of the coordinate)
and a best attainable relative error ~ u**(2/3) times a conditioning factor that depends on
the function. ``docs/numerics.md`` has the measurements behind the constants below.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "GRADIENT_ULPS",
    "SUPPORTED_DTYPES",
    "Difference",
    "default_gradient_tolerance",
    "default_step",
    "default_tolerance",
    "relative_difference",
    "unit_roundoff",
]

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# The round-off of an analytic gradient computed in a less precise dtype than the loss, in
# units of that dtype's round-off (float32 backprop: within 1 unit norm-wise on the zoo).
GRADIENT_ULPS = 32.0


class Difference(NamedTuple):
    """One central difference, with its one-sided halves and round-off estimate."""

    numeric: float
    analytic: float
    forward: float
    backward: float
    roundoff: float
    span: float


# Tolerance on the seed's relative difference for each dtype the loss is computed in.
# Measured on the test zoo of correct hand-written backprops (docs/numerics.md): the worst
# correct tensor stays ~100x below these, while a 0.1% scale error (difference 5e-4) is
# still caught in float64.
_TOLERANCE = {
    np.dtype(np.float64): 1e-6,
    np.dtype(np.float32): 1e-2,
    np.dtype(np.float16): 1e-1,
}


# The smallest tolerance an analytic gradient computed in a dtype can meet when the finite
# differences come from a float64 evaluation: float32 backprop on the PyTorch zoo (MLP with a
# custom Function, conv + BatchNorm + dropout, GRU, LSTM) differs from float64 autodiff by at
# most 1e-7 norm-wise per tensor; 1e-5 leaves 100x and still catches a 0.1% error.
_GRADIENT_TOLERANCE = {
    np.dtype(np.float64): 1e-6,
    np.dtype(np.float32): 1e-5,
    np.dtype(np.float16): 1e-2,
}


# bfloat16 arrives as ml_dtypes' NumPy dtype, named here rather than imported (the engine is
# pure NumPy). Measured on the bfloat16 zoo in docs/numerics.md ("Mixed precision",
# benchmarks/bench_mixed_precision.py): with the measured spread (gradguard.engine.spread)
# widening the tensors whose own error is large, 1.2e-2 keeps 7 models x 4 modes x 3 seeds
# free of false alarms and catches and localizes all 24 planted 5% backward bugs (relative
# difference ~2.5e-2); 8e-3 does the same with twice as many tensors inconclusive.
_BFLOAT16 = "bfloat16"
_BFLOAT16_TOLERANCE = 1e-1
_BFLOAT16_GRADIENT_TOLERANCE = 1.2e-2


def default_gradient_tolerance(dtype: npt.DTypeLike) -> float:
    """The smallest default tolerance for an analytic gradient computed in ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.name == _BFLOAT16:
        return _BFLOAT16_GRADIENT_TOLERANCE
    return _GRADIENT_TOLERANCE.get(dtype, 1e-2)


# An analytic gradient's own error, in the units the engine's noise model multiplies (32 of
# them, relative to the probe and to the tensor's typical gradient). Half-precision backprop
# is far more accurate than 32 of its machine epsilons: PyTorch accumulates bfloat16 and
# float16 sums in float32, so a gradient element carries about one rounding. Measured per
# tensor against float64 autodiff on the mixed-precision zoo (docs/numerics.md): at most
# 5.3e-3 in bfloat16 (autocast or bfloat16 parameters) and 8.6e-4 in float16. The units are
# the largest that still catch a 5% error in one custom Function's backward (relative
# difference ~2.7e-2 in bfloat16) while the correct zoo passes; see docs/numerics.md.
_GRADIENT_ROUNDOFF = {"bfloat16": 4e-5, "float16": 1e-5}


def gradient_roundoff(dtype: npt.DTypeLike) -> float:
    """The round-off unit the noise model assumes for an analytic gradient in ``dtype``.

    The machine epsilon, except for the half-precision dtypes, whose measured accuracy is
    much better than their epsilon suggests (see ``_GRADIENT_ROUNDOFF``).
    """
    dtype = np.dtype(dtype)
    measured = _GRADIENT_ROUNDOFF.get(dtype.name)
    return measured if measured is not None else unit_roundoff(dtype)


def unit_roundoff(dtype: npt.DTypeLike) -> float:
    """The machine epsilon of a floating dtype (2.2e-16 for float64, 1.2e-7 for float32)."""
    return float(np.finfo(np.dtype(dtype)).eps)


def default_step(dtype: npt.DTypeLike) -> float:
    """The relative central-difference step for a dtype: u**(1/3).

    The step applied to a coordinate x is ``default_step(dtype) * max(1, |x|)``:
    about 6e-6 in float64, 4.9e-3 in float32 and 0.1 in float16.
    """
    return float(unit_roundoff(dtype) ** (1.0 / 3.0))


def default_tolerance(dtype: npt.DTypeLike) -> float:
    """The default tolerance on the relative difference for a loss computed in ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.name == _BFLOAT16:
        return _BFLOAT16_TOLERANCE
    return _TOLERANCE[dtype]


def relative_difference(analytic: npt.ArrayLike, numeric: npt.ArrayLike) -> float:
    """The seed documents' relative difference ``||a - n|| / (||a|| + ||n||)``.

    Computed with ``np.linalg.norm`` exactly as the seed recipe does, so that seed mode
    reproduces its numbers. Two all-zero vectors agree perfectly: 0/0 is 0, not NaN.
    """
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    numerator = np.linalg.norm(a - n)
    denominator = np.linalg.norm(a) + np.linalg.norm(n)
    if denominator == 0.0:
        return 0.0
    return float(numerator / denominator)
