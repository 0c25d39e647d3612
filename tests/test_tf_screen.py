"""Joint screening on the TensorFlow adapter: one compiled call carries every perturbed tensor.

The view declares ``joint_writes``: a joint probe writes several whole tensors, the compiled
evaluation sees all of them (offsets into one dense argument), and resetting them, or leaving
the view however it is left, puts every bit back. Models are tiny and traced once per test.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import gradguard as gg
from gradguard_keras import KerasProbe
from gradguard_tensorflow import model_loss
from gradguard_tensorflow._view import TensorFlowView

X = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
Y = np.random.default_rng(1).standard_normal((8, 2)).astype(np.float32)
SHAPES = ((3, 4), (5,), (2, 2))


def scaled_gradient(scale: float) -> Any:
    """``w -> w`` whose backward multiplies the gradient by ``scale`` (1.0: correct)."""

    @keras.ops.custom_gradient
    def identity(w: Any) -> Any:
        def grad(*args: Any, upstream: Any = None) -> Any:
            return (args[0] if upstream is None else upstream) * scale

        return w, grad

    return identity


class ScaledDense(keras.layers.Dense):
    """A Dense layer whose kernel gradient is ``scale`` times the true one."""

    def __init__(self, units: int, scale: float, **kwargs: Any) -> None:
        super().__init__(units, **kwargs)
        self.scale = scale

    def call(self, inputs: Any) -> Any:
        kernel = scaled_gradient(self.scale)(keras.ops.convert_to_tensor(self.kernel))
        return self.activation(keras.ops.matmul(inputs, kernel) + self.bias)


def mlp(scale: float = 1.0) -> keras.Model:
    """A compiled 5 -> 6 -> 4 -> 2 tanh MLP; the middle kernel's gradient scaled."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation="tanh", name="h1"),
            ScaledDense(4, scale, activation="tanh", name="h2"),
            keras.layers.Dense(2, name="out"),
        ],
        name="mlp",
    )
    model.compile(loss="mse")
    return model


def bytes_of(variables: Any) -> list[bytes]:
    return [np.asarray(v.numpy()).tobytes() for v in variables]


