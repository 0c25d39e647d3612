"""A Keras model with a hand-written custom gradient, trained with GradCheckCallback.

The model's Swish activation (``x * sigmoid(x)``) has its backward pass written by hand with
``tf.custom_gradient``, as one does to save memory or to keep it numerically stable. The first
version forgets the derivative of the sigmoid. Nothing crashes, the loss even goes down: only a
gradient check sees it. ``model.fit`` with a ``GradCheckCallback`` checks the model's own
loss (``model.compute_loss``) on a probe batch before the first training step, and the report
names the variables whose gradient is wrong. The fixed model then trains to the end; the
callback checks it every 50 steps and switches itself off after three passing checks.

Run: ``python examples/keras_callback.py [--log PATH]``, then ``gradguard report PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import textwrap
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import gradguard as gg
from gradguard_tensorflow import GradCheckCallback


def swish_buggy(x: Any) -> Any:
    @tf.custom_gradient
    def swish(x: Any) -> Any:
        s = tf.sigmoid(x)

        def grad(dy: Any) -> Any:
            return dy * s  # the bug: d/dx x*sigmoid(x) is s + x*s*(1 - s), not s

        return x * s, grad

    return swish(x)


def swish_fixed(x: Any) -> Any:
    @tf.custom_gradient
    def swish(x: Any) -> Any:
        s = tf.sigmoid(x)

        def grad(dy: Any) -> Any:
            return dy * (s + x * s * (1.0 - s))

        return x * s, grad

    return swish(x)


class Swish(keras.layers.Layer):
    """The Swish activation, with the backward pass given by ``function``."""

    def __init__(self, function: Callable[[Any], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.function = function

    def call(self, x: Any) -> Any:
        return self.function(x)


def make_data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, labelled by a fixed random teacher network."""
    rng = np.random.default_rng(seed)
    teacher = np.random.default_rng(42)
    w1, w2 = teacher.standard_normal((10, 16)), teacher.standard_normal((16, 3))
    x = rng.standard_normal((n, 10)).astype(np.float32)
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    return x, y


def build(name: str, swish: Callable[[Any], Any]) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(32, name="hidden"),
            Swish(swish, name="swish"),
            keras.layers.Dense(16, activation="tanh", name="mixer"),
            keras.layers.Dense(3, name="logits"),
        ],
        name=name,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def indent(text: str) -> str:
    return textwrap.indent(text, "    ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="JSON-lines log file (default: a temporary file)")
    args = parser.parse_args()
    log = args.log or str(pathlib.Path(tempfile.mkdtemp()) / "keras_callback.jsonl")
    x, y = make_data(0, 2048)
    probe = make_data(1, 64)  # a fixed probe batch: callbacks never see the training batches

    print("1. Training with the hand-written Swish gradient, with GradCheckCallback:")
    buggy = build("buggy", swish_buggy)
    callback = GradCheckCallback(
        probe,
        every=50,
        max_checks=3,
        on_failure="raise",  # the default, "stop", would end fit gracefully with a warning
        log_file=log,
        run_id="keras-swish-buggy",
        seed=0,
    )
    try:
        buggy.fit(x, y, batch_size=64, epochs=5, verbose=0, callbacks=[callback])
        raise SystemExit("the buggy gradient was not caught")
    except gg.GradientCheckError as error:
        report = error.report
    steps = int(buggy.optimizer.iterations.numpy())
    print(f"  fit raised GradientCheckError at its first check ({steps} weight updates made):\n")
    print(indent(str(report)))
    wrong = report.failed
    right = [p.name for p in report.params if p.passed]
    print("\n  What to look at:")
    print(f"  - the variables with a wrong gradient: {', '.join(wrong)};")
    print(f"    the others pass: {', '.join(right)}.")
    print(
        "  - The wrong ones feed the Swish layer, which has no weights: what Swish passes back\n"
        "    to its input is wrong, so look at the grad function of its tf.custom_gradient."
    )
    for name in wrong:
        param = report[name]
        print(
            f"  - {name}: worst element {list(param.worst_index or ())}, analytic "
            f"{param.worst_analytic:.4g} vs numeric {param.worst_numeric:.4g}"
        )
    print(f"  - every check is in {log}: gradguard report {log}")

    print("\n2. The fixed Swish gradient, with a callback of its own (one run id per run):")
    fixed = build("fixed", swish_fixed)
    callback = GradCheckCallback(
        probe, every=50, max_checks=3, log_file=log, run_id="keras-swish-fixed", seed=0
    )
    history = fixed.fit(x, y, batch_size=64, epochs=5, verbose=0, callbacks=[callback])
    records = [json.loads(line) for line in pathlib.Path(log).read_text().splitlines()]
    for record in (r for r in records if r["run_id"] == "keras-swish-fixed"):
        if record["event"] == "gradcheck":
            print(
                f"  step {record['step']:4d}  gradient check: "
                f"{'passed' if record['passed'] else 'FAILED'} (difference "
                f"{record['difference']:.1e}, {record['evaluations']} evaluations, "
                f"{record['coverage']:.0%} of the weights probed one by one so far)"
            )
        elif record["event"] == "guard_disabled":
            total = int(fixed.optimizer.iterations.numpy())
            print(
                f"  step {record['step']:4d}  the callback switched itself off after "
                f"{record['passed_checks']} passing checks; the other {total - record['step'] - 1}"
                " steps ran without it"
            )
    print(f"  training accuracy after 5 epochs: {history.history['accuracy'][-1]:.3f}")
    if callback.active or not all(r.passed for r in callback.reports):
        raise SystemExit("the fixed model should pass every check and switch the callback off")


if __name__ == "__main__":
    main()
