"""The engine's reductions: directions by global index, and a partitioned view's path.

A view that sets ``partitioned`` is never asked for whole vectors: the engine calls its
reductions (``original_summary``, ``element``, ``write_along``, ...). Those of the base
:class:`~gradguard.kit.contract.FlatView` compute them from the whole vectors, so the same view
with the flag set must give exactly the report the engine's own whole-vector path gives.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest

from gradguard.engine import Settings, run_check
from gradguard.engine.directions import Direction
from gradguard.engine.sampling import rademacher_signs
from gradguard_numpy._adapter import NumpyView
from tests.zoo import numpy_models


class _Partitioned(NumpyView):
    partitioned = True


def _record(view_type: type[NumpyView], case: Any, settings: Settings) -> dict[str, Any]:
    with view_type(case.params, case.loss, case.grad) as view:
        record = run_check(view, settings).to_dict()
    record.pop("duration_s")
    return record


def _embedding() -> Any:
    """A sparse gradient: an embedding table of which the batch uses rows 1 and 4."""
    rng = np.random.default_rng(1)
    params = {"E": rng.normal(size=(12, 3)), "w": rng.normal(size=3)}
    rows = np.array([1, 4, 4])

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(np.tanh(p["E"][rows] @ p["w"])))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        e = p["E"][rows]
        d = 1.0 - np.tanh(e @ p["w"]) ** 2
        g = np.zeros_like(p["E"])
        np.add.at(g, rows, d[:, None] * p["w"])
        return {"E": g, "w": e.T @ d}

    return types.SimpleNamespace(name="embedding", params=params, loss=loss, grad=grad)


@pytest.mark.parametrize("strategy", ["per-tensor", "screen"])
def test_a_partitioned_view_gets_the_same_report_as_whole_vectors(strategy: str) -> None:
    """Zoo cases, correct and buggy, float64 and float32, that take every path (rounded stores,
    bisection, sparse gradients, kinks): the served reductions give the whole-vector report
    exactly."""
    paths = ("relu_mlp/", "relu_kinks/", "one_row", "softmax_reg/float32", "wrong_factor_W2")
    cases = [c for c in numpy_models.all_cases() if any(p in c.name for p in paths)]
    assert len(cases) >= 10
    cases.append(_embedding())
    records = []
    for case in cases:
        settings = Settings(seed=3, strategy=strategy)
        record = _record(_Partitioned, case, settings)
        assert record == _record(NumpyView, case, settings), case.name
        records.append(record)
    # The paths that read the gradient elementwise were taken.
    assert any("coordinates" in r["notes"] for r in records)  # sampled among non-zeros
    assert any(p["judged_by"] == "bisected" for r in records for p in r["params"])


def test_a_direction_reads_the_signs_rademacher_signs_draws_by_global_index() -> None:
    """Packed directions draw what rademacher_signs draws; any positions read the same values,
    and a restriction is zero outside its block with unit norm inside."""
    for size in (1, 7, 8, 9, 1000):
        d = Direction.draw(size, np.random.default_rng(size))
        signs = rademacher_signs(size, np.random.default_rng(size))
        assert np.array_equal(d.signs(), signs)
        whole = d.values()
        assert np.array_equal(whole, signs / np.sqrt(size))
        positions = np.random.default_rng(0).permutation(size)
        assert np.array_equal(d.values(positions), whole[positions])
        if size > 2:
            part = d.restrict(1, size - 1)
            values = part.values()
            assert values[0] == 0.0 and values[-1] == 0.0
            assert np.linalg.norm(values) == pytest.approx(1.0)
            assert np.array_equal(part.values(positions), values[positions])


def test_a_block_of_a_direction_reads_the_same_values_as_its_positions() -> None:
    """values_between (a contiguous shard) equals values at those positions, restricted or not,
    across byte boundaries."""
    d = Direction.draw(101, np.random.default_rng(4))
    for v in (d, d.restrict(13, 77)):
        whole = v.values()
        for first, stop in ((0, 101), (3, 5), (7, 9), (8, 16), (13, 77), (50, 101), (90, 91)):
            assert np.array_equal(v.values_between(first, stop), whole[first:stop])


def test_joint_directions_split_one_draw_and_read_their_part_by_global_index() -> None:
    """Direction.draw_joint draws the signs rademacher_signs draws over all tensors at once;
    each tensor's part (at a bit offset, across byte boundaries) reads its own slice of them
    through signs, values, values_between and a restriction."""
    sizes = [3, 1, 13, 0, 8, 21]
    parts = Direction.draw_joint(sizes, np.random.default_rng(9))
    signs = rademacher_signs(sum(sizes), np.random.default_rng(9))
    start = 0
    for size, part in zip(sizes, parts, strict=True):
        own = signs[start : start + size]
        start += size
        assert np.array_equal(part.signs(), own)
        whole = part.values()
        assert np.array_equal(whole, own / np.sqrt(size) if size else own)
        positions = np.arange(size)[::-1].copy()
        assert np.array_equal(part.values(positions), whole[positions])
        for first in range(size):
            assert np.array_equal(part.values_between(first, size), whole[first:])
        if size > 2:
            block = part.restrict(1, size - 1)
            assert np.array_equal(block.values_between(0, size), block.values())
            assert np.array_equal(block.values(positions), block.values()[positions])
