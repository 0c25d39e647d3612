"""The TensorFlow / Keras adapter: what it claims, how it evaluates, what it leaves behind,
what it refuses.

Real TensorFlow and Keras throughout (CPU); the GPU test skips cleanly without a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hypothesis.strategies as st
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings

import gradguard as gg
from gradguard import errors
from gradguard_tensorflow import (
    TensorFlowAdapter,
    TFParams,
    gradguard_adapter_claim,
    model_loss,
)
from gradguard_tensorflow._tf32 import Tf32Switch
from gradguard_tensorflow._view import TensorFlowView
from zoo.tf_models import snapshot

X = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
Y = np.random.default_rng(1).standard_normal((8, 2)).astype(np.float32)


def mlp(dropout: float = 0.0, batchnorm: bool = False, name: str = "mlp") -> keras.Model:
    """A fresh, compiled 5 -> 6 -> 2 tanh MLP with fixed weights."""
    keras.utils.set_random_seed(7)
    layers: list[Any] = [keras.Input((5,)), keras.layers.Dense(6, activation="tanh", name="h")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization(name="bn"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="drop"))
    layers.append(keras.layers.Dense(2, name="out"))
    model = keras.Sequential(layers, name=name)
    model.compile(loss="mse")
    return model


def tf_params() -> dict[str, tf.Variable]:
    """Plain tf.Variables, as a hand-written TF model keeps them."""
    rng = np.random.default_rng(3)
    return {
        "w": tf.Variable(rng.standard_normal((5, 2)).astype(np.float32), name="w"),
        "b": tf.Variable(np.zeros(2, np.float32), name="b"),
    }


def tf_loss(p: dict[str, tf.Variable]) -> tf.Tensor:
    return tf.reduce_mean(tf.square(tf.tanh(X @ p["w"] + p["b"]) - Y))


def bytes_of(variables: Any) -> list[bytes]:
    return [np.asarray(v.numpy()).tobytes() for v in variables]


# -- claiming -----------------------------------------------------------------------------------


def test_importing_the_plugin_does_not_import_tensorflow() -> None:
    """`import gradguard, gradguard_tensorflow` and asking it to claim NumPy params load
    neither TensorFlow nor Keras."""
    code = (
        "import sys, numpy as np, gradguard, gradguard_tensorflow;"
        "assert gradguard_tensorflow.gradguard_adapter_claim(params=np.ones(3)) is None;"
        "assert gradguard.find_adapter(np.ones(3)).name == 'numpy';"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_claims_variables_models_layers_modules_and_containers_of_them() -> None:
    """tf.Variable, keras.Variable, keras models and layers, tf.Module, TFParams, and dicts or
    lists holding any of them go to the TensorFlow adapter; NumPy params do not."""
    model = mlp()
    variable = tf.Variable([1.0])
    claimed = [
        variable,
        model.trainable_variables[0],
        model,
        model.layers[0],
        tf.Module(),
        TFParams(model),
        [variable],
        {"a": {"b": (variable,)}},
        tf.constant([1.0]),  # claimed, to be refused with a useful message
    ]
    for params in claimed:
        assert isinstance(gradguard_adapter_claim(params=params), TensorFlowAdapter)
        assert gg.find_adapter(params).name == "tensorflow"
    for params in (np.ones(2), {"a": np.ones(2)}, [], 1.0):
        assert gradguard_adapter_claim(params=params) is None


def test_tensors_are_named_by_keras_path_dict_key_or_variable_name() -> None:
    """Keras variables get their path, dict entries their keys, tf.Variables their name
    (made unique when several share one); a variable given twice is refused (as in every
    adapter: the two would move together)."""

    def names(params: Any) -> tuple[str, ...]:
        with TensorFlowView(params, lambda p: 0.0, None, "auto") as view:
            return view.layout.names

    assert names(mlp()) == ("mlp/h/kernel", "mlp/h/bias", "mlp/out/kernel", "mlp/out/bias")
    assert names({"enc": tf_params()}) == ("enc.w", "enc.b")
    a, b = tf.Variable([1.0]), tf.Variable([2.0])
    assert names([a, b]) == ("Variable_0", "Variable_1")
    with pytest.raises(errors.InvalidParamsError, match="share memory"):
        names([a, b, a])
    model = mlp()
    with pytest.raises(errors.InvalidParamsError, match=r"'(mlp/h/\w+)' and '\1' share memory"):
        names([model, model.layers[0]])


def test_a_tf_module_contributes_its_trainable_variables_and_keeps_its_state() -> None:
    """A tf.Module is checked through its trainable variables; its other variables are state:
    the loss may write them, and they are reset after every evaluation and at the end."""

    class Scaled(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(np.ones((5, 2), np.float32), name="w")
            self.calls = tf.Variable(0.0, trainable=False, name="calls")

        def __call__(self, x: Any) -> Any:
            self.calls.assign_add(1.0)
            return tf.reduce_sum(tf.sin(x @ self.w)) * (1.0 + 0.0 * self.calls)

    module = Scaled()
    report = gg.check(lambda m: m(X), module, seed=0)
    assert report.passed and report.params[0].name == "w"
    assert "state_reset" in report.notes
    assert module.calls.numpy() == 0.0


# -- how the loss is evaluated -------------------------------------------------------------------


def test_keras_model_is_checked_in_a_float64_trace_and_reports_its_own_dtypes() -> None:
    """By default a float32 Keras model is evaluated through a float64 trace: loss_dtype
    float64, the notes say so, the report's tensors keep float32. The analytic gradient is the
    model's own float32 one (tolerance 1e-5, its round-off allowed for); with
    native_gradient=False the float64 trace's (tolerance 1e-6)."""
    model = mlp(dropout=0.2, batchnorm=True)
    report = gg.check(model_loss(model, X, Y), model, seed=0)
    assert report.passed
    assert report.dtype == "float64" and report.tolerance == 1e-5
    assert report.notes["gradient_dtype"] == "float32"
    assert str(report.notes["gradient"]).startswith("native float32 (the model as it trains)")
    off = gg.check(model_loss(model, X, Y), TFParams(model, native_gradient=False), seed=0)
    assert off.passed and off.tolerance == 1e-6 and "gradient_dtype" not in off.notes
    assert report.notes["evaluation"].startswith("float64 trace of the model, compiled")
    assert {p.dtype for p in report.params} == {"float32"}
    assert report.difference < 1e-6  # float32 backprop against float64 differences


