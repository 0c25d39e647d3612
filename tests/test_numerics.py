"""Steps, tolerances and the seed's relative difference."""

from __future__ import annotations

import numpy as np
import pytest

from gradguard.engine import numerics


@pytest.mark.parametrize(
    ("dtype", "step"), [(np.float64, 6.06e-6), (np.float32, 4.92e-3), (np.float16, 9.92e-2)]
)
def test_default_step_is_the_cube_root_of_the_unit_roundoff(dtype: type, step: float) -> None:
    """The step balances truncation (h^2) and round-off (u/h): h = u^(1/3)."""
    assert numerics.default_step(dtype) == pytest.approx(step, rel=1e-2)
    assert numerics.default_step(dtype) ** 3 == pytest.approx(np.finfo(dtype).eps)


def test_tolerances_grow_as_precision_shrinks() -> None:
    """Each dtype has a tolerance, looser for less precise dtypes."""
    tols = [numerics.default_tolerance(d) for d in (np.float64, np.float32, np.float16)]
    assert tols == sorted(tols)
    assert tols[0] == 1e-6


def test_relative_difference_is_the_seed_formula() -> None:
    """||a - n|| / (||a|| + ||n||), computed like the seed recipe."""
    a, n = np.array([1.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0])
    expected = np.linalg.norm(a - n) / (np.linalg.norm(a) + np.linalg.norm(n))
    assert numerics.relative_difference(a, n) == expected
    assert numerics.relative_difference(a, -a) == 1.0


def test_relative_difference_of_two_zero_vectors_is_zero_not_nan() -> None:
    """Two all-zero gradients agree: 0/0 is reported as 0."""
    assert numerics.relative_difference(np.zeros(3), np.zeros(3)) == 0.0
