"""The TensorFlow adapter through the conformance suite (gradguard.testing): a float32 Keras
model (evaluated through a float64 trace) and plain tf.Variables (dense assigns)."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from gradguard.testing import AdapterConformance, ConformanceCase

X = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
Y = np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32)


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh", name="h"),
            keras.layers.Dense(2, name="out"),
        ],
        name="tiny",
    )
    model(X)
    return model


def _loss(m: Any) -> Any:
    return tf.reduce_mean((m(X) - Y) ** 2)


def _grads(m: keras.Model) -> list[Any]:
    with tf.GradientTape() as tape:
        value = _loss(m)
    return list(tape.gradient(value, m.trainable_variables))


def _replaced(m: keras.Model, value: Any) -> list[Any]:
    grads = _grads(m)
    grads[-1] = value  # tiny/out/bias
    return grads


def _shared() -> list[Any]:
    v = tf.Variable(np.ones(3))
    return [v, v]


class TestKerasConformance(AdapterConformance):
    case = ConformanceCase(
        adapter="tensorflow",
        make=_model,
        loss=_loss,
        grad=None,
        wrong_grad=lambda m: _replaced(m, 2 * _grads(m)[-1]),
        wrong_tensor="tiny/out/bias",
        snapshot=lambda m: [np.array(v.numpy()) for v in m.variables],
        vector_loss=lambda m: m(X),
        misshapen_grad=lambda m: _replaced(m, np.zeros(5)),
        nan_grad=lambda m: _replaced(m, np.full(2, np.nan)),
        shared=_shared,
    )


def _variables() -> dict[str, Any]:
    rng = np.random.default_rng(4)
    return {"w": tf.Variable(rng.normal(size=(3, 2))), "b": tf.Variable(rng.normal(size=2))}


def _variables_loss(p: dict[str, Any]) -> Any:
    return tf.reduce_sum(tf.sin(X.astype(np.float64) @ p["w"] + p["b"]) ** 2)


def _variables_grad(p: dict[str, Any]) -> dict[str, Any]:
    with tf.GradientTape() as tape:
        value = _variables_loss(p)
    gw, gb = tape.gradient(value, [p["w"], p["b"]])
    return {"w": gw, "b": gb}


class TestVariablesConformance(AdapterConformance):
    case = ConformanceCase(
        adapter="tensorflow",
        make=_variables,
        loss=_variables_loss,
        grad=None,
        wrong_grad=lambda p: {**_variables_grad(p), "b": 2 * _variables_grad(p)["b"]},
        wrong_tensor="b",
        snapshot=lambda p: [np.array(v.numpy()) for v in p.values()],
        vector_loss=lambda p: X.astype(np.float64) @ p["w"],
        misshapen_grad=lambda p: {**_variables_grad(p), "b": np.zeros(5)},
        nan_grad=lambda p: {**_variables_grad(p), "b": np.full(2, np.nan)},
        shared=_shared,
    )
