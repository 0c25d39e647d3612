"""The measured spread of a half-precision or float32 gradient (gradguard.engine.spread)."""

from __future__ import annotations

import math

import numpy as np

from gradguard.engine.layout import Layout
from gradguard.engine.spread import (
    SPREAD_FACTOR,
    blinded_by_spread,
    joint_spread,
    screens_with_spread,
    spread_hint,
    spread_tolerance,
    tensor_spreads,
)
from gradguard.engine.verdict import Evidence


def _layout() -> Layout:
    return Layout.from_tensors([("w", (2, 2), np.float32), ("b", (2,), np.float32)])


def test_each_tensor_gets_the_rms_of_its_part_of_the_sample() -> None:
    """The spread of a tensor is the root mean square of the sample over its elements; no
    sample (an adapter that measures nothing) gives zeros."""
    sample = np.array([3.0, -3.0, 3.0, -3.0, 0.0, 2.0])
    spreads = tensor_spreads(sample, _layout())
    assert np.allclose(spreads, [3.0, math.sqrt(2.0)])
    assert not tensor_spreads(None, _layout()).any()


def test_a_joint_direction_adds_the_tensors_spreads_in_quadrature() -> None:
    """Tensor t moved by a vector of norm n_t contributes n_t * spread_t, independently."""
    spreads = np.array([1.0, 2.0])
    assert math.isclose(joint_spread(spreads, {0: 3.0, 1: 2.0}), SPREAD_FACTOR * 5.0)


def test_a_spread_larger_than_the_tolerance_blinds_and_the_hint_says_why() -> None:
    """A tensor whose spread alone exceeds what the tolerance names is blinded (no step
    helps); a small spread does not blind; the hint names the gradient's own rounding."""
    analytic = np.array([1.0, -0.5, 0.8])
    e = Evidence(analytic, analytic * 1.001, np.zeros(3), 1.2e-2, 1.0, 1e-16)
    assert blinded_by_spread(e, 0.5)
    assert not blinded_by_spread(e, 1e-4)
    assert not blinded_by_spread(e, 0.0)
    assert "bfloat16 gradient's own rounding" in spread_hint(e, 0.5, "bfloat16")


def test_float32_spreads_screen_and_set_the_tolerance_half_precision_ones_do_not() -> None:
    """A float32 gradient with a measured spread screens jointly and is judged at 1e-4 (its
    own error after training reaches ~1e-4); a half-precision one is probed per tensor at its
    own calibrated tolerance; no spread, no change."""
    measured, none = np.array([0.0, 1e-9]), np.zeros(2)
    assert screens_with_spread(np.float32) and screens_with_spread(np.float64)
    assert not screens_with_spread(np.float16)
    assert spread_tolerance(np.float32, measured) == 1e-4
    assert spread_tolerance(np.float32, none) == 0.0
    assert spread_tolerance(np.float16, measured) == 0.0
    assert spread_tolerance(np.float64, measured) == 0.0
