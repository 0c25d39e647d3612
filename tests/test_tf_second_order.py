"""``order=2`` (nested GradientTapes) and ``mode="forward"`` (ForwardAccumulator) in TensorFlow.

The planted bug is a real one: a ``tf.custom_gradient`` whose gradient function wraps its
factor in ``tf.stop_gradient`` (the gradient is right, its derivative misses a term). Keras
variables in float32, judged in the adapter's float64 trace.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import gradguard as gg
from gradguard.errors import SettingsError
from gradguard.results import Status


def _softplus(stop: bool) -> Any:
    @tf.custom_gradient  # type: ignore[misc]
    def softplus(x: Any) -> Any:
        def grad(g: Any) -> Any:
            s = tf.sigmoid(x)
            return g * (tf.stop_gradient(s) if stop else s)

        return tf.math.softplus(x), grad

    return softplus


class _Softplus(keras.layers.Layer):  # type: ignore[misc]
    def __init__(self, stop: bool) -> None:
        super().__init__()
        self.function = _softplus(stop)

    def call(self, x: Any) -> Any:
        return self.function(x)


X = np.random.default_rng(0).normal(size=(12, 4)).astype("float32")
Y = np.random.default_rng(1).normal(size=(12, 1)).astype("float32")


def _model() -> Any:
    """Two branches, one through the non-differentiable gradient, one through its twin."""
    keras.utils.set_random_seed(0)
    x = keras.Input((4,))
    bad = _Softplus(stop=True)(keras.layers.Dense(3, name="bad")(x))
    good = _Softplus(stop=False)(keras.layers.Dense(3, name="good")(x))
    out = keras.layers.Dense(1, name="out")(keras.layers.Concatenate()([bad, good]))
    return keras.Model(x, out)


def _loss(model: Any) -> Any:
    return keras.ops.mean((model(X) - Y) ** 2)


def test_non_differentiable_custom_gradient_fails_order2_its_twin_passes() -> None:
    """The bad branch's Dense blocks of H v are wrong (the activation's second derivative is
    lost); the twin branch and the output layer pass; weights bit-identical after; forward
    mode (ForwardAccumulator) passes the model, whose first derivatives are right."""
    model = _model()
    before = [w.numpy().copy() for w in model.weights]
    report = gg.check(_loss, model, order=2, seed=0)
    bad, good = model.get_layer("bad"), model.get_layer("good")
    assert set(report.failed) == {bad.kernel.path, bad.bias.path}
    assert report[good.kernel.path].status is Status.PASS
    assert report[model.get_layer("out").kernel.path].status is Status.PASS
    assert report.dtype == "float64"
    for w, saved in zip(model.weights, before, strict=True):
        assert w.numpy().tobytes() == saved.tobytes()
    forward = gg.check(_loss, model, mode="forward", seed=0)
    assert forward.passed, str(forward)
    assert "forward" in str(forward.notes["mode"])


def test_plain_variables_are_refused_for_order2() -> None:
    """tf.Variables read directly (no StatelessScope): a SettingsError naming what works."""
    v = tf.Variable([1.0, 2.0], dtype=tf.float64)
    with pytest.raises(SettingsError, match="Keras variables"):
        gg.check(lambda p: tf.reduce_sum(p[0] ** 3), [v], order=2)
