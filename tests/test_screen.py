"""Joint screening (gradguard.engine.screen): constant cost when right, localization when wrong."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import gradguard as gg
from gradguard.engine import DEFAULT_COORDINATES, DEFAULT_DIRECTIONS, Settings
from gradguard.errors import SettingsError

FloatDict = dict[str, np.ndarray[Any, Any]]


def _chain(n_tensors: int, dtype: type = np.float64) -> tuple[FloatDict, Any, Any]:
    """A smooth loss over ``n_tensors`` tensors of different sizes and gradient scales."""
    rng = np.random.default_rng(n_tensors)
    params = {
        f"t{i}": rng.standard_normal((3 + i % 5, 4)).astype(dtype) * (0.5 + i % 3)
        for i in range(n_tensors)
    }
    weights = {name: 0.3 ** (i % 3) for i, name in enumerate(params)}

    def loss(p: FloatDict) -> Any:
        return sum(weights[k] * np.sum(np.sin(v) + 0.1 * v * v) for k, v in p.items())

    def grad(p: FloatDict) -> FloatDict:
        return {k: (weights[k] * (np.cos(v) + 0.2 * v)).astype(v.dtype) for k, v in p.items()}

    return params, loss, grad


def _snapshot(params: FloatDict) -> list[bytes]:
    return [v.tobytes() for v in params.values()]


@pytest.mark.parametrize("n_tensors", [4, 40])
def test_a_correct_model_costs_the_same_whatever_the_number_of_tensors(n_tensors: int) -> None:
    """Screening a correct model: 2 + 2 (the coordinates, read jointly) + 2 x directions
    evaluations, any T."""
    params, loss, grad = _chain(n_tensors)
    report = gg.check(loss, params, grad, seed=0, strategy="screen")
    assert report.passed, str(report)
    assert report.evaluations == 2 + 2 + 2 * DEFAULT_DIRECTIONS
    assert {p.judged_by for p in report.params} == {"screen"}
    assert report.notes["strategy"] == "screen"
    assert report.notes["screen_evaluations"] == 2 * DEFAULT_DIRECTIONS
    assert sum(p.coordinates for p in report.params) == DEFAULT_COORDINATES
    assert sum(p.evaluations for p in report.params) == 0  # nothing probed on its own
    assert report.notes["coordinates_jointly"]


def test_per_tensor_probing_stays_available() -> None:
    """strategy='per-tensor' probes every tensor on its own, as before screening existed."""
    params, loss, grad = _chain(12)
    report = gg.check(loss, params, grad, seed=0, strategy="per-tensor")
    assert report.passed, str(report)
    assert report.evaluations == 2 + 2 * (12 + DEFAULT_DIRECTIONS * 12)
    assert {p.judged_by for p in report.params} == {"probed"}
    assert "strategy" not in report.notes


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bug", ["scale", "element"])
def test_one_wrong_tensor_is_found_by_group_testing_and_bisected(seed: int, bug: str) -> None:
    """A 0.1% scale error, or x2 on one element, fails exactly its tensor; the rest screened."""
    params, loss, grad = _chain(32)
    wrong = "t17"

    def buggy(p: FloatDict) -> FloatDict:
        g = grad(p)
        if bug == "scale":
            g[wrong] = g[wrong] * 1.001
        else:
            g[wrong][1, 2] *= 2.0
        return g

    before = _snapshot(params)
    report = gg.check(loss, params, buggy, seed=seed, strategy="screen")
    assert report.failed == (wrong,), str(report)
    assert report[wrong].judged_by == "bisected"
    assert report[wrong].evaluations > 0
    assert {p.judged_by for p in report.params if p.name != wrong} <= {"screen", "probed"}
    if bug == "element":
        assert report[wrong].worst_index == (1, 2)
    n = params[wrong].size
    assert report.evaluations <= 40 + 2 * math.log2(32) + 4 * math.log2(n)
    assert _snapshot(params) == before


def test_a_tensor_with_exactly_zero_gradient_is_screened_as_zero() -> None:
    """A tensor the loss ignores is judged zero by the screen, not noise/noise."""
    params, loss, grad = _chain(8)
    params["unused"] = np.ones((5, 3))

    def loss_with(p: FloatDict) -> Any:
        return loss({k: v for k, v in p.items() if k != "unused"})

    def grad_with(p: FloatDict) -> FloatDict:
        return {**grad({k: v for k, v in p.items() if k != "unused"}), "unused": np.zeros((5, 3))}

    report = gg.check(loss_with, params, grad_with, seed=0, strategy="screen")
    assert report.passed, str(report)
    assert report["unused"].status is gg.Status.ZERO
    assert report["unused"].judged_by == "screen"


def test_a_missing_gradient_where_the_loss_depends_on_the_tensor_fails() -> None:
    """An analytic zero where the true gradient is not: the screen does not hide it."""
    params, loss, grad = _chain(8)

    def buggy(p: FloatDict) -> FloatDict:
        return {**grad(p), "t3": np.zeros_like(p["t3"])}

    report = gg.check(loss, params, buggy, seed=0, strategy="screen")
    assert report.failed == ("t3",), str(report)


def test_a_float32_native_model_is_screened_with_a_measured_noise() -> None:
    """float32 parameters and loss: correct passes, a 1% error fails on exactly its tensor."""
    params, loss, grad = _chain(16, np.float32)
    report = gg.check(loss, params, grad, seed=0, strategy="screen")
    assert report.passed, str(report)
    assert report.dtype == "float32"
    # A second look at half the step for each joint probe: four more evaluations.
    assert report.notes["screen_evaluations"] == 4 * DEFAULT_DIRECTIONS

    def buggy(p: FloatDict) -> FloatDict:
        g = grad(p)
        g["t5"] = g["t5"] * np.float32(1.1)
        return g

    report = gg.check(loss, params, buggy, seed=0, strategy="screen")
    assert report.failed == ("t5",), str(report)


def test_screening_needs_directions_and_says_when_it_did_not_screen() -> None:
    """directions=0 or sample='all' probes per tensor, and the notes say why."""
    params, loss, grad = _chain(4)
    report = gg.check(loss, params, grad, seed=0, directions=0, sample=16, strategy="screen")
    assert report.passed
    assert str(report.notes["strategy"]).startswith("per-tensor")
    assert {p.judged_by for p in report.params} == {"probed"}


def test_an_unknown_strategy_is_a_settings_error() -> None:
    """strategy must be 'screen' or 'per-tensor'; the message names both."""
    with pytest.raises(SettingsError, match="'screen', 'per-tensor'"):
        Settings(strategy="joint")


def test_the_report_records_how_each_tensor_was_judged() -> None:
    """judged_by and evaluations are in the JSON-ready dict of every tensor."""
    params, loss, grad = _chain(4)
    report = gg.check(loss, params, grad, seed=0, strategy="screen")
    record = report.params[0].to_dict()
    assert record["judged_by"] == "screen"
    assert isinstance(record["evaluations"], int)


# The cost of a check that screens clean in at most two rounds of joint probes.
_TWO_ROUNDS = 2 + 2 + 2 * 2 * DEFAULT_DIRECTIONS


def test_a_thousand_numpy_tensors_screen_clean_at_a_constant_cost() -> None:
    """1,000 float64 tensors, all cleared by one round of joint probes: 22 evaluations."""
    params, loss, grad = _chain(1000)
    report = gg.check(loss, params, grad, seed=0, strategy="screen")
    assert report.passed, str(report)
    assert {p.judged_by for p in report.params} == {"screen"}
    assert report.evaluations <= _TWO_ROUNDS


def test_one_wrong_tensor_among_a_thousand_is_found_within_the_budget() -> None:
    """A 0.1% scale error in one of 1,000 tensors: exactly that tensor fails, within
    40 + 2 log2(T) + 4 log2(n) evaluations."""
    params, loss, grad = _chain(1000)

    def buggy(p: FloatDict) -> FloatDict:
        g = grad(p)
        g["t500"] = g["t500"] * 1.001
        return g

    report = gg.check(loss, params, buggy, seed=0, strategy="screen")
    assert report.failed == ("t500",), str(report)
    assert report.evaluations <= 40 + 2 * math.log2(1000) + 4 * math.log2(params["t500"].size)


# -- sampled coordinates read jointly (gradguard.engine.joint_coordinates) --------------------


def _small(dtype: type = np.float64) -> tuple[FloatDict, Any, Any]:
    """Four 2-element tensors: 8 sampled coordinates cover every element."""
    rng = np.random.default_rng(7)
    params = {f"p{i}": rng.uniform(0.5, 1.5, 2).astype(dtype) * 10.0**i for i in range(4)}

    def loss(p: FloatDict) -> Any:
        return sum(np.sum(np.sin(v / 10.0**i) * 10.0**i) for i, v in enumerate(p.values()))

    def grad(p: FloatDict) -> FloatDict:
        return {k: np.cos(v / 10.0**i).astype(v.dtype) for i, (k, v) in enumerate(p.items())}

    return params, loss, grad


@pytest.mark.parametrize("seed", range(3))
def test_one_wrong_element_among_jointly_read_coordinates_is_probed_on_its_own(seed: int) -> None:
    """A x1.01 error on one sampled element fails its tensor and names that element, measured
    by its own probe (not the joint reading); the other tensors pass."""
    params, loss, grad = _small()

    def buggy(p: FloatDict) -> FloatDict:
        g = grad(p)
        g["p2"][1] *= 1.01
        return g

    report = gg.check(loss, params, buggy, seed=seed, sample=8, directions=1)
    assert report.failed == ("p2",), str(report)
    wrong = next(p for p in report.params if p.name == "p2")
    assert wrong.worst_index == (1,)
    assert wrong.worst_numeric is not None and wrong.worst_analytic is not None
    assert wrong.worst_analytic == pytest.approx(1.01 * wrong.worst_numeric, rel=1e-6)
    assert "p2" not in report.notes.get("coordinates_jointly", "")


def test_jointly_read_coordinates_of_a_correct_model_cost_two_evaluations() -> None:
    """Gradients four orders of magnitude apart: every coordinate cleared by one joint pair;
    the report names no worst element it did not measure on its own."""
    params, loss, grad = _small()
    report = gg.check(loss, params, grad, seed=0, sample=8, directions=1)
    assert report.passed, str(report)
    assert report.notes["coordinates_jointly"] == "p0, p1, p2, p3"
    assert report.evaluations == 2 + 2 + 2
    assert all(p.worst_index is None and p.coordinates == 2 for p in report.params)


def test_a_kink_under_a_jointly_read_coordinate_does_not_fail_the_check() -> None:
    """|x| with one element inside the step of its kink: the joint reading is not clean, that
    tensor's coordinates are probed one by one and the kink is left out, no false alarm."""
    params = {"a": np.array([1e-9, 0.7]), "b": np.array([0.3, -1.2, 2.0])}

    def loss(p: FloatDict) -> Any:
        return float(np.sum(np.abs(p["a"])) + np.sum(p["b"] ** 3))

    def grad(p: FloatDict) -> FloatDict:
        return {"a": np.sign(p["a"]), "b": 3 * p["b"] ** 2}

    report = gg.check(loss, params, grad, seed=0, sample=5, directions=1)
    assert not report.failed, str(report)
    assert "a" not in report.notes.get("coordinates_jointly", "")