class _Float32OnlyBug(keras.layers.Layer):
    """tanh with a tf.custom_gradient whose backward is 2% off in float32 only (a kernel
    that dispatches on dtype)."""

    def call(self, z: Any) -> Any:
        @tf.custom_gradient
        def f(z: Any) -> Any:
            def grad(g: Any) -> Any:
                d = g * (1 - tf.tanh(z) ** 2)
                return d * 1.02 if z.dtype == tf.float32 else d

            return tf.tanh(z), grad

        return f(z)


def _float32_bug_model(dropout: float = 0.0) -> keras.Model:
    keras.utils.set_random_seed(7)
    layers: list[Any] = [keras.Input((5,)), keras.layers.Dense(6, name="h")]
    layers.append(_Float32OnlyBug(name="act"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="drop"))
    layers.append(keras.layers.Dense(2, name="out"))
    model = keras.Sequential(layers, name="f32")
    model.compile(loss="mse")
    return model


def test_a_custom_gradient_wrong_only_in_float32_is_caught() -> None:
    """The gradient under test is the one training uses: the float64 trace would run the
    correct float64 branch of the custom gradient; the native gradient runs the float32 one."""
    model = _float32_bug_model()
    report = gg.check(model_loss(model, X, Y), model, seed=0)
    assert report.failed == ("f32/h/kernel", "f32/h/bias"), str(report)
    assert str(report.notes["gradient"]).startswith("native float32")
    off = gg.check(model_loss(model, X, Y), TFParams(model, native_gradient=False), seed=0)
    assert off.passed
    # Dropout in training mode draws different masks in float32 and float64: the check keeps
    # the float64 trace's gradient (same draws on both sides) and says why.
    model = _float32_bug_model(dropout=0.3)
    report = gg.check(model_loss(model, X, Y, training=True), model, seed=0)
    assert report.passed and "draws random numbers" in str(report.notes["gradient"])


def test_native_precision_evaluates_in_the_variables_dtype() -> None:
    """TFParams(precision="native") judges a float32 model as float32 (tolerance 1e-2)."""
    model = mlp()
    report = gg.check(model_loss(model, X, Y), TFParams(model, precision="native"), seed=0)
    assert report.passed and report.dtype == "float32" and report.tolerance == 1e-2
    assert report.notes["evaluation"].startswith("float32 (the variables' own dtype), compiled")


