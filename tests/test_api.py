"""``gradguard.check``: the front door, its report, and what it says about bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import gradguard as gg
from gradguard import errors

Params = dict[str, np.ndarray]

# A fixed least-squares problem: loss = 0.5 * ||X @ W + b - Y||^2, W (2, 3), b (3,).
_RNG = np.random.default_rng(2024)
X = _RNG.standard_normal((8, 2))
Y = _RNG.standard_normal((8, 3))
W0 = _RNG.standard_normal((2, 3))
B0 = _RNG.standard_normal(3)


def make_params() -> Params:
    """Fresh, writable copies of the model's parameters."""
    return {"W": W0.copy(), "b": B0.copy()}


def residual(p: Params) -> np.ndarray:
    return X @ p["W"] + p["b"] - Y


def loss(p: Params) -> float:
    r = residual(p)
    return 0.5 * float(np.sum(r * r))


def grad(p: Params) -> Params:
    r = residual(p)
    return {"W": X.T @ r, "b": r.sum(axis=0)}


def grad_with_doubled_b(p: Params) -> Params:
    """The right gradient for W, twice the right one for b."""
    g = grad(p)
    return {"W": g["W"], "b": 2.0 * g["b"]}


def snapshot(params: Any, path: str = "params") -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Each leaf's path, dtype, shape and bytes, through dicts, lists and tuples."""
    if isinstance(params, dict):
        return [leaf for k, v in params.items() for leaf in snapshot(v, f"{path}.{k}")]
    if isinstance(params, list | tuple):
        return [leaf for i, v in enumerate(params) for leaf in snapshot(v, f"{path}.{i}")]
    array = np.asarray(params)
    return [(path, str(array.dtype), array.shape, array.tobytes())]


def assert_rejected(
    error: type[gg.GradGuardError],
    match: str,
    loss_fn: Any,
    params: Any,
    grad_fn: Any = None,
    **options: Any,
) -> pytest.ExceptionInfo[gg.GradGuardError]:
    """``check`` raises ``error`` (a GradGuardError) naming the problem; params untouched."""
    before = snapshot(params)
    with pytest.raises(error, match=match) as info:
        gg.check(loss_fn, params, grad_fn, **options)
    assert isinstance(info.value, gg.GradGuardError)
    assert snapshot(params) == before
    return info