def test_float32_coordinates_far_apart_in_scale_are_read_jointly() -> None:
    """float32 elements whose shares differ by 1e9: the large one is moved by a fraction of its
    step that still changes a float32 value; a correct model passes."""
    params = {"big": np.array([1.0], np.float32), "small": np.array([3.0, 4.0, 5.0], np.float32)}

    def loss(p: FloatDict) -> Any:
        return np.float32(1e3) * np.sum(p["big"] ** 2) + np.float32(1e-6) * np.sum(p["small"] ** 2)

    def grad(p: FloatDict) -> FloatDict:
        return {"big": np.float32(2e3) * p["big"], "small": np.float32(2e-6) * p["small"]}

    report = gg.check(loss, params, grad, seed=0, sample=4, directions=1)
    assert not report.failed, str(report)
    assert "big" in report.notes["coordinates_jointly"]


def test_a_loss_that_breaks_under_the_joint_coordinates_restores_every_element() -> None:
    """The loss is NaN once two sampled elements move together: a LossError that says the
    coordinates were perturbed jointly, every element bit-identical afterwards."""
    params, loss, grad = _small()
    before = _snapshot(params)
    center = {k: v.copy() for k, v in params.items()}

    def fragile(p: FloatDict) -> Any:
        moved = sum(int(np.any(p[k] != center[k])) for k in p)
        return float("nan") if moved > 1 else loss(p)

    with pytest.raises(gg.LossError, match="sampled coordinates are perturbed jointly"):
        gg.check(fragile, params, grad, seed=0, sample=8, directions=1)
    assert _snapshot(params) == before