def test_a_layer_that_hard_codes_float32_falls_back_to_native_and_says_why() -> None:
    """A float64 trace that still computes in float32 (or fails) is not used: the check runs
    in float32 and the notes name the reason; precision="float64" refuses instead."""

    class Doubler(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x * tf.constant(2.0, tf.float32)

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2), Doubler()], name="hard")
    loss = lambda m: tf.reduce_mean(tf.square(m(X) - Y))  # noqa: E731
    report = gg.check(loss, model, seed=0)
    assert report.passed and report.dtype == "float32"
    assert "no float64 trace: tracing in float64 failed" in report.notes["evaluation"]
    cast = lambda m: tf.reduce_mean(tf.cast(m(X), tf.float32) ** 2)  # noqa: E731
    with pytest.raises(errors.SettingsError, match="still computes in float32"):
        gg.check(cast, TFParams(mlp(), precision="float64"))


def test_keras_variables_are_never_written_during_the_check() -> None:
    """While the check runs, the model's own variables keep their values: the loss reads the
    perturbed values through a StatelessScope (a py_function reads the real variables at
    every evaluation to prove it)."""
    model = mlp(batchnorm=True)
    real = [v.value for v in model.variables]
    before = bytes_of(real)
    seen: list[bool] = []

    def watch(value: Any) -> Any:
        seen.append(bytes_of(real) == before)
        return value

    def loss(m: Any) -> Any:
        out = tf.reduce_mean(tf.square(m(X, training=True) - Y))
        return tf.py_function(watch, [out], out.dtype)

    report = gg.check(loss, model, seed=0)
    assert report.passed and len(seen) >= report.evaluations and all(seen)
    assert report.notes["writes"].startswith("none")


def test_plain_tf_variables_are_assigned_densely_and_restored() -> None:
    """A loss over plain tf.Variables is evaluated by dense assigns inside compiled calls,
    in float32; afterwards every variable is bit-identical."""
    p = tf_params()
    before = bytes_of(p.values())
    report = gg.check(tf_loss, p, seed=0)
    assert report.passed and report.dtype == "float32"
    assert report.notes["writes"].startswith("dense assign")
    assert report.notes["evaluation"].endswith("compiled (tf.function)")
    assert bytes_of(p.values()) == before


def test_a_loss_traced_before_the_check_is_evaluated_by_dense_assigns() -> None:
    """A loss that is a tf.function the user already traced on the model reuses that trace,
    which reads the variables directly: the graph shows it, the check assigns densely
    instead of mapping, passes, and leaves every variable bit-identical."""
    model = mlp()

    @tf.function
    def loss(m: Any) -> Any:
        return tf.reduce_mean(tf.square(m(X) - Y))

    loss(model)
    before = snapshot(model)
    report = gg.check(loss, model, seed=0)
    assert report.passed and report.notes["writes"].startswith("dense assign")
    assert "the loss reads mlp/h/kernel" in report.notes["evaluation"]
    assert snapshot(model) == before


def test_a_loss_that_cannot_be_compiled_runs_eagerly_and_says_why() -> None:
    """A loss that calls .numpy() cannot be traced: it is evaluated eagerly, the check still
    works, and the notes say why it was not compiled."""
    model = mlp()

    def loss(m: Any) -> Any:
        out = m(X)
        scale = 1.0 if np.isfinite(out.numpy()).all() else 0.0
        return scale * tf.reduce_mean(tf.square(out - Y))

    report = gg.check(loss, model, seed=0)
    assert report.passed
    assert "eager; " in report.notes["evaluation"]
    assert "not compiled: AttributeError" in report.notes["evaluation"]


def test_a_model_loss_is_traced_once_and_reused_by_later_checks() -> None:
    """Checking the same model with the same model_loss again reuses the compiled functions
    (no tracing), and gives the same report for the same seed."""
    model = mlp()
    loss = model_loss(model, X, Y)
    first = gg.check(loss, model, seed=3)
    second = gg.check(loss, model, seed=3)
    assert first.notes["trace_s"] > 0 and second.notes["trace_s"] == 0
    assert second.notes["trace"].startswith("reused")
    assert second.difference == first.difference and second.loss == first.loss


