"""A zoo of small Keras models for the TensorFlow adapter: correct ones and planted bugs.

Every model comes as a :class:`Case`: a fresh, built, compiled Keras model (named, so its
variable paths are fixed), a loss for ``gradguard.check``, and ``corrupted``: exactly the
variable paths whose analytic gradient the planted bug makes wrong. Everything is float32,
as a user's model would be, and small enough to check in well under a second.

Bugs are planted where TensorFlow users plant them: in a ``tf.custom_gradient`` (a wrong
factor on a weight's gradient, or on the input's gradient, which corrupts every variable
*upstream* of the layer and none of its own) and with a misplaced ``tf.stop_gradient``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from gradguard_tensorflow import model_loss

__all__ = ["Case", "all_cases", "bug_cases", "correct_cases", "snapshot"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One model to check, and what a correct check says about it."""

    name: str
    build: Callable[[], tuple[Any, Callable[..., Any]]] = dataclasses.field(repr=False)
    corrupted: frozenset[str] = frozenset()

    def make(self) -> tuple[Any, Callable[..., Any]]:
        """A fresh model (same weights every time) and its loss."""
        keras.utils.set_random_seed(1234)
        return self.build()


def snapshot(model: Any) -> list[tuple[str, bytes]]:
    """Every variable of the model (trainable or not, seed generator states included),
    as its path and the bytes of its value."""
    return [(v.path, np.asarray(v.numpy()).tobytes()) for v in model.variables]


# -- layers with planted bugs ------------------------------------------------------------------


class CustomGradientDense(keras.layers.Layer):
    """A dense layer whose backward pass is a hand-written ``tf.custom_gradient``.

    ``bug="kernel"`` doubles the kernel's gradient; ``bug="input"`` halves the gradient
    passed back to the layer's input (so everything upstream is wrong, nothing here);
    ``bug="subtle"`` scales the kernel's gradient by 1.001 (a 0.1% error, which only a
    float64 evaluation can tell from finite-difference noise).
    """

    def __init__(self, units: int, bug: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.bug = bug

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units,), name="bias", initializer="random_normal")

    def call(self, x: Any) -> Any:
        bug = self.bug

        @tf.custom_gradient
        def dense(x: Any, kernel: Any, bias: Any) -> Any:
            def grad(dy: Any) -> Any:
                dx = tf.matmul(dy, kernel, transpose_b=True)
                dkernel = tf.matmul(x, dy, transpose_a=True)
                dbias = tf.reduce_sum(dy, axis=0)
                if bug == "kernel":
                    dkernel = 2.0 * dkernel
                if bug == "subtle":
                    dkernel = 1.001 * dkernel
                if bug == "input":
                    dx = 0.5 * dx
                return dx, dkernel, dbias

            return tf.matmul(x, kernel) + bias, grad

        return dense(x, self.kernel, self.bias)


class StoppedDense(keras.layers.Dense):
    """A dense layer with ``tf.stop_gradient`` around its kernel: the kernel still shapes the
    output, but gets no gradient (a stop_gradient meant for the input, put on the weight)."""

    def call(self, x: Any) -> Any:
        return tf.matmul(x, tf.stop_gradient(self.kernel)) + self.bias


# -- models --------------------------------------------------------------------------------------


def _mlp_with(layer: keras.layers.Layer, name: str) -> tuple[Any, Callable[..., Any]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="tanh", name="hidden"),
            layer,
            keras.layers.Dense(3, name="logits"),
        ],
        name=name,
    )
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, model_loss(model, x, y)


def _cnn(training: bool) -> tuple[Any, Callable[..., Any]]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 8, 8, 2)).astype(np.float32)
    y = rng.integers(0, 4, size=8)
    l2 = keras.regularizers.L2(1e-3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, kernel_regularizer=l2, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Dropout(0.3, name="dropout"),
            keras.layers.Flatten(),
            keras.layers.Dense(4, kernel_regularizer=l2, name="logits"),
        ],
        name="cnn",
    )
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, model_loss(model, x, y, training=training)


def _rnn(cell: str) -> tuple[Any, Callable[..., Any]]:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 7, 3)).astype(np.float32)
    y = rng.standard_normal((6, 2)).astype(np.float32)
    recurrent = keras.layers.GRU if cell == "gru" else keras.layers.SimpleRNN
    model = keras.Sequential(
        [keras.Input((7, 3)), recurrent(5, name=cell), keras.layers.Dense(2, name="out")],
        name=f"{cell}_net",
    )
    model.compile(loss="mse")
    return model, model_loss(model, x, y)


def correct_cases() -> list[Case]:
    """Correct models: every tensor must pass."""
    return [
        Case(
            "custom_gradient_correct",
            lambda: _mlp_with(CustomGradientDense(5, name="custom"), "custom_ok"),
        ),
        Case("cnn_inference", lambda: _cnn(training=False)),
        Case("cnn_training", lambda: _cnn(training=True)),
        Case("gru", lambda: _rnn("gru")),
        Case("simple_rnn", lambda: _rnn("simple_rnn")),
    ]


def bug_cases() -> list[Case]:
    """Planted bugs: exactly the ``corrupted`` tensors must fail."""
    return [
        Case(
            "custom_gradient_kernel_bug",
            lambda: _mlp_with(CustomGradientDense(5, bug="kernel", name="custom"), "kernel_bug"),
            frozenset({"kernel_bug/custom/kernel"}),
        ),
        Case(
            "custom_gradient_input_bug",
            lambda: _mlp_with(CustomGradientDense(5, bug="input", name="custom"), "input_bug"),
            frozenset({"input_bug/hidden/kernel", "input_bug/hidden/bias"}),
        ),
        Case(
            "custom_gradient_subtle_bug",
            lambda: _mlp_with(CustomGradientDense(5, bug="subtle", name="custom"), "subtle_bug"),
            frozenset({"subtle_bug/custom/kernel"}),
        ),
        Case(
            "misplaced_stop_gradient",
            lambda: _mlp_with(StoppedDense(5, name="stopped"), "stopped"),
            frozenset({"stopped/stopped/kernel"}),
        ),
    ]


def all_cases() -> list[Case]:
    return correct_cases() + bug_cases()
