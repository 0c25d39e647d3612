"""The JAX zoo (tests/zoo/jax_models.py): bugs caught and named, correct models pass.

Every case is checked with ``gg.check(loss, params)`` and no ``grad`` (``jax.grad``, so the
custom rules are what is checked), with several seeds; after every check the params, the
module state (NNX batch statistics and RNG counters) and the global x64 flag are unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import pytest
from flax import nnx

import gradguard as gg
from zoo import jax_models

CASES = jax_models.all_cases()
SEEDS = (0, 1)


def leaves_of(params: Any) -> list[Any]:
    """Every array the params hold (for an NNX module: its whole state)."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params)
    return jax.tree_util.tree_leaves(params)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zoo_case_fails_on_exactly_the_corrupted_tensors(case: jax_models.Case) -> None:
    """A correct model passes; a planted bug fails on exactly the tensors it corrupts.

    The float32 models are evaluated in a float64 shadow: a 0.3% error in a float32
    custom_vjp is far below float32 finite-difference noise, and is still seen.
    """
    params, loss = case.build()
    for seed in SEEDS:
        before = leaves_of(params)
        report = gg.check(loss, params, seed=seed)
        assert set(report.failed) == set(case.corrupted), str(report)
        assert report.passed is (not case.corrupted)
        assert report.dtype == "float64"
        assert "float64 shadow" in str(report.notes["evaluation"])
        after = leaves_of(params)
        assert len(after) == len(before)
        assert all(a is b for a, b in zip(before, after, strict=True))
        assert jax.config.read("jax_enable_x64") is False
