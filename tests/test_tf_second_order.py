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


def _model(stop: bool) -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5), _Softplus(stop), keras.layers.Dense(1)]
    )


def _loss(model: Any) -> Any:
    return keras.ops.mean((model(X) - Y) ** 2)


def test_non_differentiable_custom_gradient_fails_order2() -> None:
    """The first Dense layer's blocks of H v are wrong (the activation's second derivative is
    lost); the layer after it passes; weights bit-identical after."""
    model = _model(stop=True)
    before = [w.numpy().copy() for w in model.weights]
    report = gg.check(_loss, model, order=2, seed=0)
    first, second = model.layers[0], model.layers[2]
    assert set(report.failed) == {first.kernel.path, first.bias.path}
    assert report[second.kernel.path].status is Status.PASS
    assert report.dtype == "float64"
    for w, saved in zip(model.weights, before, strict=True):
        assert w.numpy().tobytes() == saved.tobytes()


def test_correct_custom_gradient_passes_order2_and_forward_mode() -> None:
    """The twin passes H v checks and forward-mode (ForwardAccumulator) probes."""
    model = _model(stop=False)
    assert gg.check(_loss, model, order=2, seed=0).passed
    report = gg.check(_loss, model, mode="forward", seed=0)
    assert report.passed
    assert "forward" in str(report.notes["mode"])


def test_plain_variables_are_refused_for_order2() -> None:
    """tf.Variables read directly (no StatelessScope): a SettingsError naming what works."""
    v = tf.Variable([1.0, 2.0], dtype=tf.float64)
    with pytest.raises(SettingsError, match="Keras variables"):
        gg.check(lambda p: tf.reduce_sum(p[0] ** 3), [v], order=2)
