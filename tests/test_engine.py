"""The engine's behaviour on plain functions: seed mode, kinks, noise, localization, cost."""

from __future__ import annotations

import importlib.util
import math
import pathlib
from types import ModuleType

import numpy as np
import pytest

import gradguard as gg
from gradguard.engine import DEFAULT_COORDINATES, DEFAULT_DIRECTIONS, Settings

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_recipe(loss, grad, params: dict[str, np.ndarray], eps: float) -> float:  # type: ignore[no-untyped-def]
    """The seed documents' recipe, written independently of gradguard."""
    keys = list(params)
    theta = np.concatenate([params[k].reshape(-1) for k in keys])
    analytic = np.concatenate([np.asarray(grad(params)[k]).reshape(-1) for k in keys])

    def unflatten(vector: np.ndarray) -> dict[str, np.ndarray]:
        out, offset = {}, 0
        for k in keys:
            out[k] = vector[offset : offset + params[k].size].reshape(params[k].shape)
            offset += params[k].size
        return out

    approx = np.zeros_like(theta)
    for i in range(theta.size):
        plus, minus = np.copy(theta), np.copy(theta)
        plus[i] += eps
        minus[i] -= eps
        approx[i] = (loss(unflatten(plus)) - loss(unflatten(minus))) / (2 * eps)
    numerator = np.linalg.norm(analytic - approx)
    return float(numerator / (np.linalg.norm(analytic) + np.linalg.norm(approx)))


SEED_MODE = {"eps": 1e-7, "tolerance": 1e-7, "sample": "all", "directions": 0}


@pytest.mark.parametrize("buggy", [True, False])
def test_seed_mode_reproduces_the_recipe_on_the_seed_example(buggy: bool) -> None:
    """Seed mode's difference is the recipe's number (to 1e-9 relative) on the seed's network."""
    example = _load_example("seed_example")
    x, y, params = example.make_problem()

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(example.forward(x, y, p)[0])

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(example.backward(x, y, p, buggy=buggy))

    expected = seed_recipe(loss, grad, params, 1e-7)
    report = gg.check(loss, params, grad, **SEED_MODE)
    assert report.difference == pytest.approx(expected, rel=1e-9)
    assert set(report.failed) == ({"W2", "b1"} if buggy else set())


@pytest.mark.parametrize("seed", range(8))
def test_seed_mode_reproduces_the_recipe_on_random_problems(seed: int) -> None:
    """On random smooth problems with random gradient errors, seed mode equals the recipe."""
    rng = np.random.default_rng(seed)
    shapes = [tuple(rng.integers(1, 5, size=rng.integers(0, 3))) for _ in range(rng.integers(1, 4))]
    params = {f"t{i}": rng.standard_normal(shape) for i, shape in enumerate(shapes)}
    weights = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    error = rng.choice([0.0, 1e-6, 1e-3, 0.5])

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(sum(np.sum(np.sin(weights[k] * v) + 0.5 * v**2) for k, v in p.items()))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: weights[k] * np.cos(weights[k] * v) + v * (1 + error) for k, v in p.items()}

    expected = seed_recipe(loss, grad, params, 1e-7)
    report = gg.check(loss, params, grad, **SEED_MODE)
    assert report.difference == pytest.approx(expected, rel=1e-9)


def test_seed_mode_reproduces_the_recipe_but_not_its_blind_verdict() -> None:
    """A correct gradient the recipe calls wrong (eps=1e-7 round-off): the recipe's number,
    and the truth about it: the round-off hides any disagreement of the size 1e-7 names."""
    params = {"x": np.linspace(-1.0, 1.0, 7)}

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(1e6 + np.sum(p["x"] ** 2))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"x": 2 * p["x"]}

    report = gg.check(loss, params, grad, **SEED_MODE)
    assert report.difference == pytest.approx(seed_recipe(loss, grad, params, 1e-7), rel=1e-9)
    assert report.difference > 1e-7  # the recipe would say "wrong"
    assert report.status is gg.Status.INCONCLUSIVE
    assert "retried" in report["x"].hint and "large next to its gradient" in report["x"].hint
    # At a tolerance the retried step can resolve, the same correct gradient passes.
    assert gg.check(loss, params, grad, **{**SEED_MODE, "tolerance": 1e-3}).passed


