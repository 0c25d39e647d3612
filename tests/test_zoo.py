"""The zoo: hand-written NumPy backprops, correct and with planted bugs (tests/zoo/).

Correct variants must pass in float64 and float32; each planted bug must fail on exactly
the tensors it corrupts, with several seeds, so that the sampling of coordinates and
directions is not what makes the verdict right.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradguard as gg
from zoo import numpy_models

CASES = numpy_models.all_cases()
SEEDS = (0, 1, 2)


def _snapshot(params: object) -> list[bytes]:
    if isinstance(params, dict):
        return [b for v in params.values() for b in _snapshot(v)]
    return [np.asarray(params).tobytes()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("seed", SEEDS)
def test_zoo_case_fails_on_exactly_the_corrupted_tensors(
    case: numpy_models.Case, seed: int
) -> None:
    """A correct backprop passes; a buggy one fails on exactly the tensors its bug corrupts."""
    before = _snapshot(case.params)
    report = gg.check(case.loss, case.params, case.grad, seed=seed)
    assert set(report.failed) == set(case.corrupted), str(report)
    assert report.passed is (not case.corrupted)
    assert _snapshot(case.params) == before


BUGS = [c for c in CASES if c.corrupted]


@pytest.mark.parametrize("case", BUGS, ids=[c.name for c in BUGS])
def test_zoo_bug_names_an_element_with_a_real_disagreement(case: numpy_models.Case) -> None:
    """A failing tensor's worst element shows analytic and numeric values that disagree."""
    report = gg.check(case.loss, case.params, case.grad, seed=0)
    for name in case.corrupted:
        param = report[name]
        assert param.worst_index is not None
        assert param.worst_analytic is not None and param.worst_numeric is not None
        assert param.worst_analytic != pytest.approx(param.worst_numeric, rel=1e-4, abs=1e-12)
        assert param.hint


WRONG_SIGN = [c for c in BUGS if c.bug == "wrong_sign"]


@pytest.mark.parametrize("case", WRONG_SIGN, ids=[c.name for c in WRONG_SIGN])
def test_zoo_wrong_sign_is_diagnosed(case: numpy_models.Case) -> None:
    """A flipped sign is reported as such in the hint."""
    report = gg.check(case.loss, case.params, case.grad, seed=0)
    for name in case.corrupted:
        assert "sign" in report[name].hint


def test_zoo_covers_every_kind_of_bug_in_both_dtypes() -> None:
    """The zoo plants every kind of bug the issue lists, in float64 and float32."""
    kinds64 = {c.bug for c in BUGS if c.dtype == np.float64}
    kinds32 = {c.bug for c in BUGS if c.dtype == np.float32}
    assert kinds64 == {"wrong_factor", "wrong_sign", "missing_term", "one_row", "scale_0.1pct"}
    assert kinds32 == {"wrong_factor", "wrong_sign", "missing_term", "one_row"}
