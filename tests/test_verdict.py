"""The verdict: PASSED only when the check could see and agreed (issue 9's reproductions).

Each test here was a reproduction of a wrong verdict before the verdict had the statuses
``inconclusive`` and ``zero``: a check that passed wrong gradients because its noise allowance
swallowed everything, a step the dtype cannot represent, a near-zero tensor shown as noise/noise,
tiny but wrong tensors hidden under the model's gradient scale, and hints that named the
wrong cause.
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest

import gradguard as gg

SEED_MODE = {"eps": 1e-7, "tolerance": 1e-7, "sample": "all", "directions": 0}


def _seed_example() -> ModuleType:
    path = pathlib.Path(__file__).parents[1] / "examples" / "seed_example.py"
    spec = importlib.util.spec_from_file_location("seed_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEED = _seed_example()


def _seed_network(dtype: type, seed: int = 1, buggy: bool = True):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 3)).astype(dtype)
    y = np.array([[1.0, 1.0, 0.0]], dtype=dtype)
    shapes = {"W1": (5, 4), "b1": (5, 1), "W2": (3, 5), "b2": (3, 1), "W3": (1, 3), "b3": (1, 1)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}

    def loss(p: dict[str, np.ndarray]) -> float:
        return SEED.forward(x, y, p)[0]

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return SEED.backward(x, y, p, buggy=buggy)

    return loss, params, grad


# -- 1. PASSED must mean "the check could see, and it agreed" -----------------------------


@pytest.mark.parametrize("eps", [1e-7, 1e-6, 1e-5])
@pytest.mark.parametrize("seed", range(8))
def test_float32_with_the_course_step_never_passes_the_planted_bugs(eps: float, seed: int) -> None:
    loss, params, grad = _seed_network(np.float32, seed=seed)
    try:
        report = gg.check(loss, params, grad, **{**SEED_MODE, "eps": eps})
    except gg.SettingsError as error:  # a step float32 cannot even represent here
        assert "eps" in str(error) and "float32" in str(error)
        return
    assert not report.passed, str(report)
    assert set(report.failed) == {"W2", "b1"}, str(report)  # and no right tensor blamed
    assert report.notes.get("step_retried") is True


@pytest.mark.parametrize("eps", [None, 1e-5, 1e-6])
def test_a_correct_float32_backprop_is_never_failed_whatever_the_step(eps: float | None) -> None:
    """The same network's right backprop: passed, or inconclusive where float32 is too noisy
    (seed 2's loss carries 260 units of round-off), never FAILED."""
    statuses = []
    for seed in range(8):
        loss, params, grad = _seed_network(np.float32, seed=seed, buggy=False)
        report = gg.check(loss, params, grad, eps=eps, seed=0)
        assert report.failed == (), str(report)
        statuses.append(report.status)
    assert statuses.count(gg.Status.PASS) >= 6


def test_float32_course_step_is_retried_with_the_dtypes_step_and_says_so() -> None:
    """Representable but far too noisy: the engine retries with float32's own step."""
    loss, params, grad = _seed_network(np.float32, seed=3)
    params = {k: (v * 0.1).astype(np.float32) for k, v in params.items()}  # eps stays visible
    report = gg.check(loss, params, grad, **{**SEED_MODE, "eps": 1e-6, "tolerance": 1e-2})
    assert set(report.failed) == {"W2", "b1"}
    assert "retried" in report["W2"].hint
    assert report.notes.get("step_retried") is True


def test_a_correct_float32_gradient_at_an_impossible_tolerance_is_inconclusive() -> None:
    """tolerance=1e-7 cannot be resolved in float32 at any step: inconclusive, not passed."""
    loss, params, grad = _seed_network(np.float32, seed=2, buggy=False)
    report = gg.check(loss, params, grad, tolerance=1e-7)
    assert report.status is gg.Status.INCONCLUSIVE
    assert not report.passed
    assert report.inconclusive
    hint = " ".join(p.hint for p in report.params if p.status is gg.Status.INCONCLUSIVE)
    assert "float64" in hint
    with pytest.raises(gg.InconclusiveCheckError, match="INCONCLUSIVE"):
        report.raise_for_failure()
    assert issubclass(gg.InconclusiveCheckError, gg.GradientCheckError)


@pytest.mark.parametrize("eps", [1e-18, 1e-300, 1e-320])
def test_a_step_below_the_dtypes_resolution_is_refused_before_any_evaluation(eps: float) -> None:
    calls = []
    params = {"w": np.linspace(-2.0, 3.0, 6)}

    def loss(p: dict[str, np.ndarray]) -> float:
        calls.append(1)
        return float(np.sum(p["w"] ** 2))

    with pytest.raises(gg.SettingsError, match=r"eps=.*float64.*usable"):
        gg.check(loss, params, lambda p: {"w": np.full(6, -100.0)}, eps=eps)
    assert calls == []


def test_a_step_that_overflows_is_refused_before_any_evaluation() -> None:
    calls = []

    def loss(p: np.ndarray) -> float:
        calls.append(1)
        return float(np.sum(p**2))

    with pytest.raises(gg.SettingsError, match=r"eps=1e\+300.*usable"):
        gg.check(loss, np.linspace(-1.0, 1.0, 5), lambda p: 2 * p, eps=1e300)
    assert calls == []


def test_a_large_loss_next_to_its_gradient_is_inconclusive_with_the_reason() -> None:
    """1e6 + |x|^2 in float64 at tolerance 1e-7: round-off hides a 1e-7 disagreement."""
    params = {"x": np.linspace(-1.0, 1.0, 7)}

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(1e6 + np.sum(p["x"] ** 2))

    right = gg.check(loss, params, lambda p: {"x": 2 * p["x"]}, **SEED_MODE)
    assert right.status is gg.Status.INCONCLUSIVE
    assert "large next to its gradient" in right["x"].hint
    wrong = gg.check(loss, params, lambda p: {"x": 2.5 * p["x"]}, **SEED_MODE)
    assert wrong.failed == ("x",)


# -- 2. A tensor whose true gradient is ~0 reads as what it is ----------------------------


def test_a_bias_a_normalization_cancels_has_status_zero() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4))
    target = rng.standard_normal((16, 3))
    params = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}

    def forward(p: dict[str, np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
        z = x @ p["W"] + p["b"]
        centered = z - z.mean(axis=0)
        std = np.sqrt((centered**2).mean(axis=0) + 1e-5)
        out = centered / std
        return float(np.sum((out - target) ** 2)), out, std

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, out, std = forward(p)
        dout = 2.0 * (out - target)
        dz = (dout - dout.mean(axis=0) - out * (dout * out).mean(axis=0)) / std
        return {"W": x.T @ dz, "b": dz.sum(axis=0)}  # ~1e-16: exactly 0 in exact arithmetic

    for seed in range(5):
        report = gg.check(lambda p: forward(p)[0], params, grad, seed=seed)
        assert report.passed, str(report)
        assert report["W"].status is gg.Status.PASS
        assert report["b"].status is gg.Status.ZERO
        assert report["b"].difference < report["b"].tolerance
        assert "normaliz" in report["b"].hint or "unused" in report["b"].hint
        assert "ZERO" in str(report) or "zero" in str(report)

    # A wrong non-zero gradient for that bias still fails.
    def wrong(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = grad(p)
        return {"W": g["W"], "b": np.full(3, 0.05)}

    assert gg.check(lambda p: forward(p)[0], params, wrong, seed=0).failed == ("b",)


def test_an_unused_parameter_has_status_zero_and_says_unused() -> None:
    params = {"w": np.linspace(0.1, 2.0, 10), "unused": np.ones(3)}
    report = gg.check(
        lambda p: float(np.sum(np.exp(p["w"]))),
        params,
        lambda p: {"w": np.exp(p["w"]), "unused": np.zeros(3)},
    )
    assert report.passed
    assert report["unused"].status is gg.Status.ZERO
    assert "unused" in report["unused"].hint
    assert report.to_dict()["params"][1]["status"] == "zero"


# -- 5. Weak spots of held-out architectures ----------------------------------------------


@pytest.mark.parametrize("error", [0.02, 0.1])
@pytest.mark.parametrize("seed", range(4))
def test_a_tiny_but_wrong_tensor_behind_a_layerscale_fails(error: float, seed: int) -> None:
    """A branch scaled by 1e-6 (LayerScale): its tensors' gradients are ~1e-6 of the model's."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 6))
    t = rng.standard_normal((8, 6))
    params = {
        "W": rng.standard_normal((6, 6)) * 0.3,
        "gamma": np.full(6, 1e-6),
        "V": rng.standard_normal((6, 6)) * 0.3,
    }

    def forward(p: dict[str, np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
        h = np.tanh(x @ p["V"])
        out = x @ p["W"] + p["gamma"] * h
        return float(0.5 * np.sum((out - t) ** 2)), out, h

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, out, h = forward(p)
        d = out - t
        dh = d * p["gamma"] * (1.0 - h**2)
        return {
            "W": x.T @ d,
            "gamma": np.sum(d * h, axis=0),
            "V": (1.0 + error) * (x.T @ dh),  # the branch's backward is off by `error`
        }

    report = gg.check(lambda p: forward(p)[0], params, grad, seed=seed)
    assert report.failed == ("V",), str(report)
    # The correct branch is never "zero" (its gradient is plainly not 0) and never fails: its
    # gradient is ~1e-6 of the model's and the loss is a sum (49), so at the dtype's step its
    # probes carry ~1e-4 of relative round-off; it is probed again at a step up to 1024x wider,
    # where truncation then limits float64's 1e-6 tolerance (inconclusive, with the tolerance
    # it could judge, ~3e-6 to 8e-6) on 3 of these 4 seeds; PyTorch's float32 version passes
    # (test_torch_native_gradient.py), its tolerance being 1e-5.
    correct = gg.check(
        lambda p: forward(p)[0],
        params,
        lambda p: {**grad(p), "V": grad(p)["V"] / (1.0 + error)},
        seed=seed,
    )
    assert correct.failed == () and correct["V"].status is not gg.Status.ZERO, str(correct)
    assert correct.notes["step_widened"] == "V"
    if correct["V"].status is gg.Status.INCONCLUSIVE:
        assert "pass tolerance>=" in correct["V"].hint


@pytest.mark.parametrize("seed", range(6))
def test_a_float32_softmax_with_large_logits_catches_a_bias_error(seed: int) -> None:
    """Logits ~45 in float32: the measured noise, not an a-priori bound, judges the bias."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 10)).astype(np.float32)
    labels = rng.integers(0, 5, 32)
    params = {
        "W": (rng.standard_normal((10, 5)) * 5.0).astype(np.float32),  # logits ~ +-45
        "b": (rng.standard_normal(5) * 2.0).astype(np.float32),
    }

    def probs(p: dict[str, np.ndarray]) -> np.ndarray:
        z = x @ p["W"] + p["b"]
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def loss(p: dict[str, np.ndarray]) -> float:
        z = x @ p["W"] + p["b"]
        top = z.max(axis=1, keepdims=True)
        log_q = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
        return float(-np.mean(log_q[np.arange(32), labels]))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        d = probs(p)
        d[np.arange(32), labels] -= 1.0
        d /= 32.0
        return {"W": x.T @ d, "b": (d.sum(axis=0) * np.float32(1.057)).astype(np.float32)}

    report = gg.check(loss, params, grad, seed=seed)
    assert "b" in report.failed or report["b"].status is gg.Status.INCONCLUSIVE, str(report)
    assert "W" not in report.failed


@pytest.mark.parametrize("seed", range(8))
def test_a_sparse_embedding_bug_is_found_where_the_gradient_lives(seed: int) -> None:
    """A bag-of-words embedding: 3 of 400 rows are used; their gradient is 10% wrong."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((400, 8))
    used = np.array([5, 77, 301])
    w_out = rng.standard_normal(8)

    def loss(p: dict[str, np.ndarray]) -> float:
        h = p["E"][used].sum(axis=0)
        return float(np.tanh(h @ p["w"]) ** 2)

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        h = p["E"][used].sum(axis=0)
        s = np.tanh(h @ p["w"])
        dz = 2.0 * s * (1.0 - s**2)
        d_e = np.zeros_like(p["E"])
        d_e[used] = 1.1 * dz * p["w"]
        return {"E": d_e, "w": dz * h}

    report = gg.check(loss, {"E": table, "w": w_out}, grad, seed=seed)
    assert report.failed == ("E",), str(report)
    assert report["E"].worst_index is not None and report["E"].worst_index[0] in used


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("curve", ["tan near its pole", "exp(1000 x)"])
def test_strong_curvature_is_not_mistaken_for_a_kink(curve: str, seed: int) -> None:
    """At the default step every probe of sum(c * tan(x)) a thousandth from the pole looked like
    a kink, so the tensor was left out and a 0.1% error PASSED; with exp(1000 x) the probes of
    the largest elements were left out and the rest read as ~0 next to them, again PASSED.
    Probed again at a narrower step, the correct gradient passes and a wrong one fails."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal(20)
    if curve == "tan near its pole":
        x = np.pi / 2 - rng.uniform(5e-4, 2e-3, size=20) * rng.choice([-1, 1], 20)
        f, df = np.tan, lambda v: 1.0 / np.cos(v) ** 2
    else:
        x = rng.uniform(0.0, 0.3, size=20)
        f, df = (lambda v: np.exp(1000.0 * v)), (lambda v: 1000.0 * np.exp(1000.0 * v))

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(c * f(p["x"])))

    def grad(factor: float) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        return lambda p: {"x": factor * c * df(p["x"])}

    right = gg.check(loss, {"x": x.copy()}, grad(1.0), seed=seed)
    assert right.status is gg.Status.PASS, str(right)
    for factor in (1.001, 1.00003):
        wrong = gg.check(loss, {"x": x.copy()}, grad(factor), seed=seed)
        assert wrong.status is gg.Status.FAIL, str(wrong)
