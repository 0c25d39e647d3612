"""Stratified coordinates and random directions, from a private generator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradguard.engine import sampling


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=12),
    k=st.integers(min_value=0, max_value=500),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_allocation_is_stratified_and_exact(sizes: list[int], k: int, seed: int) -> None:
    """k coordinates in all (capped by the total), one per tensor first, never over a size."""
    counts = sampling.allocate(sizes, k, np.random.default_rng(seed))
    assert sum(counts) == min(k, sum(sizes))
    assert all(0 <= c <= s for c, s in zip(counts, sizes, strict=True))
    if k >= len(sizes):
        assert all(c >= 1 for c in counts)
    else:
        assert counts.count(1) == k


def test_sampled_coordinates_are_distinct_sorted_and_in_range() -> None:
    """Each tensor's coordinates are distinct positions inside it."""
    rng = np.random.default_rng(0)
    picks = sampling.sample_coordinates([10, 1000, 3], [10, 50, 0], rng)
    assert picks[0].tolist() == list(range(10))
    assert len(set(picks[1].tolist())) == 50 and picks[1].max() < 1000
    assert np.all(np.diff(picks[1]) > 0)
    assert picks[2].size == 0


@pytest.mark.parametrize("size", [1, 7, 8, 9, 1000])
def test_rademacher_signs_give_every_element_equal_weight(size: int) -> None:
    """Signs are +1 or -1 (int8), one per element, so signs / sqrt(n) is a unit vector."""
    signs = sampling.rademacher_signs(size, np.random.default_rng(size))
    assert signs.shape == (size,) and signs.dtype == np.int8
    assert set(np.unique(signs).tolist()) <= {-1, 1}
    v = signs / np.sqrt(size)
    assert np.linalg.norm(v) == pytest.approx(1.0)
    if size == 1000:
        assert 400 < np.sum(signs > 0) < 600


def test_sampling_never_touches_the_global_random_state() -> None:
    """Draws come from the generator passed in, not from np.random's global state."""
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    rng = np.random.default_rng(1)
    sampling.allocate([5, 5, 5], 2, rng)
    sampling.sample_coordinates([100], [10], rng)
    sampling.rademacher_signs(100, rng)
    assert np.array_equal(np.random.get_state()[1], before)
