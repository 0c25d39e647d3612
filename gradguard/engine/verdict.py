"""From one tensor's probes to its status: the rules behind pass, fail, zero and inconclusive.

Each probe of a tensor gives an analytic value ``a_i``, a numeric value ``n_i`` and an estimate
``e_i`` of the finite-difference error of ``n_i`` (a-priori round-off on the first look, the
error measured between two steps on the second). The rules, in order:

1. **fail**: the disagreement exceeds what the tolerance and the noise allow, over the tensor's
   probes together (the seed's rule plus the noise) or in any one probe;
2. **zero**: nothing is left of either side once the noise is taken away (the numeric values
   are within the noise of 0, the analytic ones within the tolerance of the model's gradient
   scale) and the noise is small enough to see a gradient of that scale;
3. **inconclusive**: the noise allowance is larger than ``BLIND_FACTOR`` times the
   disagreement the tolerance names, so a wrong gradient of that size could have passed: the
   check could not see;
4. **pass**: otherwise.

There is no floor tied to the model's gradient scale in rule 1: a tensor whose gradient is a
millionth of the model's (behind a LayerScale) still fails when it is wrong by more than its
own noise. ``docs/numerics.md`` has the measurements.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from gradguard.results import Status

__all__ = ["NOISE_FACTOR", "Evidence", "allowance", "classify"]

FloatArray = npt.NDArray[np.float64]

# How many noise estimates a probe's disagreement may reach before it counts as a bug.
NOISE_FACTOR = 2.0

# A tensor is inconclusive when its noise allowance exceeds this many times the disagreement
# the tolerance names. The allowance is a bound (a-priori 4 units of round-off per evaluation,
# or 5 measured standard deviations, times NOISE_FACTOR): the noise actually seen is 4-10x
# smaller (docs/numerics.md), so at 8x the check still resolves the tolerance's disagreement
# with typical noise; beyond it, a wrong gradient of that size could pass.
BLIND_FACTOR = 8.0

# Round-off floor of any comparison, in units of the loss dtype's round-off at the model's
# gradient scale: two values this close are equal for every purpose of a check.
_FLOOR_ULPS = 16.0


class Evidence:
    """One tensor's probes as arrays, with the model-wide numbers the rules need."""

    def __init__(
        self,
        analytic: FloatArray,
        numeric: FloatArray,
        noise: FloatArray,
        tolerance: float,
        scale: float,
        u: float,
        u_numeric: float | None = None,
    ) -> None:
        """``u``: the round-off unit of the comparison's floor; ``u_numeric`` (when smaller):
        that of the finite differences alone, for an analytic gradient computed in a less
        precise dtype than the loss (float32 backprop against a float64 evaluation)."""
        self.analytic = analytic
        self.numeric = numeric
        self.noise = noise
        self.tolerance = tolerance
        self.scale = scale
        self.floor = _FLOOR_ULPS * u * scale
        # What the numeric side alone can tell from 0. It equals the floor unless the gradient
        # is less precise than the loss: a float32 gradient's floor is at the model's gradient
        # scale (float32 sums that cancel, a bias before BatchNorm), but a tensor whose float64
        # finite differences clearly see a gradient far below that scale (a branch behind a
        # LayerScale of 1e-6) is judged at its own scale: its backward sums are that small too.
        self.numeric_floor = self.floor
        if u_numeric is not None and u_numeric < u:
            self.numeric_floor = _FLOOR_ULPS * u_numeric * scale
            seen = np.abs(numeric) > NOISE_FACTOR * noise + self.numeric_floor
            if seen.any():
                own = float(np.sqrt(np.mean(np.square(numeric[seen]))))
                self.floor = self.numeric_floor + _FLOOR_ULPS * u * min(scale, own)

    @property
    def size(self) -> int:
        return int(self.analytic.size)

    def restricted(self, keep: npt.NDArray[np.bool_]) -> Evidence:
        """The same evidence, for the probes ``keep`` selects."""
        e = Evidence(
            self.analytic[keep], self.numeric[keep], self.noise[keep], self.tolerance, 1.0, 0.0
        )
        e.scale, e.floor, e.numeric_floor = self.scale, self.floor, self.numeric_floor
        return e

    def needed(self) -> float:
        """The disagreement the tolerance names, over all probes: ``tol (||a|| + ||n||)``."""
        return self.tolerance * float(np.linalg.norm(self.analytic) + np.linalg.norm(self.numeric))

    def noise_allowance(self) -> float:
        return NOISE_FACTOR * float(np.linalg.norm(self.noise))

    def signal(self) -> npt.NDArray[np.bool_]:
        """Probes whose numeric value stands out of the noise."""
        return np.abs(self.numeric) > NOISE_FACTOR * self.noise + self.numeric_floor

    def zero_difference(self) -> float:
        """The disagreement measured against the model's gradient scale, for a ~0 tensor."""
        denominator = self.scale * math.sqrt(self.size)
        gap = float(np.linalg.norm(self.numeric - self.analytic))
        return gap / denominator if denominator > 0.0 else 0.0


def allowance(e: Evidence) -> FloatArray:
    """How large each probe's ``|n_i - a_i|`` may be before it counts as a bug."""
    relative = e.tolerance * (np.abs(e.analytic) + np.abs(e.numeric))
    return relative + NOISE_FACTOR * e.noise + e.floor


def fails(e: Evidence) -> bool:
    """Rule 1: the seed's rule over all probes plus the noise, or any one probe on its own.

    The norm test sees errors spread thinly over many probes; the per-probe test keeps one far
    off probe from being averaged away by the noise allowance of many good ones.
    """
    gap = np.abs(e.numeric - e.analytic)
    allowed = e.needed() + e.noise_allowance() + e.floor * math.sqrt(e.size)
    if float(np.linalg.norm(gap)) > allowed:
        return True
    return bool(np.any(gap > allowance(e)))


def is_zero(e: Evidence) -> bool:
    """Rule 2's first half: both sides are ~0 once the noise is taken away."""
    if e.signal().any():
        return False
    near_zero = NOISE_FACTOR * e.noise + e.tolerance * e.scale + e.floor
    return bool(np.all(np.abs(e.analytic) <= near_zero))


def resolves_zero(e: Evidence) -> bool:
    """Whether the noise is small enough to see a gradient of the model's scale here.

    At a point where the model's whole analytic gradient is exactly 0 (a stationary point)
    there is no scale to see; both sides agree on zero.
    """
    if e.scale == 0.0:
        return True
    return e.noise_allowance() <= BLIND_FACTOR * e.tolerance * e.scale * math.sqrt(e.size)


def classify(e: Evidence) -> Status:
    """The status of a tensor from its probes (rules 1-4 of the module docstring)."""
    if fails(e):
        return Status.FAIL
    if is_zero(e):
        return Status.ZERO if resolves_zero(e) else Status.INCONCLUSIVE
    if e.noise_allowance() > BLIND_FACTOR * e.needed():
        return Status.INCONCLUSIVE
    return Status.PASS