def test_model_loss_is_the_models_own_compiled_loss_with_regularization() -> None:
    """model_loss evaluates compute_loss (compiled loss plus weight and activity
    regularization) as an eager call does; training=False is the default."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(
                4,
                kernel_regularizer=keras.regularizers.L2(0.1),
                activity_regularizer=keras.regularizers.L2(0.05),
            ),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(2),
        ]
    )
    model.compile(loss="mse")
    loss = model_loss(model, X, Y)
    eager = model.compute_loss(x=X, y=Y, y_pred=model(X, training=False), training=False)
    report = gg.check(loss, TFParams(model, precision="native"), seed=0)
    assert report.passed
    assert report.loss == pytest.approx(float(eager), rel=1e-6)
    assert not loss.training


def test_dropout_in_training_mode_is_repeatable_and_batchnorm_statistics_untouched() -> None:
    """With training=True, every evaluation draws the same dropout mask (no nondeterminism
    verdict) and BatchNormalization's moving statistics and the seed state do not move."""
    model = mlp(dropout=0.5, batchnorm=True)
    before = snapshot(model)
    for precision in ("auto", "native"):
        report = gg.check(
            model_loss(model, X, Y, training=True), TFParams(model, precision=precision), seed=1
        )
        assert report.passed, str(report)
    assert snapshot(model) == before


def test_state_written_outside_params_is_reset_so_random_draws_repeat() -> None:
    """A loss that draws from a tf.random.Generator (or bumps a counter) that is not in
    params: each evaluation starts from the same generator state, so the draws repeat, and
    the generator and the counter are back where they were after the check."""
    generator = tf.random.Generator.from_seed(11)
    counter = tf.Variable(0, name="counter")
    p = tf_params()

    def loss(q: Any) -> Any:
        counter.assign_add(1)
        keep = tf.cast(generator.uniform([8, 2]) > 0.5, tf.float32)
        return tf.reduce_mean(tf.square(keep * tf.tanh(X @ q["w"] + q["b"]) - Y))

    state = generator.state.numpy().copy()
    report = gg.check(loss, p, seed=0)
    assert report.passed, str(report)
    assert np.array_equal(generator.state.numpy(), state) and counter.numpy() == 0


def test_a_disconnected_variable_counts_as_a_zero_gradient() -> None:
    """A variable the tape gives no gradient for counts as zero: it passes when the loss does
    not depend on it, fails when it does, and the notes list it."""
    used, unused = tf.Variable([1.0, 2.0], name="used"), tf.Variable([3.0], name="unused")
    report = gg.check(lambda v: tf.reduce_sum(v[0] ** 2), [used, unused], seed=0)
    assert report.passed and report.notes["no_gradient"] == "unused"
    hidden = lambda v: tf.reduce_sum(tf.stop_gradient(v[0]) ** 2)  # noqa: E731
    report = gg.check(hidden, [used, unused], seed=0)
    assert report.failed == ("used",)


# -- the analytic gradient given by the caller ---------------------------------------------------


def test_a_given_gradient_callable_or_structure_is_checked_in_the_variables_dtype() -> None:
    """grad may be a callable or a structure mirroring params (a list in trainable order, or a
    dict by name); the loss is still evaluated in a float64 trace, the given gradient judged
    as a float32 gradient (tolerance 1e-5); a wrong one fails on the right tensor."""
    model = mlp()

    def loss(m: Any) -> Any:
        return tf.reduce_mean(tf.square(m(X) - Y))

    def grad(m: Any) -> Any:
        with tf.GradientTape() as tape:
            value = loss(m)
        return tape.gradient(value, m.trainable_variables)

    report = gg.check(loss, model, grad, seed=0)
    assert report.passed and report.dtype == "float64" and report.tolerance == 1e-5
    assert report.notes["evaluation"].startswith("float64 trace of the model")
    assert report.notes["gradient_dtype"] == "float32"
    by_name = {v.path: g for v, g in zip(model.trainable_variables, grad(model), strict=True)}
    by_name["mlp/out/bias"] = 3.0 * by_name["mlp/out/bias"]
    assert gg.check(loss, model, by_name, seed=0).failed == ("mlp/out/bias",)