def test_default_check_is_accurate_where_seed_mode_is_not() -> None:
    """The default step keeps the same large-loss problem far below the tolerance."""
    params = {"x": np.linspace(-1.0, 1.0, 7)}
    report = gg.check(
        lambda p: float(1e3 + np.sum(p["x"] ** 3)), params, lambda p: {"x": 3 * p["x"] ** 2}
    )
    assert report.passed
    assert report.difference < 1e-8


def test_relu_with_preactivations_within_1e_9_of_zero_passes() -> None:
    """Kinks straddled by every step never fail a correct gradient; they are counted."""
    x = np.array([1e-10, -1e-10, 5e-10, -9e-10, 0.3, -0.2, 1e-9, 0.0])
    w = np.linspace(0.5, 2.0, x.size)

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(w * np.maximum(p["z"], 0.0)))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"z": w * (p["z"] > 0)}

    for seed in range(10):
        report = gg.check(loss, {"z": x.copy()}, grad, seed=seed, sample="all")
        assert report.passed, str(report)
        assert report["z"].kinks > 0


def test_all_probes_on_kinks_is_non_differentiable_not_failed() -> None:
    """When every probe straddles kinks on both sides, the tensor is reported, not failed; a
    check that judged no tensor at all could not see, so it did not pass either."""
    x = np.array([1e-12, -1e-12] * 8)

    def loss(p: np.ndarray) -> float:
        return float(np.sum(np.abs(p)))

    report = gg.check(loss, x, np.sign, sample=0, directions=3, seed=1)
    assert report.status is gg.Status.INCONCLUSIVE and not report.passed
    assert report["params"].status is gg.Status.NON_DIFFERENTIABLE
    assert "could not be judged" in str(report).splitlines()[0]
    assert "non-differentiable" in report["params"].hint


def test_nondeterministic_loss_is_reported_as_such() -> None:
    """A loss that changes between two evaluations at theta gets its own status and a hint."""
    rng = np.random.default_rng()
    params = {"w": np.ones(5)}
    report = gg.check(lambda p: float(np.sum(p["w"]) + rng.random()), params, lambda p: p)
    assert report.status is gg.Status.NONDETERMINISTIC
    assert not report.passed
    assert report.evaluations == 2
    assert all(p.status is gg.Status.NONDETERMINISTIC for p in report.params)
    assert "dropout" in report.hint
    with pytest.raises(gg.GradientCheckError, match="NONDETERMINISTIC"):
        report.raise_for_failure()


def test_tensor_with_zero_gradient_is_judged_against_the_model_scale() -> None:
    """A tensor the loss ignores passes with a zero gradient, and fails with a non-zero one."""
    params = {"w": np.linspace(0.1, 2.0, 10), "unused": np.ones(3)}

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(np.exp(p["w"])))

    def right(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"w": np.exp(p["w"]), "unused": np.zeros(3)}

    def wrong(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"w": np.exp(p["w"]), "unused": np.full(3, 1e-2)}

    assert gg.check(loss, params, right).passed
    report = gg.check(loss, params, wrong)
    assert report.failed == ("unused",)
    assert "does not depend" in report["unused"].hint


def test_bisection_names_the_single_wrong_element() -> None:
    """A bug in one element of a large tensor is found by directions and localized exactly."""
    rng = np.random.default_rng(3)
    params = {"W": rng.standard_normal((40, 50)), "b": rng.standard_normal(50)}
    bad = (17, 23)

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(np.tanh(p["W"])) + np.sum(p["b"] ** 2))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dw = 1 - np.tanh(p["W"]) ** 2
        dw[bad] *= 3.0
        return {"W": dw, "b": 2 * p["b"]}

    report = gg.check(loss, params, grad, sample=4, seed=0)
    assert report.failed == ("W",)
    w = report["W"]
    assert w.worst_index == bad
    assert w.worst_analytic == pytest.approx(3 * w.worst_numeric, rel=1e-6)
    assert "bisection" in w.hint
    # O(log n) extra probes, not O(n): far fewer than 2 * 2000 evaluations.
    assert report.evaluations < 150


