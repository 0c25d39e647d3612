"""Keras mixed-precision policies: a model under mixed_bfloat16 / mixed_float16 (with a
LossScaleOptimizer) is checked, not refused, and a correct one passes; the analytic side is
the gradient computed in the policy's compute dtype, judged as such, against finite
differences of the float64 trace, so a 5% error in a ``tf.custom_gradient`` is caught.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import gradguard as gg


@pytest.fixture(params=["mixed_bfloat16", "mixed_float16"])
def policy(request: pytest.FixtureRequest) -> Iterator[str]:
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield str(request.param)
    finally:
        keras.mixed_precision.set_global_policy(before)


def _model(policy: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16),
            keras.layers.Activation("gelu"),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )
    optimizer: keras.optimizers.Optimizer = keras.optimizers.SGD()
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer, "mse")
    return model


class _CustomTanh(keras.layers.Layer):  # type: ignore[misc]  # Keras ships no types
    """tanh through a tf.custom_gradient whose backward is scaled by ``factor`` (1.05: 5%)."""

    factor = 1.0

    def call(self, x: tf.Tensor) -> tf.Tensor:
        @tf.custom_gradient  # type: ignore[untyped-decorator]
        def tanh(x: tf.Tensor) -> tuple[tf.Tensor, Any]:
            y = tf.tanh(x)
            return y, lambda g: g * (1 - y * y) * _CustomTanh.factor

        return tanh(x)


def test_a_custom_gradient_under_a_mixed_policy_is_checked_in_its_compute_dtype(
    policy: str,
) -> None:
    """The native gradient under the policy (bfloat16 or float16 compute) is the analytic
    side, judged as that dtype, against the float64 trace: the correct model passes, a 5%
    error in the custom gradient fails the layer before it and nothing after it."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16),
            _CustomTanh(),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )
    optimizer: keras.optimizers.Optimizer = keras.optimizers.SGD()
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer, "mse")
    x = np.random.RandomState(0).randn(32, 8).astype("float32")
    y = np.random.RandomState(1).randn(32, 1).astype("float32")

    def loss(model: keras.Model) -> tf.Tensor:
        return tf.reduce_mean((model(x) - y) ** 2)  # the output layer computes in float32

    compute = policy.removeprefix("mixed_")
    report = gg.check(loss, model, seed=0)
    assert report.passed, report
    assert report.notes["gradient_dtype"] == compute
    assert f"a mixed policy computing in {compute}" in str(report.notes["gradient"])
    assert "float64 trace" in str(report.notes["evaluation"])
    _CustomTanh.factor = 1.05
    try:
        buggy = gg.check(loss, model, seed=0)
    finally:
        _CustomTanh.factor = 1.0
    failed = {p.name.split("/")[-2] for p in buggy.params if p.status is gg.Status.FAIL}
    assert failed == {model.layers[0].name}, buggy


def test_a_mixed_precision_keras_model_gets_a_correct_verdict(policy: str) -> None:
    """A correct model passes (float64 trace, native gradient in the compute dtype), and the
    policy is untouched."""
    x = np.random.RandomState(0).randn(32, 8).astype("float32")
    y = np.random.RandomState(1).randn(32, 1).astype("float32")

    def loss(model: keras.Model) -> tf.Tensor:
        return tf.reduce_mean((model(x) - y) ** 2)

    report = gg.check(loss, _model(policy), seed=0)
    assert report.passed, report
    assert str(report.notes["evaluation"]).startswith("float64 trace")
    assert keras.mixed_precision.global_policy().name == policy


def test_a_loss_that_casts_to_float32_is_evaluated_in_place_without_a_false_alarm(
    policy: str,
) -> None:
    """A loss that casts the model's output with tf.cast(..., tf.float32) keeps the float64
    trace from computing in float64: the check evaluates in the model's own dtype, judged with
    that dtype's own step and tolerance (bfloat16's for mixed_bfloat16, the kit's one mapping),
    says why in the notes, and raises no false alarm."""
    x = np.random.RandomState(0).randn(32, 8).astype("float32")
    y = np.random.RandomState(1).randn(32, 1).astype("float32")

    def loss(model: keras.Model) -> tf.Tensor:
        return tf.reduce_mean((tf.cast(model(x), tf.float32) - y) ** 2)

    report = gg.check(loss, _model(policy), seed=0)
    assert report.status is not gg.Status.FAIL, report
    assert "no float64 trace: the float64 trace still computes in float32" in str(
        report.notes["evaluation"]
    )
    if policy == "mixed_bfloat16":
        assert "judged with bfloat16's step" in str(report.notes["loss_precision"])
    assert keras.mixed_precision.global_policy().name == policy