def test_a_given_float32_gradient_with_a_small_regularization_bug_fails() -> None:
    """A float32 Keras model with an L2 regularizer and a hand-written gradient whose
    regularization term is 1.6x too large (0.6% of the kernel's gradient): judged against a
    float64 trace with the float32 gradient's own tolerance, it fails on that kernel; judged
    in float32 with tolerance 1e-2 (before) it passed."""
    keras.utils.set_random_seed(3)
    l2 = 1e-3
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation="tanh", name="h"),
            keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(l2), name="out"),
        ],
        name="reg",
    )

    def loss(m: Any) -> Any:
        return tf.reduce_mean(tf.square(m(X) - Y)) + tf.add_n(m.losses)

    def grad(m: Any) -> Any:
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(tf.square(m(X) - Y))
        grads = tape.gradient(value, m.trainable_variables)
        kernel = m.get_layer("out").kernel
        # The bug: 2 * 1.6 * l2 * W instead of 2 * l2 * W.
        return [
            g + 3.2 * l2 * v if v is kernel else g
            for v, g in zip(m.trainable_variables, grads, strict=True)
        ]

    def good(m: Any) -> Any:
        with tf.GradientTape() as tape:
            value = loss(m)
        return tape.gradient(value, m.trainable_variables)

    at = [v.path for v in model.trainable_variables].index("reg/out/kernel")
    g_good, g_bad = good(model)[at], grad(model)[at]
    share = float(tf.norm(g_bad - g_good) / tf.norm(g_good))
    assert 0.002 < share < 0.02, share
    assert gg.check(loss, model, good, seed=0).passed
    report = gg.check(loss, model, grad, seed=0)
    assert report.failed == ("reg/out/kernel",), str(report)


def test_bad_gradients_are_refused_with_the_fix() -> None:
    """A gradient of the wrong count, shape or value gets a GradientError naming the tensor."""
    p = tf_params()
    with pytest.raises(errors.GradientError, match="1 tensor"):
        gg.check(tf_loss, p, [np.zeros((5, 2))])
    with pytest.raises(errors.GradientError, match=r"'b' has shape \(3,\)"):
        gg.check(tf_loss, p, {"w": np.zeros((5, 2)), "b": np.zeros(3)})
    with pytest.raises(errors.GradientError, match="non-finite"):
        gg.check(tf_loss, p, {"w": np.full((5, 2), np.nan), "b": np.zeros(2)})


# -- bad input -------------------------------------------------------------------------------------


def test_bad_params_are_refused_with_the_fix() -> None:
    """Integer variables, tensors, foreign leaves, frozen and unbuilt models get an
    InvalidParamsError that names the problem and the fix."""
    frozen = mlp(name="frozen")
    frozen.trainable = False
    cases: list[tuple[Any, str]] = [
        (tf.Variable([1, 2], name="steps"), "'steps'.*int32.*only float16"),
        (tf.constant([1.0]), "tf.Tensor.*wrap it, tf.Variable"),
        ({"w": tf.Variable([1.0]), "x": np.ones(2)}, "'x' is a numpy.ndarray"),
        (frozen, "no trainable variables.*unfreeze"),
        (keras.Sequential([keras.layers.Dense(3)], name="lazy"), "not built.*call it once"),
    ]
    for params, message in cases:
        with pytest.raises(errors.InvalidParamsError, match=message):
            gg.check(lambda p: 0.0, params)


def test_bad_losses_are_refused_and_variables_left_untouched() -> None:
    """A non-scalar, integer or None loss gets a LossError; a model_loss of an uncompiled
    model too; nothing is changed."""
    model = mlp()
    before = snapshot(model)
    losses: list[tuple[Callable[..., Any], str]] = [
        (lambda m: m(X), r"shape \(8, 2\).*reduce it"),
        (lambda m: tf.reduce_sum(tf.cast(m(X) > 0, tf.int32)), "dtype int32"),
        (lambda m: None, "returned None"),
        (lambda m: [tf.reduce_mean(m(X))], r"returned a list .*not \(loss, extras\)"),
    ]
    for loss, message in losses:
        with pytest.raises(errors.LossError, match=message):
            gg.check(loss, model)
    bare = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    with pytest.raises(errors.LossError, match="compile it with one"):
        model_loss(bare, X, Y)
    with pytest.raises(errors.SettingsError, match="precision must be one of"):
        TFParams(model, precision="double")
    assert snapshot(model) == before


# -- restoring -------------------------------------------------------------------------------------