@pytest.mark.parametrize("kind", ["keras", "tf"])
def test_joint_writes_are_what_the_loss_sees_and_reset_restores_every_bit(kind: str) -> None:
    """Several tensors perturbed at once (whole, or some positions), with a coordinate of
    one: the loss sees every one of them, rounded to the evaluation dtype; resetting each
    puts the original back, and the user's variables never change."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape) for shape in SHAPES]
    initial = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
    make = keras.Variable if kind == "keras" else tf.Variable
    variables = [make(value) for value in initial]

    def loss(vs: Any) -> Any:
        values = [tf.convert_to_tensor(v) for v in vs]  # float64 in a float64 trace
        return sum(
            tf.reduce_sum(tf.cast(w, v.dtype) * v) for w, v in zip(weights, values, strict=True)
        )

    dtype = np.float64 if kind == "keras" else np.float32
    tolerance = 1e-12 if kind == "keras" else 1e-5

    def expected(current: list[np.ndarray[Any, Any]]) -> float:
        return sum(float(np.sum(w.reshape(-1) * c)) for w, c in zip(weights, current, strict=True))

    originals: list[np.ndarray[Any, Any]] = []
    with TensorFlowView(variables, loss, None, "auto") as view:
        originals = [view.original(s).copy() for s in range(len(SHAPES))]
        reference = view.evaluate()
        assert reference == pytest.approx(expected(originals), rel=tolerance, abs=tolerance)
        assert view.joint_writes
        for _ in range(12):
            current = [o.copy() for o in originals]
            written = [s for s in range(len(SHAPES)) if rng.random() < 0.7] or [0]
            for s in written:
                size = originals[s].size
                if rng.random() < 0.5:
                    where = None
                    count = size
                else:
                    where = rng.choice(size, size=int(rng.integers(1, size + 1)), replace=False)
                    count = where.size
                values = rng.standard_normal(count)
                stored = view.write(s, where, values)
                assert np.array_equal(stored, values.astype(dtype).astype(np.float64))
                current[s][slice(None) if where is None else where] = stored
            assert len(view.perturbations) == len(written)
            got = view.evaluate()
            assert got == pytest.approx(expected(current), rel=tolerance, abs=tolerance)
            for s in written:
                view.reset(s, None)
            assert view.perturbations == ()
            assert view.evaluate() == reference
            assert bytes_of(variables) == [v.tobytes() for v in initial]
        # A joint probe left in flight (an interrupted check): leaving restores everything.
        for s in range(len(SHAPES)):
            view.write(s, None, originals[s] + 0.5)
    assert bytes_of(variables) == [v.tobytes() for v in initial]


def test_a_keras_model_is_screened_jointly_and_left_bit_identical() -> None:
    """The default check of a correct Keras model screens every tensor jointly: a constant
    number of evaluations, nothing written; a second check reuses the traces."""
    model = mlp()
    loss = model_loss(model, X, Y)
    before = bytes_of(model.variables)
    report = gg.check(loss, model, seed=0)
    assert report.passed, report
    assert report.notes["strategy"] == "screen"
    assert {p.judged_by for p in report.params} == {"screen"}
    assert report.evaluations <= 2 + 2 * 8 + 2 * 2  # base, 8 coordinates, 2 joint probes
    assert bytes_of(model.variables) == before
    again = gg.check(loss, model, seed=1)
    assert again.passed and again.notes["trace"].startswith("reused")


def test_a_custom_gradient_bug_in_one_layer_is_localized_by_group_testing() -> None:
    """A 1% error in one kernel's backward (a keras.ops.custom_gradient in its layer) fails
    that kernel alone; the tensors around it are cleared by the screen."""
    model = mlp(scale=1.01)
    before = bytes_of(model.variables)
    report = gg.check(model_loss(model, X, Y), model, seed=0)
    assert report.failed == ("mlp/h2/kernel",)
    assert report.notes["strategy"] == "screen" and int(report.notes["screen_suspects"]) >= 1
    assert sum(p.judged_by == "screen" for p in report.params) >= 4
    assert bytes_of(model.variables) == before


def test_plain_variables_are_screened_by_dense_assigns_and_restored() -> None:
    """Plain tf.Variables read by the loss: a joint probe assigns several densely inside one
    compiled call and assigns the originals back; a bug in a given gradient is localized."""
    rng = np.random.default_rng(3)
    params = {
        "w": tf.Variable(rng.standard_normal((5, 2)).astype(np.float32), name="w"),
        "b": tf.Variable(rng.standard_normal(2).astype(np.float32), name="b"),
        "s": tf.Variable(np.float32(0.7), name="s"),
    }

    def loss(p: dict[str, tf.Variable]) -> tf.Tensor:
        return tf.reduce_mean(tf.square(p["s"] * tf.tanh(X @ p["w"] + p["b"]) - Y))

    def grad(p: dict[str, tf.Variable]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            value = loss(p)
        g = dict(zip(p, tape.gradient(value, list(p.values())), strict=True))
        g["b"] = g["b"] * 1.1  # float32 evaluations: the tolerance is 1e-2
        return g

    before = bytes_of(params.values())
    report = gg.check(loss, params, grad, seed=0)
    assert report.failed == ("b",)
    assert report.notes["strategy"] == "screen"
    assert report["w"].judged_by == "screen" and report["s"].judged_by == "screen"
    assert bytes_of(params.values()) == before


@pytest.mark.parametrize("kind", ["keras", "tf"])
def test_keyboard_interrupt_during_a_joint_probe_leaves_every_variable_bit_identical(
    kind: str,
) -> None:
    """Ctrl-C while several tensors are perturbed at once (an eager loss that sees them)
    leaves every variable bit-identical."""
    if kind == "keras":
        model = mlp()
        variables = model.trainable_variables
        target: Any = model
    else:
        rng = np.random.default_rng(5)
        variables = [tf.Variable(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]
        target = variables
    before = bytes_of(variables)
    start = [np.array(b) for b in (v.numpy() for v in variables)]
    seen = []

    def loss(params: Any) -> Any:
        # Eager (.numpy() cannot be traced): the variables as this evaluation sees them.
        now = [np.asarray(v.numpy()) for v in variables]
        moved = sum(not np.array_equal(a, b) for a, b in zip(now, start, strict=True))
        seen.append(moved)
        if moved >= 2:
            raise KeyboardInterrupt
        if kind == "keras":
            return tf.reduce_mean(tf.square(params(X) - Y))
        return sum(tf.reduce_sum(tf.sin(tf.convert_to_tensor(v))) for v in params)

    with pytest.raises(KeyboardInterrupt):
        gg.check(loss, target, seed=0)
    assert seen[-1] >= 2
    assert bytes_of(variables) == before


def test_a_keras_probe_on_the_tensorflow_backend_is_screened() -> None:
    """The stateless view (KerasProbe) passes every perturbed value to stateless_call: a
    joint probe in one evaluation, the bug still named."""
    model = mlp(scale=1.1)  # evaluated in float32: the tolerance is 1e-2
    probe = KerasProbe(model, X, Y)
    before = bytes_of(model.variables)
    report = gg.check(probe.loss, probe, seed=0)
    assert report.notes["strategy"] == "screen"
    assert report.failed == ("mlp/h2/kernel",)
    assert bytes_of(model.variables) == before