def builtin_only(value: Any, where: str = "report") -> None:
    """Fail unless ``value`` is made of dict/list/str/int/float/bool/None only."""
    assert type(value) in (dict, list, str, int, float, bool, type(None)), (
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}"
    )
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, f"{where} has key {key!r}"
            builtin_only(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            builtin_only(item, f"{where}[{position}]")


def passing_report() -> gg.CheckReport:
    return gg.check(loss, make_params(), grad, seed=0)


def failing_report() -> gg.CheckReport:
    return gg.check(loss, make_params(), grad_with_doubled_b, seed=0)


def nondeterministic_report() -> gg.CheckReport:
    dropout = np.random.default_rng()  # no seed: a different mask on every call

    def noisy_loss(p: Params) -> float:
        mask = dropout.random((8, 3)) < 0.5
        r = mask * (X @ p["W"] + p["b"]) - Y
        return 0.5 * float(np.sum(r * r))

    return gg.check(noisy_loss, make_params(), grad, seed=0)


# -- bad loss values ---------------------------------------------------------------------------


def _nan_when_w00_moves(p: Params) -> float:
    return math.nan if p["W"][0, 0] != W0[0, 0] else loss(p)


@pytest.mark.parametrize(
    ("bad_loss", "match"),
    [
        pytest.param(lambda p: math.nan, r"loss is nan at the unperturbed", id="nan"),
        pytest.param(lambda p: np.float64(np.inf), r"loss is inf at the unperturbed", id="inf"),
        pytest.param(lambda p: -math.inf, r"loss is -inf", id="-inf"),
        pytest.param(_nan_when_w00_moves, r"nan when W\[0, 0\] is perturbed", id="nan-perturbed"),
        pytest.param(lambda p: np.ones(3), r"array of shape \(3,\)", id="shape-(3,)"),
    ],
)
def test_loss_that_is_not_a_finite_scalar_raises_loss_error(
    bad_loss: Callable[[Params], Any], match: str
) -> None:
    """A NaN, infinite or non-scalar loss (also only at a perturbed point) is a LossError."""
    assert_rejected(errors.LossError, match, bad_loss, make_params(), grad, sample="all")


def test_loss_not_callable_raises_loss_error() -> None:
    """A loss that is not callable is refused before anything is evaluated."""
    assert_rejected(errors.LossError, r"loss must be a callable.*float", 1.5, make_params(), grad)


@pytest.mark.parametrize(
    "bad_loss",
    [
        pytest.param(lambda p, x: 0.0, id="two-arguments"),
        pytest.param(lambda: 0.0, id="no-argument"),
        pytest.param(lambda *, params: 0.0, id="keyword-only"),
    ],
)
def test_a_loss_with_the_wrong_signature_raises_loss_error(bad_loss: Callable[..., Any]) -> None:
    """A loss that cannot be called as loss(params) gets a LossError showing that call and
    how to close over the rest, not a TypeError from inside the user's lambda."""
    assert_rejected(
        errors.LossError,
        r"loss\(params\).*lambda params: my_loss\(params, x, y\)",
        bad_loss,
        make_params(),
        grad,
    )


@pytest.mark.parametrize(
    "value", [pytest.param([1.0], id="list"), pytest.param((1.0, {"acc": 1.0}), id="tuple")]
)
def test_a_loss_that_returns_a_list_or_tuple_raises_loss_error(value: Any) -> None:
    """A list or tuple is never a loss value (the rule every adapter follows)."""
    assert_rejected(
        errors.LossError,
        r"returned a (list|tuple).*not \(loss, extras\)",
        lambda p: value,
        make_params(),
        grad,
    )


def test_a_params_entry_that_is_not_an_array_is_named() -> None:
    """A setting in the params dict gets an error that names its key and type, not
    "no adapter understands dict"."""
    params = {**make_params(), "activation": "relu", "layers": [np.ones(2), None]}
    with pytest.raises(
        errors.AdapterNotFoundError,
        match=r"params\['activation'\] is a str \('relu'\); params\['layers'\]\[1\] is a "
        r"NoneType\. params must hold only the arrays",
    ):
        gg.check(loss, params, grad)


def test_a_python_float_in_params_is_said_to_be_a_parameter() -> None:
    """p["learning_rate"] = 0.01 is checked as a parameter; its missing gradient says so
    and how to leave it out."""
    params = {**make_params(), "learning_rate": 0.01}
    with pytest.raises(
        errors.GradientError,
        match=r"missing keys \['learning_rate'\].*'learning_rate' in params is a number, which "
        r"gradguard checks as a parameter.*take it out of params",
    ):
        gg.check(lambda p: loss(p), params, grad)


def test_a_single_tensor_passes_in_the_singular() -> None:
    """One tensor: "the 1 tensor agrees", never "all 1 tensors agree"."""
    w = np.ones(3)
    text = str(gg.check(lambda p: float(np.sum(p**2)), w, lambda p: 2 * p))
    assert text.startswith("gradguard: PASSED, the 1 tensor agrees")
    assert "all 1 tensors" not in text


# -- bad gradients -----------------------------------------------------------------------------


def _grad_where(name: str, index: tuple[int, ...], value: float) -> Callable[[Params], Params]:
    def bad(p: Params) -> Params:
        g = grad(p)
        g[name][index] = value
        return g

    return bad


@pytest.mark.parametrize(
    ("bad_grad", "match"),
    [
        pytest.param(
            _grad_where("W", (1, 2), math.nan), r"'W' \(shape \(2, 3\)\).*\[1, 2\]", id="nan"
        ),
        pytest.param(_grad_where("b", (1,), math.inf), r"'b' \(shape \(3,\)\).*\[1\]", id="inf"),
        pytest.param(
            lambda p: [grad(p)["W"], grad(p)["b"]],
            r"'params' is a list, but params there is a dict",
            id="list-for-dict",
        ),
        pytest.param(
            lambda p: {"W": grad(p)["W"].T, "b": grad(p)["b"]},
            r"'W' has shape \(3, 2\) but the parameter has shape \(2, 3\)",
            id="transposed",
        ),
        pytest.param(lambda p: {"W": grad(p)["W"]}, r"missing keys \['b'\]", id="missing-key"),
        pytest.param(
            lambda p: {**grad(p), "c": np.zeros(1)}, r"unexpected keys \['c'\]", id="extra-key"
        ),
        pytest.param(lambda p: {**grad(p), "b": None}, r"gradient for 'b' is None", id="leaf-None"),
        pytest.param(lambda p: None, r"'params' is a NoneType.*dict", id="returns-None"),
    ],
)
def test_unusable_gradient_raises_gradient_error(
    bad_grad: Callable[[Params], Any], match: str
) -> None:
    """A gradient that is not finite or does not mirror params names the tensor and the fix."""
    assert_rejected(errors.GradientError, match, loss, make_params(), bad_grad)


def test_gradient_none_for_single_array_raises_gradient_error() -> None:
    """grad returning None for a single array names the tensor "params"."""
    assert_rejected(
        errors.GradientError,
        r"gradient for 'params' is None.*shape \(2, 3\)",
        lambda w: float(np.sum(w**2)),
        W0.copy(),
        lambda w: None,
    )


def test_numpy_params_without_grad_raise_gradient_error() -> None:
    """NumPy has no autodiff: leaving out grad says to pass one."""
    assert_rejected(errors.GradientError, r"no autodiff.*grad", loss, make_params(), None)


# -- bad params --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        pytest.param(
            {"W": np.arange(6).reshape(2, 3)},
            r"'W' \(shape \(2, 3\)\) has integer dtype int64",
            id="int-array",
        ),
        pytest.param(
            {"mask": np.ones((2, 2), dtype=bool)},
            r"'mask' \(shape \(2, 2\)\) has bool dtype",
            id="bool-array",
        ),
        pytest.param({"W": W0.copy(), "n": 3}, r"'n' is the integer 3.*3\.0", id="python-int"),
        pytest.param(True, r"'params' is a bool", id="python-bool"),
        pytest.param({}, r"params is empty", id="empty-dict"),
        pytest.param(np.zeros((0, 3)), r"params is empty", id="empty-array"),
        pytest.param([np.zeros(0), {"a": np.zeros((2, 0))}], r"params is empty", id="all-empty"),
    ],
)
def test_uncheckable_params_raise_invalid_params_error(params: Any, match: str) -> None:
    """Integer, bool and empty params are refused with the tensor's name and shape."""
    assert_rejected(errors.InvalidParamsError, match, lambda p: 0.0, params, lambda p: p)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param("W", id="str"),
        pytest.param(object(), id="object"),
    ],
)
def test_unsupported_params_type_lists_the_adapters_asked(params: Any) -> None:
    """No adapter claims strings or plain objects; the message lists those asked (numpy)."""
    info = assert_rejected(
        errors.AdapterNotFoundError, r"adapters asked: .*numpy", lambda p: 0.0, params, None
    )
    assert isinstance(info.value, errors.InvalidParamsError)
    assert type(params).__qualname__ in str(info.value)