@pytest.mark.parametrize("strategy", ["screen", "per-tensor"])
def test_default_check_of_a_million_parameters_costs_a_few_hundred_evaluations(
    strategy: str,
) -> None:
    """A check's cost does not depend on the number of parameters; screening's, not on the
    number of tensors either."""
    rng = np.random.default_rng(0)
    params = {
        "W1": rng.standard_normal((1000, 1000)),
        "b1": rng.standard_normal(1000),
        "W2": rng.standard_normal((1000, 10)),
        "b2": rng.standard_normal(10),
    }
    report = gg.check(
        lambda p: float(sum(0.5 * np.vdot(v, v) for v in p.values())),
        params,
        lambda p: {k: v.copy() for k, v in p.items()},
        seed=0,
        tolerance=1e-4,  # a loss of 5e5 in float64 cannot resolve 1e-6 (it is inconclusive)
        strategy=strategy,  # type: ignore[arg-type]
    )
    assert report.passed, str(report)
    n_tensors = len(params)
    if strategy == "screen":
        assert report.evaluations == 2 + 2 + 2 * DEFAULT_DIRECTIONS  # coordinates jointly
    else:
        assert report.evaluations == 2 + 2 * (DEFAULT_COORDINATES + DEFAULT_DIRECTIONS * n_tensors)
    assert report.evaluations < 300
    assert report.gradient_calls == 1


def test_sample_all_costs_two_evaluations_per_coordinate() -> None:
    """sample='all' probes every coordinate once: 2n + 2 evaluations when nothing is suspect."""
    params = {"a": np.linspace(0.1, 1, 6).reshape(2, 3), "b": np.array(0.5)}
    report = gg.check(
        lambda p: float(np.sum(p["a"] ** 2) + p["b"] ** 3),
        params,
        lambda p: {"a": 2 * p["a"], "b": 3 * p["b"] ** 2},
        sample="all",
    )
    assert report.passed
    assert report.evaluations == 2 * 7 + 2
    assert [p.coordinates for p in report.params] == [6, 1]
    assert [p.directions for p in report.params] == [0, 0]


def test_stratified_sampling_gives_every_tensor_coordinates() -> None:
    """Every tensor, biases included, gets sampled coordinates, and k is honoured."""
    params = {
        "W": np.ones((100, 100)),
        "b": np.ones(3),
        "s": np.array(1.0),
        "V": np.ones((10, 10)),
    }
    report = gg.check(
        lambda p: float(sum(np.sum(v**2) for v in p.values())),
        params,
        lambda p: {k: 2 * v for k, v in p.items()},
        sample=20,
        directions=0,
        seed=5,
    )
    counts = {p.name: p.coordinates for p in report.params}
    assert all(count >= 1 for count in counts.values())
    assert sum(counts.values()) == 20
    # One each, the remaining 16 in proportion to size: all to the 10,000-element W.
    assert counts == {"W": 17, "b": 1, "s": 1, "V": 1}


def test_same_seed_same_probes_and_global_rng_untouched() -> None:
    """A seed replays a check exactly, and NumPy's global random state is never advanced."""
    rng = np.random.default_rng(1)
    params = {"W": rng.standard_normal((30, 30))}

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(np.sin(p["W"])))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"W": np.cos(p["W"]) * 1.01}

    np.random.seed(123)
    state = np.random.get_state()
    first = gg.check(loss, params, grad, seed=42)
    second = gg.check(loss, params, grad, seed=42)
    other = gg.check(loss, params, grad, seed=43)
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    assert first.to_dict()["params"] == second.to_dict()["params"]
    assert first.params[0].worst_index != other.params[0].worst_index or (
        first.difference != other.difference
    )
    assert first.seed == 42
    assert 0 <= gg.check(loss, params, grad).seed < 2**32


def test_a_float32_step_is_accounted_exactly() -> None:
    """A float32 tensor is judged with the step actually stored after rounding."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal(200) * 100).astype(np.float32)

    def loss(p: np.ndarray) -> np.float32:
        return np.sum(p.astype(np.float32) ** 2, dtype=np.float32) / np.float32(1e4)

    report = gg.check(
        loss, w, lambda p: 2 * p / np.float32(1e4), sample="all", seed=0, tolerance=0.1
    )
    assert report.dtype == "float32"
    assert report.passed, str(report)
    assert report.difference < 1e-2  # with the nominal step instead, ~1e-3 relative worse


def test_settings_defaults() -> None:
    """Default directions: two per tensor, none when every coordinate is checked."""
    assert Settings().resolved_directions == DEFAULT_DIRECTIONS
    assert Settings(sample="all").resolved_directions == 0
    assert Settings(sample="all", directions=1).resolved_directions == 1
    assert math.isclose(gg.check(lambda t: t * 3.0, 4.0, lambda t: 3.0).eps, 2.0 ** (-52 / 3))