def _failing_at(call: int, exception: BaseException) -> Callable[[Any], Any]:
    """A py_function body that raises on its ``call``-th run."""
    calls = [0]

    def body(value: Any) -> Any:
        calls[0] += 1
        if calls[0] == call:
            raise exception
        return value

    return body


@pytest.mark.parametrize("kind", ["keras", "tf"])
def test_an_error_midway_leaves_every_variable_bit_identical(kind: str) -> None:
    """A loss that fails on its 7th compiled evaluation (after perturbations have started)
    leaves every variable, trainable or not, bit-identical; the error propagates."""
    model = mlp(dropout=0.3, batchnorm=True)
    p = tf_params()
    variables = model.variables if kind == "keras" else list(p.values())
    before = bytes_of(variables)
    body = _failing_at(7, ValueError("midway"))

    def loss(params: Any) -> Any:
        value = (
            tf.reduce_mean(tf.square(params(X, training=True) - Y))
            if kind == "keras"
            else tf_loss(params)
        )
        return tf.py_function(body, [value], value.dtype)

    with pytest.raises(tf.errors.OpError, match="midway"):
        gg.check(loss, model if kind == "keras" else p, seed=0)
    assert bytes_of(variables) == before


@pytest.mark.parametrize("kind", ["keras", "tf"])
def test_keyboard_interrupt_midway_leaves_every_variable_bit_identical(kind: str) -> None:
    """Ctrl-C during an evaluation (here from an eager loss, after a perturbed value was
    assigned) leaves every variable bit-identical, and TF32 as it was."""
    model = mlp(batchnorm=True)
    p = tf_params()
    variables = model.variables if kind == "keras" else list(p.values())
    before = bytes_of(variables)
    calls = [0]

    def loss(params: Any) -> Any:
        value = tf_loss(params) if kind == "tf" else tf.reduce_mean(params(X, training=True))
        scale = float(value.numpy() != 0.0)  # cannot be traced: every evaluation runs this
        calls[0] += 1
        if calls[0] == 9:
            raise KeyboardInterrupt
        return scale * value

    with pytest.raises(KeyboardInterrupt):
        gg.check(loss, model if kind == "keras" else p, seed=0)
    assert calls[0] == 9 and bytes_of(variables) == before
    assert tf.config.experimental.tensor_float_32_execution_enabled()


SHAPES = ((3, 4), (5,))


@st.composite
def perturbations(draw: st.DrawFn) -> list[tuple[int, list[int] | None, list[float]]]:
    """A few writes: a segment, some flat positions (None: the whole tensor), values."""
    writes = []
    for _ in range(draw(st.integers(1, 4))):
        segment = draw(st.integers(0, len(SHAPES) - 1))
        size = int(np.prod(SHAPES[segment]))
        positions = st.lists(st.integers(0, size - 1), min_size=1, max_size=3, unique=True)
        index = draw(st.none() | positions)
        count = size if index is None else len(index)
        floats = st.floats(-3.0, 3.0, allow_nan=False, width=32)
        values = draw(st.lists(floats, min_size=count, max_size=count))
        writes.append((segment, index, values))
    return writes