# -- bad settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"eps": 0.0}, r"eps must be a positive finite number, got 0\.0", id="eps=0"),
        pytest.param({"eps": -1e-6}, r"eps must be a positive", id="eps<0"),
        pytest.param({"eps": math.nan}, r"eps must be .* got nan", id="eps=nan"),
        pytest.param({"tolerance": 0.0}, r"tolerance must be a positive", id="tolerance=0"),
        pytest.param({"tolerance": -0.1}, r"tolerance must be a positive", id="tolerance<0"),
        pytest.param({"sample": -1}, r"sample must be .*got -1", id="sample<0"),
        pytest.param({"sample": "some"}, r"sample must be .*got 'some'", id="sample=some"),
        pytest.param({"sample": True}, r"sample must be .*got True", id="sample=True"),
        pytest.param({"directions": -2}, r"directions must be a non-negative int", id="dir<0"),
        pytest.param(
            {"sample": 0, "directions": 0}, r"nothing to check: sample=0 and directions=0", id="0+0"
        ),
    ],
)
def test_out_of_range_settings_raise_settings_error(options: dict[str, Any], match: str) -> None:
    """Each bad option is a SettingsError that names the option and the value given."""
    assert_rejected(errors.SettingsError, match, loss, make_params(), grad, **options)


