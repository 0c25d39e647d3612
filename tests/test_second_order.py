"""Second order (``order=2``) and forward mode (``mode="forward"``) on NumPy params and settings.

NumPy has no autodiff: ``order=2`` takes ``hvp=`` from the user; forward mode is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gradguard as gg
from gradguard.engine.layout import Layout
from gradguard.errors import SettingsError
from gradguard.kit.contract import FlatView, FloatArray, IndexArray, require_methods
from gradguard.results import Status

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 3))
Y = RNG.normal(size=20)


def _params() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {"w": rng.normal(size=3), "b": np.array(0.3)}


def _loss(p: dict[str, Any]) -> float:
    return float(np.mean(np.log(np.cosh(X @ p["w"] + p["b"] - Y))))


def _grad(p: dict[str, Any]) -> dict[str, Any]:
    t = np.tanh(X @ p["w"] + p["b"] - Y) / len(Y)
    return {"w": X.T @ t, "b": np.array(t.sum())}


def _hvp(p: dict[str, Any], v: dict[str, Any], row_error: float = 0.0) -> dict[str, Any]:
    s = (1.0 - np.tanh(X @ p["w"] + p["b"] - Y) ** 2) / len(Y)
    z = X @ v["w"] + v["b"]
    hw = X.T @ (s * z)
    hw[1] *= 1.0 + row_error  # one row of the Hessian wrong
    return {"w": hw, "b": np.array((s * z).sum())}


def test_correct_hvp_passes() -> None:
    """A right H v passes, every tensor judged over every element of its block."""
    report = gg.check(_loss, _params(), _grad, order=2, hvp=_hvp, seed=0)
    assert report.passed
    assert [p.status for p in report.params] == [Status.PASS, Status.PASS]
    assert report.notes["order"] == 2
    assert report.difference < 1e-9


def test_wrong_row_of_the_hessian_is_caught_and_localized() -> None:
    """A 0.1% error in one row of H fails that tensor only, naming the row and the mixed blocks."""
    report = gg.check(_loss, _params(), _grad, order=2, hvp=lambda p, v: _hvp(p, v, 1e-3), seed=0)
    assert report.failed == ("w",)
    assert report["b"].status is Status.PASS
    assert report["w"].worst_index == (1,)
    assert "H[w, w]" in report["w"].hint


def test_params_are_left_bit_identical() -> None:
    """The second-order probes write every tensor and put the originals back exactly."""
    params = _params()
    before = {k: v.copy() for k, v in params.items()}
    gg.check(_loss, params, _grad, order=2, hvp=lambda p, v: _hvp(p, v, 1e-3), seed=0)
    for key, value in params.items():
        assert value.tobytes() == before[key].tobytes()


def test_order2_without_hvp_on_numpy_is_refused_before_any_evaluation() -> None:
    """NumPy has no autodiff: order=2 without hvp= is a SettingsError naming the fix."""
    calls = []

    def loss(p: dict[str, Any]) -> float:
        calls.append(1)
        return _loss(p)

    with pytest.raises(SettingsError, match="hvp="):
        gg.check(loss, _params(), _grad, order=2)
    assert calls == []


def test_order2_needs_a_gradient_function() -> None:
    """A fixed gradient cannot be evaluated at perturbed points: a clear SettingsError."""
    with pytest.raises(SettingsError, match="callable"):
        gg.check(_loss, _params(), _grad(_params()), order=2, hvp=_hvp)


def test_forward_mode_on_numpy_is_refused() -> None:
    """NumPy views have no JVP: mode='forward' is refused, naming the adapter."""
    with pytest.raises(SettingsError, match="numpy adapter does not support forward-mode"):
        gg.check(_loss, _params(), _grad, mode="forward")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"order": 3}, "order must be 1"),
        ({"order": 2, "mode": "forward"}, "order=2 with mode='forward'"),
        ({"order": 2, "sample": 4, "hvp": _hvp}, "sample=4 does not apply"),
        ({"mode": "backward"}, "mode must be"),
        ({"hvp": _hvp}, "hvp must be a callable"),
        ({"order": 2, "hvp": _hvp, "directions": 0}, "at least one direction"),
    ],
)
def test_bad_derivative_settings(options: dict[str, Any], match: str) -> None:
    """Each inconsistent combination is a SettingsError saying what to change."""
    with pytest.raises(SettingsError, match=match):
        gg.check(_loss, _params(), _grad, **options)


class _PlainView(FlatView):
    """A third-party view with only the required methods."""

    adapter = "plain"

    def __init__(self) -> None:
        self.layout = Layout.from_tensors([("x", (2,), np.dtype(np.float64))])

    def original(self, segment: int) -> FloatArray:
        return np.zeros(2)

    def write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        return values

    def reset(self, segment: int, index: IndexArray | None) -> None:
        pass

    def evaluate(self) -> float:
        return 0.0

    @property
    def loss_dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float64)

    def gradient(self) -> FloatArray:
        return np.zeros(2)

    def restore(self) -> None:
        pass


def test_a_view_without_the_optional_methods_is_refused_by_name() -> None:
    """require_methods names the adapter and the missing method; calling one says the same."""
    view = _PlainView()
    with pytest.raises(SettingsError, match=r"plain adapter does not support second-order"):
        require_methods(view, ("gradient_at", "hvp"))
    with pytest.raises(SettingsError, match=r"no jvp\(\)"):
        view.jvp(np.zeros(2))
    with pytest.raises(SettingsError, match="hvp= is for params"):
        view.use_hvp(_hvp)
