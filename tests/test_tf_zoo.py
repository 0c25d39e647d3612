"""The Keras zoo (tests/zoo/tf_models.py): float32 models, correct and with planted bugs.

Correct models (a CNN with Conv2D, BatchNormalization, Dropout and L2, GRU and SimpleRNN
nets, a correct tf.custom_gradient layer) must pass; each planted bug must fail on exactly
the variables it corrupts; with several seeds, so that the sampling of coordinates and
directions is not what makes the verdict right. Every variable of every model, trainable
or not (BatchNormalization statistics, the Dropout seed generator), is bit-identical after
every check.
"""

from __future__ import annotations

import pytest

import gradguard as gg
from zoo import tf_models

CASES = tf_models.all_cases()
SEEDS = (0, 1, 2)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zoo_case_fails_on_exactly_the_corrupted_variables(case: tf_models.Case) -> None:
    """A correct model passes and a buggy one fails on exactly the variables its bug
    corrupts, with every seed; all variables are bit-identical after each check."""
    model, loss = case.make()
    for seed in SEEDS:
        before = tf_models.snapshot(model)
        report = gg.check(loss, model, seed=seed)
        assert set(report.failed) == set(case.corrupted), str(report)
        assert report.passed is (not case.corrupted)
        assert tf_models.snapshot(model) == before


BUGS = tf_models.bug_cases()


@pytest.mark.parametrize("case", BUGS, ids=[c.name for c in BUGS])
def test_zoo_bug_is_described_where_it_is(case: tf_models.Case) -> None:
    """A failing variable's report names an element whose analytic and numeric values
    disagree, and the hint says what the numbers suggest (a factor, a missing gradient)."""
    model, loss = case.make()
    report = gg.check(loss, model, seed=0)
    for name in case.corrupted:
        param = report[name]
        assert param.worst_index is not None and param.hint
        assert param.worst_analytic != pytest.approx(param.worst_numeric, rel=1e-4, abs=1e-9)
    if case.name == "misplaced_stop_gradient":
        assert "stop_gradient" in report["stopped/stopped/kernel"].hint
        assert report.notes["no_gradient"] == "stopped/stopped/kernel"
    if case.name == "custom_gradient_kernel_bug":
        assert "analytic = 2 x numeric" in report["kernel_bug/custom/kernel"].hint