# -- the report --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_report",
    [passing_report, failing_report, nondeterministic_report],
    ids=["passing", "failing", "nondeterministic"],
)
def test_to_dict_is_strict_json_of_builtin_types(make_report: Callable[[], gg.CheckReport]) -> None:
    """to_dict() holds only built-in types and survives json.dumps(allow_nan=False)."""
    report = make_report()
    data = report.to_dict()

    builtin_only(data)
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["passed"] is report.passed


@pytest.mark.parametrize(
    "options", [{"sample": np.int64(4)}, {"seed": np.int64(7)}], ids=["sample", "seed"]
)
def test_to_dict_is_strict_json_with_numpy_int_settings(options: dict[str, Any]) -> None:
    """NumPy ints accepted for sample and seed come back as built-in ints in to_dict()."""
    data = gg.check(loss, make_params(), grad, **{"seed": 0, **options}).to_dict()

    builtin_only(data)
    json.dumps(data, allow_nan=False)


def test_raise_for_failure_raises_with_the_report() -> None:
    """A failed check raises GradientCheckError carrying the report and naming the tensor."""
    report = failing_report()

    with pytest.raises(gg.GradientCheckError, match=r"FAILED.*\bb\b") as info:
        report.raise_for_failure()

    assert isinstance(info.value, gg.GradGuardError)
    assert info.value.report is report


def test_raise_for_failure_returns_a_passing_report() -> None:
    """A passed check's raise_for_failure() returns the report itself."""
    report = passing_report()

    assert report.raise_for_failure() is report


def test_str_shows_every_tensor_the_verdict_and_the_hint() -> None:
    """str(report) names every tensor, says PASSED or FAILED, and gives the failing one's hint."""
    passed, failed = str(passing_report()), failing_report()
    text = str(failed)

    assert "PASSED" in passed
    assert "W" in passed and "b" in passed
    assert "FAILED" in text
    assert all(name in text for name in ("W", "b"))
    assert failed["b"].hint
    assert f"b: {failed['b'].hint}" in text


def test_report_is_indexed_by_tensor_name() -> None:
    """report["W"] is W's verdict; an unknown name is a KeyError listing the tensors."""
    report = passing_report()

    assert report["W"].name == "W"
    assert report["W"].shape == (2, 3)
    with pytest.raises(KeyError, match=r"nope.*W, b"):
        report["nope"]


def test_failing_check_names_exactly_the_wrong_tensor() -> None:
    """Only the tensor with the wrong gradient is in report.failed, with a constant-factor hint."""
    report = failing_report()

    assert not report.passed
    assert report.failed == ("b",)
    assert report["W"].passed
    assert "2 x numeric" in report["b"].hint


def test_seed_mode_evaluates_twice_per_element_plus_two() -> None:
    """sample="all", directions=0 on n elements makes 2n + 2 evaluations when it passes."""
    params = make_params()
    n = sum(value.size for value in params.values())

    report = gg.check(loss, params, grad, sample="all", directions=0)

    assert report.passed, str(report)
    assert report.evaluations == 2 * n + 2
    assert report.gradient_calls == 1
    assert [(p.coordinates, p.directions) for p in report.params] == [(6, 0), (3, 0)]


def test_nondeterministic_loss_is_reported_not_judged() -> None:
    """A loss that changes at the same point gives status nondeterministic and a dropout hint."""
    report = nondeterministic_report()

    assert report.status == gg.Status.NONDETERMINISTIC
    assert report.to_dict()["status"] == "nondeterministic"
    assert not report.passed
    assert "dropout" in report.hint or "seed" in report.hint
    assert all(p.status == gg.Status.NONDETERMINISTIC for p in report.params)