@pytest.mark.parametrize("kind", ["keras", "tf"])
@settings(max_examples=15, deadline=None)
@given(writes=perturbations())
def test_writes_are_what_the_loss_sees_and_leaving_restores_every_bit(
    kind: str, writes: list[tuple[int, list[int] | None, list[float]]]
) -> None:
    """Whatever is written (positions or whole tensors, one tensor at a time) is what the
    loss sees, rounded to the evaluation dtype (float64 for Keras variables, float32 for
    plain ones); reset and leaving the view put every bit back."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape) for shape in SHAPES]
    initial = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
    make = keras.Variable if kind == "keras" else tf.Variable
    variables = [make(value) for value in initial]

    def loss(vs: Any) -> Any:
        values = [tf.convert_to_tensor(v) for v in vs]  # float64 in a float64 trace
        pairs = zip(weights, values, strict=True)
        return sum(tf.reduce_sum(tf.cast(w, v.dtype) * v) for w, v in pairs)

    dtype = np.float64 if kind == "keras" else np.float32
    tolerance = 1e-12 if kind == "keras" else 1e-5
    reference = sum(float(np.sum(w * v)) for w, v in zip(weights, initial, strict=True))
    with TensorFlowView(variables, loss, None, "auto") as view:
        assert view.evaluate() == pytest.approx(reference, rel=tolerance, abs=tolerance)
        assert view.loss_dtype == dtype
        for segment, index, values in writes:
            where = None if index is None else np.array(index, dtype=np.intp)
            if where is not None and where.size == 1:  # the engine's coordinate-probe path
                stored = np.array([view.write_element(segment, int(where[0]), values[0])])
            else:
                stored = view.write(segment, where, np.array(values, dtype=np.float64))
            assert np.array_equal(stored, np.array(values).astype(dtype).astype(np.float64))
            current = [view.original(s).copy() for s in range(len(SHAPES))]
            current[segment][slice(None) if where is None else where] = stored
            pairs = zip(weights, current, strict=True)
            expected = sum(float(np.sum(w.reshape(-1) * c)) for w, c in pairs)
            assert view.evaluate() == pytest.approx(expected, rel=tolerance, abs=tolerance)
            if where is not None and where.size == 1:
                view.reset_element(segment, int(where[0]))
            else:
                view.reset(segment, where)
            assert view.evaluate() == pytest.approx(reference, rel=tolerance, abs=tolerance)
            assert bytes_of(variables) == [v.tobytes() for v in initial]
    assert bytes_of(variables) == [v.tobytes() for v in initial]


def _min_read_ms(variable: tf.Variable) -> float:
    """Fastest of 15 compiled reads of one element: a plain read aliases the buffer, a read
    in copy-on-read mode copies the whole variable first."""
    read = tf.function(lambda: variable[0, 0])
    read()
    times = []
    for _ in range(15):
        started = time.perf_counter()
        read().numpy()
        times.append(time.perf_counter() - started)
    return 1e3 * min(times)


def test_checks_leave_no_variable_in_copy_on_read_mode() -> None:
    """After a check (Keras or plain tf.Variables), reading a 16 MB variable costs what it did
    before; one sparse write, for contrast, makes every later read copy the whole variable."""
    big = tf.Variable(np.ones((2048, 2048), np.float32), name="big")
    small = tf.Variable(np.ones(2048, np.float32), name="small")
    baseline = _min_read_ms(big)
    loss = lambda v: tf.reduce_sum(tf.tanh(v[1][None, :] @ v[0][:, :4]))  # noqa: E731
    assert gg.check(loss, [big, small], sample=8, directions=1, seed=0).passed
    after_check = _min_read_ms(big)
    big.scatter_nd_update([[0, 0]], [1.0])
    after_sparse = _min_read_ms(big)
    assert after_sparse > 4 * baseline, (baseline, after_sparse)  # the probe can see it
    assert after_check < 2 * baseline + 0.05, (baseline, after_check)


# -- TF32 ----------------------------------------------------------------------------------------


def test_tf32_is_off_while_a_check_runs_and_restored_after() -> None:
    """The check turns TF32 off while it traces and evaluates the loss (which records the
    flag), and turns it back on afterwards, also after an error; if it was off, it stays off."""
    seen: list[bool] = []

    def loss(p: Any) -> Any:
        seen.append(tf.config.experimental.tensor_float_32_execution_enabled())
        return tf_loss(p)

    assert tf.config.experimental.tensor_float_32_execution_enabled()
    gg.check(loss, tf_params(), seed=0)
    assert seen and not any(seen)
    assert tf.config.experimental.tensor_float_32_execution_enabled()
    with pytest.raises(errors.LossError):
        gg.check(lambda p: tf.ones(3) * p["b"][0], tf_params())
    assert tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        switch = Tf32Switch.off()
        assert not switch.was_on and switch.note(gpu=True) == "already disabled; left disabled"
        switch.restore()
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(True)


@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="needs a GPU")
def test_gpu_check_runs_without_tf32_and_records_it() -> None:  # pragma: no cover
    """On a GPU, a native float32 check of a matmul-heavy model runs with TF32 off (no false
    alarm from TF32's 10-bit mantissa), says so in the notes, and restores TF32."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((256,)), keras.layers.Dense(256, activation="tanh"), keras.layers.Dense(4)]
    )
    model.compile(loss="mse")
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
    report = gg.check(model_loss(model, x, y), TFParams(model, precision="native"), seed=0)
    assert report.passed, str(report)
    assert report.notes["tf32"] == "disabled during the check, then re-enabled"
    assert tf.config.experimental.tensor_float_32_execution_enabled()
